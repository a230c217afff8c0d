import importlib.util
import subprocess
import sys

import pytest
import torch

from isnet_kernels.backends import dispatch


def _info(**env: str) -> str:
    return subprocess.run([sys.executable, "-m", "isnet_kernels.info"], capture_output=True, text=True, check=True,
                          env={"ISNET_KERNELS_BACKEND": "reference", "PATH": "", **env}).stdout


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("  " + name + " "))


def test_info_lists_every_backend_with_a_reason():
    out = _info()
    assert "torch 2." in out
    for name, (ok, _why) in dispatch.backend_status().items():
        if name == "triton":
            continue  # depends on TRITON_INTERPRET, which this subprocess does not set: the next test
        line = _row(out, name)
        assert ("unavailable" not in line) == ok
        assert ":" in line and len(line.split(":", 1)[1].strip()) > 0
    assert "auto (cpu tensors, $ISNET_KERNELS_BACKEND=reference): reference" in out


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("interpret", ["1", None], ids=["TRITON_INTERPRET=1", "no-interpreter"])
def test_info_triton_row_follows_the_interpreter_setting(interpret):
    """With TRITON_INTERPRET=1 the Triton backend runs CPU tensors; without it, only a CUDA device makes it run."""
    line = _row(_info(**({"TRITON_INTERPRET": interpret} if interpret else {})), "triton")
    expected = interpret == "1" or torch.cuda.is_available()
    assert ("unavailable" not in line) == expected, line
    if not expected:
        assert "TRITON_INTERPRET" in line  # the reason says what to do
