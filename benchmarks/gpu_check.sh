#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, in one command (about 8 minutes):
#   1. an environment of its own ($GPU_VENV, default .venv-gpu) with a CUDA build of torch 2.13.0 and triton 3.7.1,
#      and this package (no C++ extension: the GPU backend is triton);
#   2. the machine: benchmarks/gpu_env.py -> $GPU_RESULTS/env.{json,md} (GPU, driver, CUDA, versions, commit);
#   3. the backend tests on CUDA tensors, compiled kernels (TRITON_INTERPRET=0): tests/triton, with
#      tests/triton/test_gpu.py (triton and torch against the float64 reference in fp32, TF32, bf16, fp16; the
#      short-K case of an RGB and a grayscale first layer; explain on ResNet-18) -> $GPU_RESULTS/tests.{txt,xml};
#      and tests/cuda (the CUDA C++ kernels of the cuda backend against the torch primitives and the CPU kernels);
#   4. the bandwidth of every elementwise kernel (torch, triton, cuda) against a clone of the same bytes
#      (benchmarks/bandwidth.py -> $GPU_RESULTS/bandwidth.{json,md});
#   5. the explain, per-op and ISNet-step (training) benchmarks, via benchmarks/run_gpu.sh -> $GPU_RESULTS/.
# Exit status: 0 when every step passed, 1 when a test or a suite failed, 2 when there is no CUDA GPU.
# Environment (optional): GPU_VENV, GPU_RESULTS (default benchmarks/results/gpu), TORCH_INDEX_URL (default the
# CUDA 12.8 wheels), PYTHON3 (the interpreter that creates the venv), GPU_TEST_TIMEOUT (seconds, default 300).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${GPU_VENV:-.venv-gpu}"
OUT="${GPU_RESULTS:-benchmarks/results/gpu}"
INDEX="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"

if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
    echo "gpu-check: no CUDA GPU here (nvidia-smi finds none); run it on a machine with one" >&2
    exit 2
fi
start=$(date +%s)
echo "== environment ($VENV)"
[[ -x "$VENV/bin/python" ]] || "${PYTHON3:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
"$PY" -m pip install -q --index-url "$INDEX" --extra-index-url https://pypi.org/simple torch==2.13.0 triton==3.7.1
# with a CUDA torch and nvcc this builds both extensions, _C (cpp) and _C_cuda (the cuda backend); a failed build
# warns and leaves that backend out (its tests then skip, naming the reason)
"$PY" -m pip install -q --no-build-isolation -e '.[test]' torch==2.13.0
"$PY" -m pip install -q --no-deps zennit  # as `make venv` does: its torchvision pin would replace torch
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu-check: torch $("$PY" -c 'import torch; print(torch.__version__)') in $VENV sees no CUDA device" >&2
    exit 2
}
mkdir -p "$OUT"
"$PY" benchmarks/gpu_env.py "$OUT"

status=0
echo "== tests on CUDA ($(( $(date +%s) - start ))s)"
"$PY" -m isnet_kernels.info | tee "$OUT/info.txt"
if ! TRITON_INTERPRET=0 timeout "${GPU_TEST_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider tests/triton tests/cuda \
        --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.txt"; then
    echo "gpu-check: tests failed (see $OUT/tests.txt)" >&2
    status=1
fi

echo "== bandwidth of the elementwise kernels against a copy ($(( $(date +%s) - start ))s)"
"$PY" benchmarks/bandwidth.py --out "$OUT" || status=1

echo "== benchmarks ($(( $(date +%s) - start ))s)"
if ! PYTHON="$PY" BENCH_RESULTS="$OUT" BENCH_SUITES="${BENCH_SUITES:-explain ops training}" \
        BENCH_ROUNDS="${BENCH_ROUNDS:-5}" BENCH_OP_ROUNDS="${BENCH_OP_ROUNDS:-10}" \
        BENCH_TRAIN_ROUNDS="${BENCH_TRAIN_ROUNDS:-3}" bash benchmarks/run_gpu.sh; then
    echo "gpu-check: a benchmark suite failed" >&2
    status=1
fi
echo "gpu-check: done in $(( $(date +%s) - start ))s, status $status; results in $OUT"
exit $status
