"""Triton average-pooling relevance kernels against the reference ops (docs/kernels.md#average-pooling).

``avgpool_forward`` (``R_in = a * P^T (R / stab(z))``) and ``avgpool_backward`` (``dR``, ``dz``, ``da``) are
compared with the reference op and autograd through it, for avg_pool2d with each of its options (overlap,
ceil_mode, count_include_pad, divisor_override, different windows along H and W) and adaptive_avg_pool2d
(uneven windows, global pooling, more outputs than inputs); then the autograd Function that uses them
(ops.avgpool, ops.adaptive_avgpool, ops.mean on the triton backend) with gradcheck. Outputs start as NaN
(tests/triton/conftest.py), so unwritten elements show.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels import ops
from isnet_kernels.backends.triton import TritonPrimitives, available
from isnet_kernels.ops import pool
from isnet_kernels.ops.pool import AvgPoolWindows

from .helpers import DEVICE, TRITON, assert_matches, stab_eps

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

# (B, M, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = {
    "k2s2": (2, 3, 4, 7, 9, 2, 2, 0, False, True, None),
    "ceil_nopad_count": (1, 1, 3, 7, 9, 2, 2, 1, True, False, None),  # a last window partly outside
    "overlap": (2, 3, 2, 9, 7, 3, 1, 1, False, True, None),
    "overlap_stride2_ceil": (1, 5, 3, 9, 11, 3, 2, 1, True, True, None),
    "divisor_override": (1, 3, 2, 8, 9, 3, 2, 0, False, True, 5),
    "divisor_override_ceil": (2, 2, 3, 5, 7, 3, 3, 0, True, False, 2),
    "rectangular": (1, 2, 2, 9, 6, (3, 2), (2, 1), (1, 0), False, False, None),  # different along H and W
    "gaps": (1, 2, 2, 9, 8, 2, 3, 0, False, True, None),  # stride > kernel: inputs in no window
    "1x1_stride2": (1, 2, 3, 7, 6, 1, 2, 0, True, True, None),
    "many_elements": (2, 2, 3, 17, 15, 3, 2, 1, False, True, None),  # several blocks
}
# (B, M, C, H, W, output size): windows that do not divide the input, global pooling, more outputs than inputs
ADAPTIVE_CASES = {
    "7to3": (2, 3, 4, 7, 7, (3, 3)),
    "5to2": (1, 1, 3, 5, 5, (2, 2)),
    "7x5to3x2": (2, 2, 2, 7, 5, (3, 2)),
    "global": (1, 3, 4, 7, 7, (1, 1)),
    "9x4to4x3": (2, 1, 2, 9, 4, (4, 3)),
    "upsample": (1, 2, 2, 3, 4, (5, 7)),
}


def _windows(case: tuple) -> AvgPoolWindows:
    return AvgPoolWindows.of(*case[5:])


def _inputs(B: int, M: int, C: int, H: int, W: int, pool_fn: Callable, dtype: torch.dtype) -> list[torch.Tensor]:
    """R, a, z (the pool of a, with exact zeros) and G."""
    a = torch.randn(B, C, H, W, dtype=torch.float64)
    z = pool_fn(a)
    z.view(-1)[::7] = 0.0
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    G = torch.randn(B, M, C, H, W, dtype=torch.float64)
    return [x.to(DEVICE, dtype) for x in (R, a, z, G)]


def _reference(ref: Callable) -> Callable[..., tuple]:
    """``(R_in, dR, dz, da)``: the reference op, and autograd through it for the incoming gradient G."""
    def fn(R: torch.Tensor, a: torch.Tensor, z: torch.Tensor, G: torch.Tensor) -> tuple:
        R, a, z = (x.detach().clone().requires_grad_() for x in (R, a, z))
        with torch.enable_grad():
            out = ref(R, a, z)
            dR, dz, da = torch.autograd.grad(out, (R, z, a), G)
        return out.detach(), dR, dz, da
    return fn


def _kernels(R, a, z, G, windows: AvgPoolWindows | None, eps: float, compute_da: bool = True) -> tuple:
    return (TRITON.avgpool_forward(R, a, z, windows, eps), *TRITON.avgpool_backward(G, R, a, z, windows, eps,
                                                                                     compute_da))


def _avg_reference(windows: AvgPoolWindows, eps: float) -> Callable[..., tuple]:
    return _reference(lambda R, a, z: pool.reference_avgpool(R, a, z, *windows, eps=eps))


def _adaptive_reference(eps: float) -> Callable[..., tuple]:
    return _reference(lambda R, a, z: pool.reference_adaptive_avgpool(R, a, z, eps))


@pytest.mark.parametrize("case", list(AVG_CASES), ids=str)
def test_avgpool_float64(case: str) -> None:
    windows = _windows(AVG_CASES[case])
    inputs = _inputs(*AVG_CASES[case][:5], lambda x: F.avg_pool2d(x, *windows), torch.float64)
    assert_matches(_kernels(*inputs, windows, 0.1), _avg_reference(windows, 0.1), inputs, torch.float64,
                   f"avgpool[{case}]")


@pytest.mark.parametrize("case", list(ADAPTIVE_CASES), ids=str)
def test_adaptive_avgpool_float64(case: str) -> None:
    size = ADAPTIVE_CASES[case][5]
    inputs = _inputs(*ADAPTIVE_CASES[case][:5], lambda x: F.adaptive_avg_pool2d(x, size), torch.float64)
    assert_matches(_kernels(*inputs, None, 0.1), _adaptive_reference(0.1), inputs, torch.float64,
                   f"adaptive[{case}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["overlap_stride2_ceil", "divisor_override_ceil", "7x5to3x2", "global"], ids=str)
def test_avgpool_low_precision(case: str, dtype: torch.dtype) -> None:
    eps = stab_eps(dtype)
    if case in AVG_CASES:
        windows = _windows(AVG_CASES[case])
        inputs = _inputs(*AVG_CASES[case][:5], lambda x: F.avg_pool2d(x, *windows), dtype)
        ref = _avg_reference(windows, eps)
    else:
        windows, size = None, ADAPTIVE_CASES[case][5]
        inputs = _inputs(*ADAPTIVE_CASES[case][:5], lambda x: F.adaptive_avg_pool2d(x, size), dtype)
        ref = _adaptive_reference(eps)
    assert_matches(_kernels(*inputs, windows, eps), ref, inputs, dtype, f"avgpool[{case}]")


def test_avgpool_without_da() -> None:
    """compute_da=False: the same dR and dz, and no da."""
    windows = _windows(AVG_CASES["overlap_stride2_ceil"])
    inputs = _inputs(1, 2, 2, 9, 7, lambda x: F.avg_pool2d(x, *windows), torch.float64)
    full = _kernels(*inputs, windows, 0.1)
    part = _kernels(*inputs, windows, 0.1, compute_da=False)
    assert part[3] is None
    for f, p in zip(full[:3], part[:3], strict=True):
        torch.testing.assert_close(f, p, rtol=0, atol=0)


def test_avgpool_rejects_inconsistent_inputs() -> None:
    windows = _windows(AVG_CASES["overlap_stride2_ceil"])
    R, a, z, G = _inputs(1, 2, 2, 9, 7, lambda x: F.avg_pool2d(x, *windows), torch.float64)
    with pytest.raises(ValueError, match="maps"):  # z of another output size than the windows give
        TRITON.avgpool_forward(R, a, z, windows._replace(stride=(1, 1)), 0.1)
    with pytest.raises(ValueError):
        TRITON.avgpool_forward(R, a[:, :1], z, windows, 0.1)
    with pytest.raises(ValueError):
        TRITON.avgpool_backward(G[..., :-1], R, a, z, windows, 0.1)
    with pytest.raises(TypeError):
        TRITON.avgpool_forward(R, a.float(), z, windows, 0.1)


# ----------------------------------------------------------------------------------------------------------------
# the autograd Function on the triton kernels
# ----------------------------------------------------------------------------------------------------------------

FUNCTIONS = {
    "avgpool": (lambda a: F.avg_pool2d(a, 3, 2, 1),
                lambda R, a, z, p: ops.avgpool(R, a, z, (3, 3), (2, 2), (1, 1), eps=0.1, prims=p)),
    "avgpool_ceil_nopad_divisor": (
        lambda a: F.avg_pool2d(a, 2, None, 1, True, False, 3),
        lambda R, a, z, p: ops.avgpool(R, a, z, (2,), (), (1,), True, False, 3, eps=0.1, prims=p)),
    "adaptive": (lambda a: F.adaptive_avg_pool2d(a, (3, 2)),
                 lambda R, a, z, p: ops.adaptive_avgpool(R, a, z, eps=0.1, prims=p)),
    "mean": (lambda a: a.mean((2, 3)), lambda R, a, z, p: ops.mean(R, a, z, (2, 3), eps=0.1, prims=p)),
}


class _NoAten(TritonPrimitives):
    """Triton primitives whose unfused elementwise path fails: the pooling Function must not take it."""

    def stab_divide(self, *args: object) -> torch.Tensor:
        raise AssertionError("unfused pooling path taken")


@pytest.mark.parametrize("name", list(FUNCTIONS), ids=str)
def test_pool_function_on_fused_kernels(name: str) -> None:
    """Values, and gradients of a random projection, against autograd through the reference op (float64)."""
    pool_fn, op = FUNCTIONS[name]
    a = torch.rand(2, 3, 7, 6, dtype=torch.float64, device=DEVICE) + 0.1
    z = pool_fn(a)
    z = z + 0.3 * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (R, a, z)]
    out = op(*leaves, _NoAten())
    G = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, G)
    ref_leaves = [t.clone().requires_grad_() for t in (R, a, z)]
    expected = op(*ref_leaves, None)
    ref_grads = torch.autograd.grad(expected, ref_leaves, G)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())
    for n, g, r in zip("Raz", grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * r.abs().max().item(),
                                   msg=lambda m, n=n: f"d{n}: {m}")


@pytest.mark.parametrize("name", ["avgpool_ceil_nopad_divisor", "adaptive"], ids=str)
def test_gradcheck_pool_function(name: str) -> None:
    """gradcheck (fast mode; the full vector-Jacobian products are compared above) of the pooling Function on
    the triton backend, float64."""
    pool_fn, op = FUNCTIONS[name]
    a = torch.rand(1, 2, 5, 4, dtype=torch.float64, device=DEVICE) + 0.1
    z = pool_fn(a)
    z = z + 0.3 * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    R = torch.randn(1, 2, *z.shape[1:], dtype=torch.float64, device=DEVICE)
    inputs = tuple(t.clone().requires_grad_() for t in (R, a, z))
    assert torch.autograd.gradcheck(lambda *t: op(*t, TRITON), inputs, fast_mode=True)
