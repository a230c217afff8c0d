# isnet-kernels: developer entry points. Every target uses the project's own virtualenv (.venv), created on
# first use, so `make demo` and `make test` work on a fresh clone with only python3 and make installed.

PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# Every install after pip's own upgrade retries and resumes broken-off downloads.
PIPI    := $(PIP) install --retries 10 --timeout 60 --resume-retries 20
# The torch this project is developed against: PyPI's CUDA 13 build (it runs on a CPU; the CUDA extension builds
# against it), with the triton it requires and the torchvision built for it (a matched pair: torchvision's compiled
# operators load, so torchmetrics and Lightning import it as anywhere). Pinned everywhere: an unpinned torch would
# pull another build.
TORCH   := torch==2.14.1
TRITON  := triton==3.8.0
# The independent LRP implementation the comparison tests run against (installed without its dependencies).
ZENNIT  := zennit==0.5.1
# torchvision, built for that torch: its classification models (--arch NAME, the zoo), transforms (--augment).
TORCHVISION := torchvision==0.29.1
# AttnLRP's authors' library, the independent implementation the attention comparison tests run against.
LXT     := lxt==2.1
# timm (models by name, `--arch timm:NAME`) and safetensors (weights files), as the GPU machines have them.
TIMM    := timm==1.0.31 safetensors
# PyTorch Lightning, TensorBoard and torchmetrics (isnet_kernels.lightning, isnet train --tensorboard), as the GPU
# machines have them; installed beside the pinned torch so that nothing else moves.
LIGHTNING := lightning==2.6.6 tensorboard==2.21.0 torchmetrics==1.9.0
STAMP   := $(VENV)/.installed
# The GPU machines' stack (issue of the GPU check): Python 3.12 with the CUDA 13 build of torch 2.11.0, triton 3.6.0
# and torchvision 0.26.0, plus the packages those machines have (no zennit, no LXT). $(MIRROR) mirrors it on a CPU
# machine: `make gpu-dry-run` and `make test-mirror` run in it. PyPI's torch 2.11.0 is that same CUDA 13 build;
# it runs on a CPU, and nvcc 13.0 builds the CUDA extension against it.
PYTHON312 ?= $(shell for p in $$(ls $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) $$(command -v python3.12); do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && echo "$$p" && break; done)
MIRROR  := .venv-mirror
MPY     := $(MIRROR)/bin/python
MIRROR_STACK := torch==2.11.0 triton==3.6.0 torchvision==0.26.0
# Everything else the GPU machines have (pytest, timm, lightning, tensorboard, scikit-learn, ...), every package pinned
# and installed without a resolver; the file says why its CUDA libraries are not torch 2.11.0's own.
MIRROR_LOCK := benchmarks/mirror-requirements.txt
# Downloads retried: a broken-off transfer resumes, a failed install runs again (finished downloads are kept).
MIRROR_PIP := $(MPY) -m pip install -q --retries 10 --timeout 60 --resume-retries 20
MIRROR_STAMP := $(MIRROR)/.installed
BENCH_JSON ?= benchmarks/results/latest.json

.PHONY: help venv mirror-venv test-mirror gpu-dry-run aot-check-mirror demo study compare defaults-check explain-demo test lint bench clean cuda-compile aot-check gpu-check zoo

help:
	@echo "make venv   create $(VENV) and install the package with its test dependencies"
	@echo "make demo   biased digits: train a plain classifier and a selective ISNet, write demo/report.md"
	@echo "make study  the selective ISNet's settings on two data sets, two seeds, and the defaults on a held-out one"
	@echo "            (python/results/defaults/study.md)"
	@echo "make compare  plain, RRR, ISNet (LRP), ISNet (Grad x Input), plain on clean data: three data sets, three"
	@echo "            seeds (python/results/compare/compare.md, .png)"
	@echo "make defaults-check  the defaults on every kind of bias (square, tags, noise, held-out scenes), three seeds,"
	@echo "            beside the artefact-free target (python/results/defaults/check.md)"
	@echo "make explain-demo  train a small CNN on handwritten digits and write demo/explain/heatmaps.png"
	@echo "make test   run the test suite (tests/, Triton kernels in interpreter mode)"
	@echo "make lint   ruff check ."
	@echo "make bench  run benchmarks/ and write $(BENCH_JSON)"
	@echo "make cuda-compile  compile the CUDA sources with nvcc for sm_80 and sm_90, write benchmarks/results/aot/cuda.md"
	@echo "make zoo    every torchvision classifier and 25 timm models: explain, conservation, ISNet step; writes python/results/zoo/zoo.md"
	@echo "make aot-check  compile every Triton kernel for sm_80 and sm_90 (no GPU); table in benchmarks/results/aot/"
	@echo "make aot-check-mirror  the same with triton 3.6.0 (the GPU machines') for sm_90, in $(MIRROR)"
	@echo "make gpu-check  on a CUDA machine, offline: builds both extensions in place against the python3 given"
	@echo "            (PYTHON=...), tests on CUDA, bandwidth, benchmarks -> benchmarks/results/gpu/ (at most 8 files)"
	@echo "make gpu-dry-run  every step of gpu-check that needs no GPU, in $(MIRROR) (the GPU machines' stack)"
	@echo "make test-mirror  the CPU test suite on the GPU machines' stack ($(MIRROR): Python 3.12, torch 2.11.0)"
	@echo "make clean  remove $(VENV), build outputs and caches"

