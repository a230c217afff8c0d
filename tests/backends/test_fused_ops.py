"""The fused ops' table (isnet_kernels.ops.fused) against what implements it: every record names a reference, C++
operators whose schemas agree with it and a Triton launcher that exist; and every elementwise op, on every
available compiled backend, equals its reference in float64 and float32 over odd sizes, several M and none, with
outputs poisoned with NaN, its fake kernel and schema passing ``torch.library.opcheck``. A new elementwise op is
covered here by its record alone."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from isnet_kernels.backends import cpp, dispatch
from isnet_kernels.ops.fused import FUSED_OPS, OPERATORS, FusedReference
from isnet_kernels.ops.records import FusedOp

from ..backend_params import backend_params

ELEMENTWISE = [op for op in FUSED_OPS if op.inputs]
COMPILED = backend_params(("cpp", "triton", "cuda"))
DEVICE = {"cpp": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu", "cuda": "cuda"}
SIZES = [(2, 3, 37), (1, 1, 5), (3, 5, 2 * 3 * 7), (2, 0, 9)]  # (B, M, N): odd, one map, 3-d maps, no maps
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.fixture(autouse=True)
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs are NaN-filled before the kernels run: an element a kernel leaves unwritten fails the test."""
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")


def test_records_name_their_implementations() -> None:
    names = [op.name for op in FUSED_OPS]
    assert len(names) == len(set(names)) >= 13
    for op in FUSED_OPS:
        assert callable(getattr(FusedReference, op.name)), op.name
        if op.triton is not None:
            assert op.triton.split(".")[0] in ("elementwise", "pool", "conv"), op.triton
    assert cpp.OPS == tuple(operator.name for operator in OPERATORS)
    for op in ELEMENTWISE:  # one operator of the op's name, maps and activations only
        assert [operator.name for operator in op.operators] == [op.name] and set(op.inputs) <= {"m", "a"}, op
        assert op.triton == f"elementwise.{op.name}"


@pytest.mark.skipif(not cpp.available()[0], reason=f"the cpp backend is not available: {cpp.available()[1]}")
@pytest.mark.parametrize("op", ELEMENTWISE, ids=lambda op: op.name)
def test_elementwise_schema_matches_the_record(op: FusedOp) -> None:
    """The C++ struct's schema (csrc/common/relevance_math.h) takes the record's tensors, then eps if the
    reference does, and returns as many tensors as the reference."""
    schema = getattr(torch.ops.isnet_kernels, op.name).default._schema
    types = [str(arg.type) for arg in schema.arguments]
    takes_eps = "eps" in inspect.signature(getattr(FusedReference, op.name)).parameters
    assert types == ["Tensor"] * len(op.inputs) + (["float"] if takes_eps else []), schema
    assert [arg.name for arg in schema.arguments][:len(op.inputs)] == list(
        inspect.signature(getattr(FusedReference, op.name)).parameters)[1:len(op.inputs) + 1], schema


def test_triton_launchers_exist() -> None:
    pytest.importorskip("triton", reason="triton is optional")
    for op in FUSED_OPS:
        if op.triton is not None:
            module, function = op.triton.split(".")
            launcher = getattr(importlib.import_module(f"isnet_kernels.backends.triton.{module}"), function)
            assert callable(launcher), op.triton


def _inputs(op: FusedOp, B: int, M: int, N: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(B * 1000 + M * 100 + N)
    tensors = []
    for kind in op.inputs:
        t = torch.randn((B, M, N) if kind == "m" else (B, N), generator=g, dtype=torch.float64)
        t.view(-1)[::7] = 0.0  # sign(0) = +1 in every stabiliser
        tensors.append(t.to(device, dtype))
    return tensors


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op", ELEMENTWISE, ids=lambda op: op.name)
def test_elementwise_op_equals_its_reference(op: FusedOp, dtype: torch.dtype, backend: str) -> None:
    device = DEVICE[backend]
    if backend == "triton" and device == "cpu":
        dispatch.resolve("triton", torch.device("cpu"))  # raises unless TRITON_INTERPRET=1
    prims = dispatch.primitives(backend)
    reference = getattr(FusedReference(), op.name)
    takes_eps = "eps" in inspect.signature(reference).parameters
    for B, M, N in SIZES:
        args = [*_inputs(op, B, M, N, dtype, device), *([0.1] if takes_eps else [])]
        out, expected = getattr(prims, op.name)(*args), reference(*args)
        out, expected = (out,) if isinstance(out, torch.Tensor) else out, (
            (expected,) if isinstance(expected, torch.Tensor) else expected)
        assert len(out) == len(expected)
        for o, e in zip(out, expected, strict=True):
            assert o.shape == e.shape and o.dtype == e.dtype, (op.name, o.shape, e.shape)
            torch.testing.assert_close(o, e, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
        if backend == "cpp":
            torch.library.opcheck(getattr(torch.ops.isnet_kernels, op.name), tuple(args))
