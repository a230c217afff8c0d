#!/usr/bin/env bash
# Run the benchmark suites on a CUDA GPU: explain, per-op and training timings with the reference and Triton
# backends, JSON to $BENCH_RESULTS/gpu-{explain,ops,training}.json (default benchmarks/results/gpu), tables and
# plots via report.py (gpu-*.md, gpu-*.png, gpu-targets.md), and the H100 roofline (results/roofline.md) to
# compare against. `make gpu-check` (benchmarks/gpu_check.sh) runs it after the tests on CUDA.
#
# Usage, from anywhere in the repository:  bash benchmarks/run_gpu.sh [extra pytest args]
# Environment (optional): BENCH_PLOTS=0 (tables only), BENCH_RESULTS, BENCH_ROUNDS, BENCH_OP_ROUNDS, BENCH_TRAIN_ROUNDS, BENCH_MEMORY=0, BENCH_MODELS,
# BENCH_SUITES (default "explain ops training"), PYTHON (default: .venv/bin/python if present, else python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "run_gpu.sh: no CUDA device visible to torch; nothing to do (the CPU suites run with plain pytest)" >&2
    exit 2
fi
"$PYTHON" -m isnet_kernels.info
if ! "$PYTHON" -c 'import sys, torch; from isnet_kernels.backends import dispatch; dispatch.resolve("triton", torch.device("cuda"))' 2>/dev/null; then
    echo "run_gpu.sh: warning: the triton backend cannot run here; only 'reference' (and 'torch') will be timed" >&2
fi

export BENCH_DEVICE=cuda
cuda_ok=$("$PYTHON" -c 'from isnet_kernels.backends import dispatch; print(int(dispatch.cuda_status()[0]))' 2>/dev/null || echo 0)
extra=""; [[ "$cuda_ok" == 1 ]] && extra=",cuda"
export BENCH_BACKENDS="${BENCH_BACKENDS:-reference,triton$extra}"
export BENCH_OP_BACKENDS="${BENCH_OP_BACKENDS:-reference,torch,triton$extra}"
RESULTS="${BENCH_RESULTS:-benchmarks/results/gpu}"
mkdir -p "$RESULTS"

status=0
for suite in ${BENCH_SUITES:-explain ops training}; do
    echo "== $suite ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?'))"
    if ! "$PYTHON" -m pytest "benchmarks/test_bench_${suite}.py" -q -p no:cacheprovider \
            --benchmark-json="$RESULTS/gpu-${suite}.json" "$@"; then
        echo "run_gpu.sh: suite $suite failed" >&2
        status=1
    fi
done

shopt -s nullglob
files=("$RESULTS"/gpu-*.json)
if (( ${#files[@]} )); then
    plots=(); [[ "${BENCH_PLOTS:-1}" == 0 ]] && plots=(--no-plot)
    "$PYTHON" benchmarks/report.py "${files[@]}" --out-dir "$RESULTS" "${plots[@]}"
fi
"$PYTHON" benchmarks/roofline.py --out "$RESULTS/roofline.md" > /dev/null && echo "roofline: $RESULTS/roofline.md"
exit $status
