"""Pooling rules: max-pool winner-take-all against an explicit window scan, average pooling (plain, adaptive,
mean) and the sum over axes against the epsilon rule on the pooling's explicit matrix (its Jacobian)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from isnet_kernels import ops
from isnet_kernels.ops import (
    reference_adaptive_avgpool,
    reference_avgpool,
    reference_maxpool,
    reference_mean,
    reference_sum,
)


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def oracle_epsilon(R, a, z, P, eps):
    """R_j = a_j * sum_k P_kj R_k / stab(z_k), flattened units. R (B, M, K), a (B, J), z (B, K), P (K, J)."""
    return a[:, None, :] * torch.einsum("kj,bmk->bmj", P, R / stab(z, eps)[:, None, :])


def matrix_of(fn, in_shape):
    """Explicit (K, J) matrix of a linear map on one sample, as its Jacobian."""
    x = torch.zeros(1, *in_shape, dtype=torch.float64)
    J = jacobian(fn, x)
    n_in = math.prod(in_shape)
    return J.reshape(-1, n_in)


# --------------------------------------------------------------------------------------------------- max pool


def oracle_maxpool(R, x, z, windows, eps):
    """Scan each window for its largest input; add R * z / stab(z) there. ``windows(oy, ox)`` lists the (iy, ix)
    inside the image for one output cell. x (B, C, H, W), z (B, C, Ho, Wo), R (B, M, C, Ho, Wo)."""
    B, M, C, Ho, Wo = R.shape
    out = torch.zeros(B, M, C, *x.shape[-2:], dtype=torch.float64)
    xs, zs = x.tolist(), z.tolist()
    for b in range(B):
        for c in range(C):
            for oy in range(Ho):
                for ox in range(Wo):
                    iy, ix = max(windows(oy, ox), key=lambda yx: xs[b][c][yx[0]][yx[1]])
                    zv = zs[b][c][oy][ox]
                    assert zv == xs[b][c][iy][ix]  # the oracle's winner is the pool's output
                    out[b, :, c, iy, ix] += R[b, :, c, oy, ox] * (zv / (zv + eps if zv >= 0 else zv - eps))
    return out


def pool_windows(H, W, k, s, p, d):
    def windows(oy, ox):
        ys = [oy * s[0] - p[0] + i * d[0] for i in range(k[0])]
        xs = [ox * s[1] - p[1] + j * d[1] for j in range(k[1])]
        return [(y, x) for y in ys if 0 <= y < H for x in xs if 0 <= x < W]

    return windows


# (H, W, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = {
    "k2s2_odd": (7, 9, (2, 2), (2, 2), (0, 0), (1, 1), False),
    "k3s2p1_overlap": (7, 8, (3, 3), (2, 2), (1, 1), (1, 1), False),
    "k3s2_ceil": (8, 7, (3, 3), (2, 2), (0, 0), (1, 1), True),
    "k3s1p1_d2": (7, 6, (3, 3), (1, 1), (1, 1), (2, 2), False),
    "k2x3_s1x2_p1_ceil": (5, 8, (2, 3), (1, 2), (1, 1), (1, 1), True),
    "k3s3p1_ceil": (8, 10, (3, 3), (3, 3), (1, 1), (1, 1), True),
}


@pytest.mark.parametrize("B,M", [(1, 1), (3, 3), (1, 3)])
@pytest.mark.parametrize("case", MAX_CASES)
def test_maxpool_matches_window_scan(case, B, M):
    H, W, k, s, p, d, ceil = MAX_CASES[case]
    torch.manual_seed(0)
    x = torch.randn(B, 2, H, W, dtype=torch.float64)
    z, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    got = reference_maxpool(R, z, idx, (H, W), eps=1e-2)
    assert got.shape == (B, M, 2, H, W)
    torch.testing.assert_close(got, oracle_maxpool(R, x, z, pool_windows(H, W, k, s, p, d), 1e-2),
                               rtol=1e-12, atol=1e-12)


def test_maxpool_input_winning_several_windows_collects_the_sum():
    """Kernel 3, stride 2 on 5x5: the four windows all contain (2, 2); a maximum there wins all four."""
    torch.manual_seed(1)
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 5.0
    x[0, 0, 4, 0] = 4.0  # wins nothing: (4, 0) lies only in the two lower windows, which (2, 2) also covers
    z, idx = F.max_pool2d(x, 3, 2, return_indices=True)
    assert z.shape[-2:] == (2, 2) and (idx == 12).all()
    R = torch.tensor([1.0, -2.0, 3.5, 0.25], dtype=torch.float64).view(1, 1, 1, 2, 2).repeat(1, 2, 1, 1, 1)
    R[:, 1] *= -3
    got = reference_maxpool(R, z, idx, (5, 5), eps=0.1)
    expected = torch.zeros(1, 2, 1, 5, 5, dtype=torch.float64)
    expected[:, :, 0, 2, 2] = R.sum((2, 3, 4)) * 5.0 / 5.1
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_maxpool_overlap_two_windows_and_distinct_winners():
    """Row of 7 with kernel 3, stride 2: windows [0,3), [2,5), [4,7); position 2 wins the first two."""
    x = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.4, 0.8, 0.5], dtype=torch.float64).view(1, 1, 1, 7)
    z, idx = F.max_pool2d(x, (1, 3), (1, 2), return_indices=True)
    assert idx.flatten().tolist() == [2, 2, 5]
    R = torch.tensor([2.0, 3.0, -1.0], dtype=torch.float64).view(1, 1, 1, 1, 3)
    got = reference_maxpool(R, z, idx, (1, 7), eps=0.01)
    expected = torch.zeros(7, dtype=torch.float64)
    expected[2] = (2.0 + 3.0) * 0.9 / 0.91
    expected[5] = -1.0 * 0.8 / 0.81
    torch.testing.assert_close(got.flatten(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("in_hw,out_hw", [((10, 7), (4, 3)), ((7, 10), (3, 4)), ((5, 9), (5, 2)), ((6, 6), (1, 1))])
def test_adaptive_maxpool_indices_match_window_scan(in_hw, out_hw):
    torch.manual_seed(2)
    x = torch.randn(3, 2, *in_hw, dtype=torch.float64)
    z, idx = F.adaptive_max_pool2d(x, out_hw, return_indices=True)
    R = torch.randn(3, 2, 2, *out_hw, dtype=torch.float64)
    got = reference_maxpool(R, z, idx, in_hw, eps=1e-2)

    def windows(oy, ox):
        (H, W), (Ho, Wo) = in_hw, out_hw
        ys = range(oy * H // Ho, -(-(oy + 1) * H // Ho))
        xs = range(ox * W // Wo, -(-(ox + 1) * W // Wo))
        return [(y, xx) for y in ys for xx in xs]

    torch.testing.assert_close(got, oracle_maxpool(R, x, z, windows, 1e-2), rtol=1e-12, atol=1e-12)


def test_maxpool_float32_close_to_float64():
    H, W, k, s, p, d, ceil = MAX_CASES["k3s2p1_overlap"]
    torch.manual_seed(3)
    x = torch.randn(3, 2, H, W)
    z, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    R = torch.randn(3, 3, *z.shape[1:])
    got = reference_maxpool(R, z, idx, (H, W), eps=1e-2)
    assert got.dtype == torch.float32
    expected = oracle_maxpool(R.double(), x.double(), z.double(), pool_windows(H, W, k, s, p, d), 1e-2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_maxpool_gradcheck():
    torch.manual_seed(4)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    x = torch.where(x >= 0, x + 0.5, x - 0.5)
    z, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    R = torch.randn(2, 3, *z.shape[1:], dtype=torch.float64, requires_grad=True)
    z = z.requires_grad_()
    assert torch.autograd.gradcheck(lambda R, z: reference_maxpool(R, z, idx, (5, 6), eps=0.1), (R, z))


# ---------------------------------------------------------------------------------------------- average pool

# (H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = {
    "k2s2_odd": (7, 9, (2, 2), (2, 2), (0, 0), False, True, None),
    "k3s2p1_incl": (7, 8, (3, 3), (2, 2), (1, 1), False, True, None),
    "k3s2p1_excl": (7, 8, (3, 3), (2, 2), (1, 1), False, False, None),
    "k3s2p1_ceil_incl": (8, 7, (3, 3), (2, 2), (1, 1), True, True, None),
    "k3s2p1_ceil_excl": (8, 7, (3, 3), (2, 2), (1, 1), True, False, None),
    "k3s2_ceil_nopad": (8, 6, (3, 3), (2, 2), (0, 0), True, False, None),
    "k3x2_s2x1_p1x0_div5": (7, 5, (3, 2), (2, 1), (1, 0), False, True, 5),
    "k5s3p2_ceil": (9, 11, (5, 5), (3, 3), (2, 2), True, True, None),
    "k2s3p1_ceil_excl_div3": (8, 7, (2, 2), (3, 3), (1, 1), True, False, 3),
    "k1s2": (7, 6, (1, 1), (2, 2), (0, 0), False, True, None),
}


def avg_problem(case, B, M, seed, dtype=torch.float64):
    H, W, k, s, p, ceil, cip, div = AVG_CASES[case]
    torch.manual_seed(seed)
    a = torch.randn(B, 2, H, W, dtype=torch.float64).to(dtype)

    def fn(t):
        return F.avg_pool2d(t, k, s, p, ceil, cip, div)

    z = fn(a)
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64).to(dtype)
    return a, z, R, fn, (k, s, p, ceil, cip, div)


@pytest.mark.parametrize("B,M", [(1, 1), (3, 3), (3, 1)])
@pytest.mark.parametrize("case", AVG_CASES)
def test_avgpool_matches_matrix_oracle(case, B, M):
    a, z, R, fn, (k, s, p, ceil, cip, div) = avg_problem(case, B, M, seed=5)
    got = reference_avgpool(R, a, z, k, s, p, ceil, cip, div, eps=1e-2)
    assert got.shape == (B, M, *a.shape[1:])
    P = matrix_of(fn, a.shape[1:])
    torch.testing.assert_close(z.flatten(1), a.flatten(1) @ P.t(), rtol=1e-12, atol=1e-12)
    expected = oracle_epsilon(R.flatten(2), a.flatten(1), z.flatten(1), P, 1e-2)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["k3s2p1_ceil_excl", "k3x2_s2x1_p1x0_div5"])
def test_avgpool_float32_close_to_float64_oracle(case):
    a, z, R, fn, (k, s, p, ceil, cip, div) = avg_problem(case, 3, 2, seed=6, dtype=torch.float32)
    got = reference_avgpool(R, a, z, k, s, p, ceil, cip, div, eps=1e-2)
    assert got.dtype == torch.float32
    P = matrix_of(fn, a.shape[1:])
    expected = oracle_epsilon(R.double().flatten(2), a.double().flatten(1), z.double().flatten(1), P, 1e-2)
    torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-4,
                               atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("case", ["k3s2p1_ceil_excl", "k3x2_s2x1_p1x0_div5"])
def test_avgpool_gradcheck(case):
    _, _, _, fn, (k, s, p, ceil, cip, div) = avg_problem(case, 2, 2, seed=7)
    a = torch.randn(2, 1, 6, 5, dtype=torch.float64)
    z = fn(a)
    z = torch.where(z >= 0, z + 0.5, z - 0.5)  # independent input, away from 0
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (R, a, z))
    assert torch.autograd.gradcheck(lambda R, a, z: reference_avgpool(R, a, z, k, s, p, ceil, cip, div, eps=0.1),
                                    args)


ADAPTIVE_CASES = [((10, 7), (4, 3)), ((7, 10), (3, 4)), ((9, 5), (4, 2)), ((8, 6), (4, 3)), ((7, 5), (1, 1)),
                  ((5, 5), (5, 5)), ((3, 4), (5, 6))]


@pytest.mark.parametrize("B,M", [(1, 3), (3, 1)])
@pytest.mark.parametrize("in_hw,out_hw", ADAPTIVE_CASES)
def test_adaptive_avgpool_matches_matrix_oracle(in_hw, out_hw, B, M):
    torch.manual_seed(8)
    a = torch.randn(B, 2, *in_hw, dtype=torch.float64)

    def fn(t):
        return F.adaptive_avg_pool2d(t, out_hw)

    z = fn(a)
    R = torch.randn(B, M, 2, *out_hw, dtype=torch.float64)
    got = reference_adaptive_avgpool(R, a, z, eps=1e-2)
    assert got.shape == (B, M, 2, *in_hw)
    P = matrix_of(fn, a.shape[1:])
    expected = oracle_epsilon(R.flatten(2), a.flatten(1), z.flatten(1), P, 1e-2)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_hw,out_hw", [((8, 6), (4, 3)), ((7, 5), (1, 1)), ((9, 6), (3, 2))])
def test_adaptive_avgpool_divisible_equals_strided_pool(in_hw, out_hw):
    """docs/differences.md#adaptive-average-pooling: stride = in // out, kernel = in - (out - 1) * stride, exact when
    out divides in."""
    torch.manual_seed(9)
    a = torch.randn(2, 3, *in_hw, dtype=torch.float64)
    z = F.adaptive_avg_pool2d(a, out_hw)
    R = torch.randn(2, 2, 3, *out_hw, dtype=torch.float64)
    stride = [i // o for i, o in zip(in_hw, out_hw, strict=True)]
    kernel = [i - (o - 1) * s for i, o, s in zip(in_hw, out_hw, stride, strict=True)]
    torch.testing.assert_close(reference_adaptive_avgpool(R, a, z), reference_avgpool(R, a, z, kernel, stride, [0, 0]),
                               rtol=1e-12, atol=1e-12)


def test_adaptive_avgpool_float32_and_gradcheck():
    torch.manual_seed(10)
    a = torch.randn(3, 2, 10, 7)
    z = F.adaptive_avg_pool2d(a, (4, 3))
    R = torch.randn(3, 2, 2, 4, 3)
    got = reference_adaptive_avgpool(R, a, z)
    P = matrix_of(lambda t: F.adaptive_avg_pool2d(t, (4, 3)), a.shape[1:])
    expected = oracle_epsilon(R.double().flatten(2), a.double().flatten(1), z.double().flatten(1), P, 1e-2)
    torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())

    a = torch.randn(2, 1, 7, 5, dtype=torch.float64)
    z = F.adaptive_avg_pool2d(a, (3, 2))
    z = torch.where(z >= 0, z + 0.5, z - 0.5)
    R = torch.randn(2, 2, 1, 3, 2, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (R, a, z))
    assert torch.autograd.gradcheck(lambda R, a, z: reference_adaptive_avgpool(R, a, z, eps=0.1), args)


# ------------------------------------------------------------------------------------------------------ mean

# (activation shape, dims, keepdim)
MEAN_CASES = {
    "hw_keepdim": ((3, 2, 5, 7), (2, 3), True),
    "hw_drop": ((3, 2, 5, 7), (2, 3), False),
    "tokens": ((2, 5, 3), (1,), False),
    "tokens_keepdim": ((2, 5, 3), (1,), True),
    "chw_drop": ((2, 3, 3, 5), (1, 2, 3), False),
}


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("case", MEAN_CASES)
def test_mean_matches_matrix_oracle(case, M):
    shape, dims, keepdim = MEAN_CASES[case]
    torch.manual_seed(11)
    a = torch.randn(*shape, dtype=torch.float64)

    def fn(t):
        return t.mean(dims, keepdim=keepdim)

    z = fn(a)
    R = torch.randn(shape[0], M, *z.shape[1:], dtype=torch.float64)
    got = reference_mean(R, a, z, dims, eps=1e-2)
    assert got.shape == (shape[0], M, *shape[1:])
    P = matrix_of(fn, shape[1:])
    expected = oracle_epsilon(R.reshape(shape[0], M, -1), a.flatten(1), z.reshape(shape[0], -1), P, 1e-2)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)


def test_mean_explicit_formula_float32_and_gradcheck():
    """R_in[b, m, c, h, w] = a[b, c, h, w] / (H W) * R[b, m, c] / stab(z[b, c])."""
    torch.manual_seed(12)
    a = torch.randn(3, 4, 5, 3)
    z = a.mean((2, 3))
    R = torch.randn(3, 2, 4)
    expected = (a.double()[:, None] / 15 * (R.double() / stab(z.double(), 1e-2)[:, None])[..., None, None])
    got = reference_mean(R, a, z, (2, 3))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())

    a = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    z = a.mean((2, 3), keepdim=True)
    z = torch.where(z >= 0, z + 0.5, z - 0.5)
    R = torch.randn(2, 3, 2, 1, 1, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (R, a, z))
    assert torch.autograd.gradcheck(lambda R, a, z: reference_mean(R, a, z, (2, 3), eps=0.1), args)


# ------------------------------------------------------------------------------------------------------- sum

# (activation shape, dims, keepdim): odd sizes; ResNeSt's sum over its radix splits is "radix"
SUM_CASES = {
    "radix": ((3, 2, 5, 3, 7), (1,), False),
    "hw_keepdim": ((2, 3, 5, 7), (2, 3), True),
    "last": ((3, 5, 3), (2,), False),
    "negative": ((3, 5, 3), (-1,), True),
    "chw": ((2, 3, 3, 5), (1, 2, 3), False),
}


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("case", SUM_CASES)
def test_sum_matches_matrix_oracle(case, M):
    """The sum is a linear layer with weights 1: the epsilon rule on its explicit matrix, float64; float32 against
    that float64 oracle; conservation as eps -> 0 (no bias: sum R_in = sum R)."""
    shape, dims, keepdim = SUM_CASES[case]
    torch.manual_seed(13)
    a = torch.randn(*shape, dtype=torch.float64)
    pos = tuple(d % a.dim() for d in dims)

    def fn(t):
        return t.sum(dims, keepdim=keepdim)

    z = fn(a)
    R = torch.randn(shape[0], M, *z.shape[1:], dtype=torch.float64)
    got = reference_sum(R, a, z, pos, eps=1e-2)
    assert got.shape == (shape[0], M, *shape[1:])
    P = matrix_of(fn, shape[1:])
    assert 1.0 in P and set(P.unique().tolist()) <= {0.0, 1.0}  # weights 1: a sum, not a mean
    expected = oracle_epsilon(R.reshape(shape[0], M, -1), a.flatten(1), z.reshape(shape[0], -1), P, 1e-2)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)
    got32 = reference_sum(R.float(), a.float(), fn(a.float()), pos, eps=1e-2)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double().flatten(2), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    exact = reference_sum(R, a, z, pos, eps=1e-12)
    torch.testing.assert_close(exact.reshape(shape[0], M, -1).sum(-1), R.reshape(shape[0], M, -1).sum(-1),
                               rtol=1e-8, atol=1e-8)


def test_sum_gradcheck_reference_and_function():
    """``gradcheck`` of the reference and of :func:`ops.reduce_sum` on the torch primitives (the hand-written
    backward of ``LinearPoolFunction``), which also equals the reference in value."""
    torch.manual_seed(14)
    a = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    z = a.sum(1)
    z = torch.where(z >= 0, z + 0.5, z - 0.5)  # away from the stabiliser's kink
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64)
    prims = ops.TorchPrimitives()
    args = tuple(t.clone().requires_grad_() for t in (R, a, z))
    assert torch.autograd.gradcheck(lambda R, a, z: reference_sum(R, a, z, (1,), eps=0.1), args)
    assert torch.autograd.gradcheck(lambda R, a, z: ops.reduce_sum(R, a, z, (1,), 0.1, prims), args)
    torch.testing.assert_close(ops.reduce_sum(R, a, z, (1,), 0.1, prims), reference_sum(R, a, z, (1,), 0.1),
                               rtol=1e-12, atol=1e-12)
