"""The autograd Functions (hand-written backwards) against the reference ops, on every available backend.

Forward values must match the reference; gradients must match autograd of the reference and pass gradcheck.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels import ops
from isnet_kernels.backends import dispatch

from ..backend_params import backend_params

BACKENDS = backend_params()
NOT_TRITON = backend_params(("torch", "cpp"))
CONV_CASES = [
    # (Ci, Co, H, W, k, stride, padding, dilation, groups)
    (3, 4, 7, 9, 3, 1, 1, 1, 1),
    (4, 6, 9, 8, 3, 2, 1, 1, 2),  # stride 2, odd/even sizes: output_padding needed
    (4, 4, 9, 9, 3, 1, 2, 2, 4),  # dilation 2, depthwise
    (2, 3, 8, 7, 1, 1, 0, 1, 1),  # 1x1
    (2, 2, 9, 9, 7, 2, 3, 1, 1),  # 7x7 stride 2
]


def _prims(name):
    return dispatch.primitives(name)


def _away_from_zero(t: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    return t + margin * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _check_against_reference(fn, ref, inputs, names):
    """Values equal; gradients of a random projection equal (float64)."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out, expected = fn(*inputs), ref(*inputs)
    out, expected = (out,) if isinstance(out, torch.Tensor) else out, (expected,) if isinstance(
        expected, torch.Tensor) else expected
    for o, e in zip(out, expected):
        torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-12)
    weights = [torch.randn_like(e) for e in expected]
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), inputs, allow_unused=True)
    ref_grads = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), inputs, allow_unused=True)
    for name, g, r in zip(names, grads, ref_grads):
        if r is None:
            continue
        assert g is not None, f"no gradient for {name}"
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=lambda m, n=name: f"gradient of {n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("M", [1, 3])
def test_conv_epsilon_function(backend, case, M):
    Ci, Co, H, W, k, stride, padding, dilation, groups = case
    B = 2
    geom = ops.Geometry(False, (stride, stride), (padding, padding), (dilation, dilation), groups)
    a = torch.rand(B, Ci, H, W, dtype=torch.double)
    weight = torch.randn(Co, Ci // groups, k, k, dtype=torch.double)
    z = _away_from_zero(F.conv2d(a, weight, None, stride, padding, dilation, groups))
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.double)
    prims = _prims(backend)
    _check_against_reference(
        lambda R, a, z, w: ops.epsilon(R, a, z, w, geom, 0.1, prims),
        lambda R, a, z, w: ops.reference_conv_epsilon(R, a, z, w, geom.stride, geom.padding, geom.dilation,
                                                      groups, 0.1),
        [R, a, z, weight], ["R", "a", "z", "weight"])


