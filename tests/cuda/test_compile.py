"""The CUDA sources compile ahead of time (``csrc/cuda/compile_check.py``): every ``.cu`` file with nvcc for sm_80
and sm_90, warnings as errors, every kernel of every op and dtype present in ptxas's report, the binding checked
against torch's CUDA headers; and a broken source fails the check with the compiler's message. Needs nvcc (skipped,
with the reason, without it); no GPU. Takes about a minute on two cores.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
SCRIPT = CSRC / "cuda" / "compile_check.py"
_spec = importlib.util.spec_from_file_location("isnet_cuda_compile_check", SCRIPT)
compile_check = sys.modules.setdefault("isnet_cuda_compile_check", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(compile_check)

needs_nvcc = pytest.mark.skipif(compile_check.find_nvcc() is None,
                                reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")
#: The elementwise ops (ISNET_ELEMENTWISE_OPS of csrc/common/relevance_math.h): one generic kernel each.
ELEMENTWISE_OPS = ["StabDivide", "MulActivation", "EpsilonBackwardInput", "EpsilonBackwardStab", "ResidualForward",
                   "ResidualBackward"]
ELEMENTWISE = [f"elementwise_kernel<{op}" for op in ELEMENTWISE_OPS]  # each in a packed and a scalar version
KERNELS = [*ELEMENTWISE, "maxpool_forward_kernel", "maxpool_backward_kernel", "avgpool_forward_kernel",
           "avgpool_backward_window_kernel", "avgpool_backward_input_kernel"]
DTYPES = ["float", "double", "half", "bf16"]
PACKED = {"float": 4, "double": 2, "half": 8, "bf16": 8}  # elements per 16-byte access


@needs_nvcc
def test_every_kernel_compiles_for_both_architectures(tmp_path: Path) -> None:
    assert compile_check.main(["--out", str(tmp_path), "--jobs", "2"]) == 0
    report = json.loads((tmp_path / "cuda.json").read_text())
    assert report["binding"] == "ok", report["binding"]
    found = {(k["kernel"], k["arch"]) for k in report["kernels"]}
    for arch in ("sm_80", "sm_90"):
        for kernel in KERNELS:
            for dtype in DTYPES:
                if kernel in ELEMENTWISE:
                    wanted = [f"{kernel}, {dtype}, {PACKED[dtype]}>", f"{kernel}, {dtype}, 1>"]
                elif kernel == "maxpool_forward_kernel":
                    wanted = [f"{kernel}<{dtype}, {'double' if dtype == 'double' else 'float'}>"]
                else:
                    wanted = [f"{kernel}<{dtype}>"]
                for name in wanted:
                    assert (name, arch) in found, f"{name} for {arch} missing from {sorted(found)[:5]}..."
    for k in report["kernels"]:
        assert 0 < k["registers"] <= 255, k
    markdown = (tmp_path / "cuda.md").read_text()
    assert "| elementwise.cu | `elementwise_kernel<StabDivide, float, 4>` | sm_90 |" in markdown


@needs_nvcc
def test_a_broken_source_fails_with_the_compilers_message(tmp_path: Path) -> None:
    tree = tmp_path / "csrc"
    shutil.copytree(CSRC, tree, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "cuda" / "pool.cu", "a") as f:
        f.write("\nthis is not CUDA;\n")
    proc = subprocess.run([sys.executable, str(tree / "cuda" / "compile_check.py"), "--arch", "sm_80", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pool.cu" in proc.stderr and "error" in proc.stderr
    assert not (tmp_path / "out" / "cuda.md").exists()
