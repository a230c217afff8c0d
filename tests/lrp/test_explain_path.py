"""How far ``explain`` reaches into the package on its way to the kernels (docs/development.md, "The explain
path"): after the model is compiled, every call from :func:`isnet_kernels.explain` to a compiled operator
(``torch.ops.isnet_kernels.*``) passes through at most 8 of the package's Python files, on a ResNet (convolutions,
BatchNorm, residual adds, pooling) and a DenseNet (standalone BatchNorms, concatenation)."""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any

import pytest
import torch

import isnet_kernels as ik
from isnet_kernels.backends import cpp

from ..backend_params import unavailable
from ..tv_models import tiny_densenet, tiny_resnet

MAX_FILES = 8
ROOT = os.path.dirname(ik.__file__)
OPS_FILE = os.path.join(os.path.dirname(torch.__file__), "_ops.py")


def _kernel_stacks(model: torch.nn.Module, x: torch.Tensor) -> list[list[str]]:
    """For each call of a ``torch.ops`` operator made by ``explain(model, x, backend="cpp")``, the package files
    on the stack between ``explain`` and the operator, in call order."""
    ik.explain(model, x, backend="cpp")  # compiles the model: the tracing is not on the path measured
    stacks: list[list[str]] = []

    def chain(frame: FrameType) -> list[str] | None:
        files: list[str] = []
        f: FrameType | None = frame.f_back
        while f is not None:
            name = f.f_code.co_filename
            if name.startswith(ROOT):
                files.append(os.path.relpath(name, ROOT))
            if f.f_code.co_name == "explain" and name.startswith(ROOT):
                return files[::-1]
            f = f.f_back
        return None

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename == OPS_FILE and frame.f_code.co_name == "__call__":
            found = chain(frame)
            if found is not None:
                stacks.append(found)

    sys.setprofile(profile)
    try:
        ik.explain(model, x, backend="cpp")
    finally:
        sys.setprofile(None)
    return stacks


@unavailable("cpp")
@pytest.mark.parametrize("build", [tiny_resnet, tiny_densenet], ids=["resnet", "densenet"])
def test_explain_reaches_the_kernels_through_few_files(build) -> None:
    assert cpp.available()[0]
    torch.manual_seed(0)
    model = build().eval()
    stacks = _kernel_stacks(model, torch.rand(2, 3, 32, 32))
    assert stacks, "explain called no compiled operator"
    widest = max(stacks, key=lambda s: len(set(s)))
    assert len(set(widest)) <= MAX_FILES, " -> ".join(widest)
