#!/usr/bin/env bash
# `make gpu-check`: the whole GPU check in one command, offline, on the interpreter it is given.
#
#   PYTHON=python3 GPU_RESULTS=DIR bash benchmarks/gpu_check.sh [--dry-run]
#
# Nothing is installed and nothing is downloaded: it uses $PYTHON (default: python3 on PATH), accepted when its torch
# sees a CUDA device, and that machine's nvcc. Steps, each under its own timeout and all within $GPU_CHECK_BUDGET
# seconds (default 470, under 8 minutes), so that one hang cannot eat the rest:
#   1. environment: the machine and software (benchmarks/gpu_env.py);
#   2. build: both extensions in place against that torch (setup.py build_ext --inplace: isnet_kernels._C, the cpp
#      backend, and isnet_kernels._C_cuda, the cuda backend), then `python -m isnet_kernels.info`;
#   3. tests on CUDA, compiled kernels (TRITON_INTERPRET=0): tests/triton, tests/cuda, tests/gpu (explain and an ISNet
#      step on CUDA tensors for every backend); tests needing a package absent there (zennit, LXT) skip, saying so;
#   4. bandwidth: every elementwise kernel (torch, triton, cuda) against a copy of the same bytes
#      (benchmarks/bandwidth.py);
#   5. benchmarks: the explain, per-op and ISNet-step suites on CUDA (benchmarks/run_gpu.sh), then the peak CUDA
#      memory of one training step, plain vs ISNet (benchmarks/stepmem.py memory -> gpu-memory.json);
#   6. summary: benchmarks/gpu_summary.py.
# It writes at most 8 files into $GPU_RESULTS (default benchmarks/results/gpu; build/gpu-dry-run with --dry-run):
# summary.md (every figure, each step's status), results.json (the same as data: steps, tests, bandwidth,
# benchmarks, memory), env.json (the machine), check.log (every step's output, the test log included), tests.xml
# (JUnit) and gpu-memory.json (the memory probes). Intermediate files go to a temporary folder.
#
# --dry-run (`make gpu-dry-run`, for a CPU machine with the GPU machines' stack): every step that needs no GPU. The
# build is the same; the extension _C_cuda must import and register its operators for the CUDA dispatch key
# (tests/cuda/test_registration.py runs); the GPU tests and benchmarks are collected, not run; bandwidth.py is
# imported; the summary says "not run: no GPU" for what needs one.
#
# Exit status: 0 when every step passed, 1 when a step failed or ran out of time, 2 when $PYTHON is unusable or
# (without --dry-run) its torch sees no CUDA device.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-python3}"
if [[ $DRY == 1 ]]; then OUT="${GPU_RESULTS:-build/gpu-dry-run}"; else OUT="${GPU_RESULTS:-benchmarks/results/gpu}"; fi
BUDGET="${GPU_CHECK_BUDGET:-470}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1  # nothing here installs; should anything call pip, it must not reach a network
export PYTHONDONTWRITEBYTECODE=1

if ! command -v "$PY" > /dev/null 2>&1; then
    echo "gpu-check: no interpreter '$PY' (set PYTHON=/path/to/python3)" >&2
    exit 2
fi
if ! "$PY" -c 'import torch' > /dev/null 2>&1; then
    echo "gpu-check: $PY cannot import torch; give an interpreter that has the machine's torch (PYTHON=...)" >&2
    exit 2
fi
if [[ $DRY == 0 ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu-check: torch $("$PY" -c 'import torch; print(torch.__version__)') in $PY sees no CUDA device;" \
         "run it on a machine with a GPU, or 'make gpu-dry-run' for the steps that need none" >&2
    exit 2
fi

mkdir -p "$OUT"
rm -f "$OUT"/summary.md "$OUT"/results.json "$OUT"/env.json "$OUT"/check.log "$OUT"/tests.xml
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/check.log"
STEPS="$WORK/steps.tsv"
: > "$LOG"
: > "$STEPS"
START=$(date +%s)
RESERVE=20  # seconds kept for the summary
status=0

# step NAME LIMIT COMMAND...: runs COMMAND under min(LIMIT, what is left of the budget), its output to the log and
# the terminal; records NAME, status (passed / failed / timed out / out of time) and seconds in $STEPS.
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
    if (( left < 10 )); then
        printf '%s\tout of time\t0\n' "$name" >> "$STEPS"
        echo "== $name: not started, the check's budget of ${BUDGET}s is spent" | tee -a "$LOG"
        status=1
        return
    fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit}s, at $(( $(date +%s) - START ))s)" | tee -a "$LOG"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - t0 )) result=passed
    if (( rc == 124 || rc == 137 )); then result="timed out"; elif (( rc != 0 )); then result="failed"; fi
    [[ $result == passed ]] || status=1
    printf '%s\t%s\t%s\n' "$name" "$result" "$took" >> "$STEPS"
    echo "== $name: $result in ${took}s (exit status $rc)" | tee -a "$LOG"
}

