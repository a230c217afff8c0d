# isnet-kernels: developer entry points. Every target uses the project's own virtualenv (.venv), created on
# first use, so `make demo` and `make test` work on a fresh clone with only python3 and make installed.

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# The CPU build of torch that this project is developed against. Pinned everywhere: an unpinned torch would
# pull a different (CUDA) build.
TORCH   := torch==2.13.0
TRITON  := triton==3.7.1
# The independent LRP implementation the comparison tests run against (installed without its dependencies).
ZENNIT  := zennit==0.5.1
# torchvision's classification models for the zoo tests: a CUDA build whose compiled ops are never loaded
# (see tests/conftest.py), installed without dependencies so that it cannot replace the CPU torch.
TORCHVISION := torchvision==0.28.0
# AttnLRP's authors' library, the independent implementation the attention comparison tests run against.
LXT     := lxt==2.1
STAMP   := $(VENV)/.installed
BENCH_JSON ?= benchmarks/results/latest.json

.PHONY: help venv demo study compare explain-demo test lint bench clean cuda-compile aot-check gpu-check zoo

help:
	@echo "make venv   create $(VENV) and install the package with its test dependencies"
	@echo "make demo   biased digits: train a plain classifier and a selective ISNet, write demo/report.md"
	@echo "make study  the selective ISNet's settings on two data sets, two seeds, and the defaults on a held-out one"
	@echo "            (python/results/defaults/study.md)"
	@echo "make compare  plain, RRR, ISNet (LRP), ISNet (Grad x Input), plain on clean data: both data sets, three"
	@echo "            seeds (python/results/compare/compare.md, .png)"
	@echo "make explain-demo  train a small CNN on handwritten digits and write demo/explain/heatmaps.png"
	@echo "make test   run the test suite (tests/, Triton kernels in interpreter mode)"
	@echo "make lint   ruff check ."
	@echo "make bench  run benchmarks/ and write $(BENCH_JSON)"
	@echo "make cuda-compile  compile the CUDA sources with nvcc for sm_80 and sm_90, write benchmarks/results/aot/cuda.md"
	@echo "make zoo    every torchvision classifier: explain, conservation, ISNet step; writes python/results/zoo/zoo.md"
	@echo "make aot-check  compile every Triton kernel for sm_80 and sm_90 (no GPU); table in benchmarks/results/aot/"
	@echo "make gpu-check  on a CUDA machine: own .venv-gpu, tests on CUDA, benchmarks -> benchmarks/results/gpu/"
	@echo "make clean  remove $(VENV), build outputs and caches"

venv: $(STAMP)

# Rebuilt only when the packaging files change; delete $(STAMP) to force a reinstall.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*/*)
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH) setuptools wheel
	$(PIP) install --no-build-isolation -e '.[test]' $(TORCH)
	$(PIP) install $(TRITON) $(TORCH)
	$(PIP) install --no-deps $(ZENNIT) $(TORCHVISION) $(LXT)
	@touch $@

demo: venv
	$(PY) python/biased_digits.py --out demo/

study: venv
	$(PY) python/defaults_study.py --out python/results/defaults/

compare: venv
	$(PY) python/compare.py --out python/results/compare/

zoo: venv
	$(PY) python/zoo.py --out python/results/zoo/

explain-demo: venv
	$(PY) python/explain_digits.py --out demo/explain/

# pytest exits with 5 when no test ran; make treats any non-zero status as a failure, this just says why.
test: venv
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests --ignore=benchmarks; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no test ran (pytest exit code 5)" >&2; fi; \
	exit $$rc

lint: venv
	$(PY) -m ruff check .

# Compiles csrc/cuda with nvcc (warnings as errors) for sm_80 and sm_90; no GPU needed. Fails without nvcc.
cuda-compile: venv
	$(PY) csrc/cuda/compile_check.py

# Every Triton kernel x config x dtype compiled for sm_80 and sm_90 over ResNet-18/50 and ViT-B shapes; fails on a
# compile error, shared memory over the limit, a spill or a short-K dot. Results cached by content hash.
aot-check: venv
	$(PY) -m isnet_kernels.triton.aot --jobs 2

gpu-check:
	bash benchmarks/gpu_check.sh

bench: venv
	@mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-json=$(BENCH_JSON)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
