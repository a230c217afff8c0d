"""Shared by the Triton kernel tests: device, tolerances, the comparison with the plain-PyTorch specification.

Tolerances: float64 1e-10 and float32 1e-5 relative to the reference at the same precision; float16 must be at
most twice as far from the float64 result as PyTorch's own float16 computation is (the flash-attention
criterion).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

pytest.importorskip("triton")

from isnet_kernels.backends.triton import TritonPrimitives  # noqa: E402
from isnet_kernels.ops.primitives import TorchPrimitives  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
DTYPES = [torch.float64, torch.float32, torch.float16]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
EPS = 1e-2

TORCH = TorchPrimitives()
TRITON = TritonPrimitives()


def stab_eps(dtype: torch.dtype) -> float:
    """The stabiliser for a dtype: 1e-2, or 0.25 in float16 so that R / eps^2 terms at z = 0 stay finite."""
    return 0.25 if dtype == torch.float16 else EPS


def _as_tuple(x: object) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def assert_matches(out: object, fn: Callable[..., object], inputs: list, dtype: torch.dtype, name: str) -> None:
    """Compare the kernel's output(s) ``out`` (computed from ``inputs`` in ``dtype``) with ``fn`` on the same inputs.

    float64 / float32: elementwise ``rtol`` with an absolute floor of ``rtol * max|ref|``. float16: the max error
    against ``fn`` in float64 (on the same float16-rounded inputs) is at most twice that of ``fn`` in float16.
    """
    outs = _as_tuple(out)
    for i, o in enumerate(outs):
        if o is None:
            continue
        assert o.dtype == dtype, f"{name}[{i}]: dtype {o.dtype}, expected {dtype}"
        assert not o.isnan().any(), f"{name}[{i}]: NaN in the output (an element left unwritten?)"
        assert o.isfinite().all(), f"{name}[{i}]: overflow in the output (the test's inputs are too large)"
    if dtype in RTOL:
        refs = _as_tuple(fn(*inputs))
        for i, (o, r) in enumerate(zip(outs, refs, strict=True)):
            if o is None or r is None:
                assert o is None and r is None, f"{name}[{i}]: one of kernel / reference is None"
                continue
            assert o.shape == r.shape, f"{name}[{i}]: shape {tuple(o.shape)}, expected {tuple(r.shape)}"
            scale = max(r.abs().max().item(), 1e-30)
            torch.testing.assert_close(o, r, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                                       msg=lambda m, i=i: f"{name}[{i}] ({dtype}): {m}")
        return
    refs64 = _as_tuple(fn(*[x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                             for x in inputs]))
    refs_low = _as_tuple(fn(*inputs))
    for i, (o, r64, rlow) in enumerate(zip(outs, refs64, refs_low, strict=True)):
        if o is None:
            continue
        assert o.shape == r64.shape, f"{name}[{i}]: shape {tuple(o.shape)}, expected {tuple(r64.shape)}"
        err = (o.double() - r64).abs().max().item()
        torch_err = (rlow.double() - r64).abs().max().item()
        assert err <= 2 * torch_err + 1e-12, (f"{name}[{i}] ({dtype}): max error {err:.3g} against float64, PyTorch's "
                                              f"own {dtype} error {torch_err:.3g}")


def z_like(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A pre-activation with exact zeros (sign(0) = +1) and both signs."""
    z = torch.randn(shape, dtype=torch.float64)
    z.view(-1)[::7] = 0.0
    return z.to(DEVICE, dtype)


def randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype)