venv: $(STAMP)

# Rebuilt only when the packaging files change; delete $(STAMP) to force a reinstall.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*/*)
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIPI) $(TORCH) setuptools wheel
	$(PIPI) --no-build-isolation -e '.[test]' $(TORCH)
	$(PIPI) $(TRITON) $(TORCH)
	$(PIPI) --no-deps $(ZENNIT) $(LXT)
	$(PIPI) $(TORCHVISION) $(TORCH)
	$(PIPI) $(TIMM) $(TORCH) $(TORCHVISION)
	$(PIPI) $(LIGHTNING) $(TORCH)
	@touch $@

mirror-venv: $(MIRROR_STAMP)

# The package itself is not installed there (as on the GPU machines): its extensions are built in place and it is
# imported from the source tree (PYTHONPATH), as `make gpu-check` does.
$(MIRROR_STAMP): Makefile $(MIRROR_LOCK)
	@test -n "$(PYTHON312)" || { echo "make mirror-venv: no Python 3.12 found (set PYTHON312=/path/to/python3.12)" >&2; exit 2; }
	@test -x $(MPY) || $(PYTHON312) -m venv $(MIRROR)
	$(MPY) -m pip install -q --retries 10 --timeout 60 --upgrade pip
	for try in 1 2 3; do $(MIRROR_PIP) --no-deps -r $(MIRROR_LOCK) $(MIRROR_STACK) && break; [ $$try -lt 3 ] || exit 1; sleep 30; done
	$(MPY) -c 'import torch, torchvision, triton; torch.ops.torchvision.nms'
	@touch $@

demo: venv
	$(PY) python/biased_digits.py --out demo/

study: venv
	$(PY) python/defaults_study.py --out python/results/defaults/

compare: venv
	$(PY) python/compare.py --out python/results/compare/

defaults-check: venv
	$(PY) python/defaults_check.py --out python/results/defaults/

zoo: venv
	$(PY) python/zoo.py --out python/results/zoo/

explain-demo: venv
	$(PY) python/explain_digits.py --out demo/explain/

# pytest exits with 5 when no test ran; make treats any non-zero status as a failure, this just says why.
# The development environment has zennit, LXT, torchvision, Lightning and TensorBoard: their tests must run, not skip.
test: venv
	TRITON_INTERPRET=1 ISNET_KERNELS_TEST_REQUIRE=zennit,lxt,torchvision,timm,lightning,tensorboard $(PY) -m pytest -q tests --ignore=benchmarks; rc=$$?; \
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
	$(PY) -m isnet_kernels.backends.triton.aot --jobs 2

# The same check with the GPU machines' compiler (triton 3.6.0), for sm_90 (H100, H200): same gates, own table.
aot-check-mirror: mirror-venv
	PYTHONPATH=$(CURDIR) $(MPY) -m isnet_kernels.backends.triton.aot --jobs 2 --targets 90 --out benchmarks/results/aot/triton-3.6.0

# On a GPU machine, offline: PYTHON (default python3) must have torch with CUDA; results in GPU_RESULTS.
gpu-check:
	bash benchmarks/gpu_check.sh

gpu-dry-run: mirror-venv
	PYTHON=$(MPY) bash benchmarks/gpu_check.sh --dry-run

# The CPU suite on the GPU machines' stack (extensions built in place for Python 3.12 by gpu-dry-run or here), less
# the end-to-end training scripts' tests (demo, study, comparison, experiment grid, kill-and-resume), which exercise
# no code the rest of the suite does not and cost CI minutes twice; every module is still imported there
# (tests/test_layering.py) and every backend's tests run. MIRROR_TESTS_ALL=1 runs the whole suite.
MIRROR_REDUCED := --ignore=tests/test_biased_digits_demo.py --ignore=tests/test_experiment_grid.py \
	--ignore=tests/train/test_reliability.py
test-mirror: mirror-venv
	$(MPY) setup.py -q build_ext --inplace
	TRITON_INTERPRET=1 ISNET_KERNELS_TEST_REQUIRE=_C_cuda,torchvision,timm,lightning,tensorboard PYTHONPATH=$(CURDIR) $(MPY) -m pytest -q \
		-p no:cacheprovider tests $(if $(MIRROR_TESTS_ALL),,$(MIRROR_REDUCED)); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-mirror: no test ran (pytest exit code 5)" >&2; fi; \
	exit $$rc

bench: venv
	@mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-json=$(BENCH_JSON)

clean:
	rm -rf $(VENV) $(MIRROR) build dist *.egg-info .pytest_cache .ruff_cache .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