# pytest with a per-test timeout where pytest-timeout is installed (the GPU machines have it)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rs)
if "$PY" -c 'import pytest_timeout' > /dev/null 2>&1; then PYTEST+=(--timeout "${GPU_TEST_TIMEOUT:-120}"); fi
GPU_TESTS=(tests/triton tests/cuda tests/gpu)
# the compile checks (nvcc, Triton ahead of time) need no GPU and run in CI; the build step compiles here
GPU_TEST_SKIP=(--ignore=tests/cuda/test_compile.py --ignore=tests/triton/test_aot.py)

step environment 30 "$PY" benchmarks/gpu_env.py "$WORK"
cp "$WORK/env.json" "$OUT/env.json" 2>/dev/null

export MAX_JOBS="${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}"
step build 240 bash -c '"$0" setup.py -q build_ext --inplace && "$0" -m isnet_kernels.info' "$PY"

if [[ $DRY == 1 ]]; then
    step "cuda extension registered" 120 env ISNET_KERNELS_TEST_REQUIRE=_C_cuda "${PYTEST[@]}" \
        tests/cuda/test_registration.py
    step "tests (collected, not run: no GPU)" 120 "${PYTEST[@]}" --collect-only "${GPU_TEST_SKIP[@]}" \
        "${GPU_TESTS[@]}"
    step "bandwidth (imported, not run: no GPU)" 60 "$PY" benchmarks/bandwidth.py --help
    step "benchmarks (collected, not run: no GPU)" 120 env BENCH_DEVICE=cuda BENCH_BACKENDS=reference,triton,cuda \
        BENCH_OP_BACKENDS=reference,torch,triton,cuda "${PYTEST[@]}" --collect-only \
        benchmarks/test_bench_explain.py benchmarks/test_bench_ops.py benchmarks/test_bench_training.py
    step "memory of a training step (imported, not run: no GPU)" 60 env BENCH_DEVICE=cuda "$PY" \
        benchmarks/stepmem.py --help
else
    step "tests on CUDA" "${GPU_TEST_STEP_TIMEOUT:-200}" env TRITON_INTERPRET=0 "${PYTEST[@]}" \
        --junitxml="$OUT/tests.xml" "${GPU_TEST_SKIP[@]}" "${GPU_TESTS[@]}"
    step bandwidth 60 "$PY" benchmarks/bandwidth.py --out "$WORK"
    step benchmarks "${GPU_BENCH_STEP_TIMEOUT:-150}" env PYTHON="$PY" BENCH_RESULTS="$WORK" \
        BENCH_SUITES="${BENCH_SUITES:-explain ops training}" BENCH_ROUNDS="${BENCH_ROUNDS:-5}" \
        BENCH_OP_ROUNDS="${BENCH_OP_ROUNDS:-10}" BENCH_TRAIN_ROUNDS="${BENCH_TRAIN_ROUNDS:-3}" BENCH_PLOTS=0 \
        bash benchmarks/run_gpu.sh
    # peak CUDA memory of one training step, plain vs ISNet (default and memory="low"), one process per configuration
    step "memory of a training step" "${GPU_MEMORY_STEP_TIMEOUT:-90}" env BENCH_DEVICE=cuda "$PY" \
        benchmarks/stepmem.py memory
    cp benchmarks/results/gpu-memory.json "$OUT/" 2>/dev/null
fi

timeout 60 "$PY" benchmarks/gpu_summary.py --work "$WORK" --out "$OUT" --steps "$STEPS" \
    --elapsed "$(( $(date +%s) - START ))" $([[ $DRY == 1 ]] && echo --dry-run) 2>&1 | tee -a "$LOG"
(( PIPESTATUS[0] == 0 )) || status=1
echo "gpu-check: done in $(( $(date +%s) - START ))s, status $status; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