@pytest.mark.parametrize("backend", NOT_TRITON)
def test_linear_epsilon_function_gradcheck(backend):
    geom = ops.Geometry(linear=True)
    a = torch.rand(3, 5, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.double, requires_grad=True)
    z = _away_from_zero(torch.randn(3, 4, dtype=torch.double)).requires_grad_()
    R = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    prims = _prims(backend)
    assert torch.autograd.gradcheck(lambda R, a, z, w: ops.epsilon(R, a, z, w, geom, 0.1, prims), (R, a, z, w))
    torch.testing.assert_close(ops.epsilon(R, a, z, w, geom, 0.1, prims),
                               ops.reference_linear_epsilon(R, a, z, w, 0.1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("linear", [False, True])
def test_zbox_function(backend, linear):
    prims = _prims(backend)
    if linear:
        geom = ops.Geometry(linear=True)
        a = torch.rand(2, 6, dtype=torch.double)
        w = torch.randn(3, 6, dtype=torch.double)
        b = torch.randn(3, dtype=torch.double)
        z = a @ w.t() + b
        low, high = torch.full((1, 6), -0.5, dtype=torch.double), torch.linspace(1, 2, 6, dtype=torch.double)[None]
        R = torch.randn(2, 2, 3, dtype=torch.double)
    else:
        geom = ops.Geometry(False, (2, 2), (1, 1), (1, 1), 1)
        a = torch.rand(2, 3, 7, 8, dtype=torch.double)
        w = torch.randn(4, 3, 3, 3, dtype=torch.double)
        b = torch.randn(4, dtype=torch.double)
        z = F.conv2d(a, w, b, 2, 1)
        low = torch.tensor([-0.5, 0.0, -1.0], dtype=torch.double).view(1, 3, 1, 1).expand(1, 3, 7, 8)
        high = torch.tensor([1.0, 1.5, 2.0], dtype=torch.double).view(1, 3, 1, 1).expand(1, 3, 7, 8)
        R = torch.randn(2, 2, *z.shape[1:], dtype=torch.double)
    _check_against_reference(
        lambda R, a, z, w, b: ops.zbox(R, a, z, w, b, low, high, geom, 0.1, prims),
        lambda R, a, z, w, b: ops.zbox(R, a, z, w, b, low, high, geom, 0.1, None),
        [R, a, z, w, b], ["R", "a", "z", "weight", "bias"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,stride,padding,size", [(2, 2, 0, 8), (3, 2, 1, 9), (3, 1, 1, 7)])
def test_maxpool_function(backend, kernel, stride, padding, size):
    prims = _prims(backend)
    a = torch.randn(2, 3, size, size, dtype=torch.double)
    z, idx = F.max_pool2d(a, kernel, stride, padding, return_indices=True)
    z = _away_from_zero(z)
    R = torch.randn(2, 3, *z.shape[1:], dtype=torch.double)
    _check_against_reference(
        lambda R, z: ops.maxpool(R, z, idx, (size, size), 0.1, prims),
        lambda R, z: ops.reference_maxpool(R, z, idx, (size, size), 0.1), [R, z], ["R", "z"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool", ["avg", "avg_ceil_nopad", "adaptive", "mean", "sum", "batchnorm"])
def test_linear_pool_functions(backend, pool):
    prims = _prims(backend)
    a = torch.rand(2, 3, 9, 7, dtype=torch.double) + 0.1
    if pool == "avg":
        z = F.avg_pool2d(a, 3, 2, 1)
        fn = lambda R, a, z, p: ops.avgpool(R, a, z, (3, 3), (2, 2), (1, 1), eps=0.1, prims=p)  # noqa: E731
    elif pool == "avg_ceil_nopad":
        z = F.avg_pool2d(a, 2, 2, 1, True, False)
        fn = lambda R, a, z, p: ops.avgpool(R, a, z, (2, 2), (2, 2), (1, 1), True, False, eps=0.1, prims=p)  # noqa
    elif pool == "adaptive":
        z = F.adaptive_avg_pool2d(a, (4, 3))
        fn = lambda R, a, z, p: ops.adaptive_avgpool(R, a, z, eps=0.1, prims=p)  # noqa: E731
    elif pool == "mean":
        z = a.mean((2, 3))
        fn = lambda R, a, z, p: ops.mean(R, a, z, (2, 3), eps=0.1, prims=p)  # noqa: E731
    elif pool == "sum":
        z = a.sum(1)
        fn = lambda R, a, z, p: ops.reduce_sum(R, a, z, (1,), eps=0.1, prims=p)  # noqa: E731
    else:
        gamma, invstd = torch.rand(3, dtype=torch.double) + 0.5, torch.rand(3, dtype=torch.double) + 0.5
        z = (a - 0.4) * (gamma * invstd).view(3, 1, 1)
        fn = lambda R, a, z, p: ops.batchnorm_epsilon(R, a, z, gamma, invstd, 0.1, p)  # noqa: E731
    z = _away_from_zero(z)
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.double)
    _check_against_reference(lambda R, a, z: fn(R, a, z, prims), lambda R, a, z: fn(R, a, z, None), [R, a, z],
                             ["R", "a", "z"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_function(backend):
    prims = _prims(backend)
    x, f = torch.randn(2, 3, 5, 5, dtype=torch.double), torch.randn(2, 3, 5, 5, dtype=torch.double)
    y = _away_from_zero(x + f)
    R = torch.randn(2, 3, 3, 5, 5, dtype=torch.double)
    _check_against_reference(lambda R, x, f, y: ops.residual_split(R, x, f, y, 0.1, prims),
                             lambda R, x, f, y: ops.reference_residual_split(R, x, f, y, 0.1), [R, x, f, y],
                             ["R", "x", "f", "y"])
    # one branch unused downstream: its gradient arrives as None
    inputs = [t.clone().requires_grad_() for t in (R, x, f, y)]
    Rx, _ = ops.residual_split(*inputs, 0.1, prims)
    ref_inputs = [t.clone().requires_grad_() for t in (R, x, f, y)]
    Rx_ref, _ = ops.reference_residual_split(*ref_inputs, 0.1)
    g = torch.autograd.grad(Rx.sum(), inputs, allow_unused=True)
    r = torch.autograd.grad(Rx_ref.sum(), ref_inputs, allow_unused=True)
    for a, b, t in zip(g, r, inputs):
        zero = torch.zeros_like(t)
        torch.testing.assert_close(zero if a is None else a, zero if b is None else b)


@pytest.mark.parametrize("backend", NOT_TRITON)  # interpreted Triton: too slow
def test_functions_gradcheck(backend):
    """gradcheck of the hand-written backwards (float64), conv with stride and groups, maxpool, residual.

    The backwards are the same code on every backend; Triton's kernels are checked against the torch
    primitives and, above, through ``_check_against_reference``'s gradients."""
    prims = _prims(backend)
    geom = ops.Geometry(False, (2, 2), (1, 1), (1, 1), 2)
    a = torch.rand(2, 4, 7, 7, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.double, requires_grad=True)
    z = _away_from_zero(F.conv2d(a, w, None, 2, 1, 1, 2)).detach().requires_grad_()
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda R, a, z, w: ops.epsilon(R, a, z, w, geom, 0.1, prims), (R, a, z, w))
    x = torch.randn(2, 3, 6, 6, dtype=torch.double)
    zp, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    zp = _away_from_zero(zp).requires_grad_()
    Rp = torch.randn(2, 2, *zp.shape[1:], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda R, z: ops.maxpool(R, z, idx, (6, 6), 0.1, prims), (Rp, zp))
    xs, fs = (torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True) for _ in range(2))
    ys = _away_from_zero(xs.detach() + fs.detach()).requires_grad_()
    Rs = torch.randn(2, 2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: ops.residual_split(*t, 0.1, prims), (Rs, xs, fs, ys))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("linear", [False, True])
def test_zplus_on_backends(backend, linear):
    prims = _prims(backend)
    if linear:
        geom = ops.Geometry(linear=True)
        a, w = torch.rand(2, 6, dtype=torch.double), torch.randn(3, 6, dtype=torch.double)
        R = torch.randn(2, 2, 3, dtype=torch.double)
    else:
        geom = ops.Geometry(False, (2, 2), (1, 1), (1, 1), 1)
        a, w = torch.rand(2, 3, 7, 8, dtype=torch.double), torch.randn(4, 3, 3, 3, dtype=torch.double)
        R = torch.randn(2, 2, 4, 4, 4, dtype=torch.double)
    b = torch.randn(w.shape[0], dtype=torch.double)
    _check_against_reference(lambda R, a, w, b: ops.zplus(R, a, w, b, geom, 0.1, prims),
                             lambda R, a, w, b: ops.zplus(R, a, w, b, geom, 0.1, None), [R, a, w, b],
                             ["R", "a", "weight", "bias"])
