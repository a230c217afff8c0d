"""Epsilon rule through Conv2d / Linear, and the transposed-convolution helpers, against explicit matrix oracles.

The oracle writes the convolution as a dense matrix ``A`` (rows: output units, columns: input units) built by
index arithmetic from the definition of a strided, padded, dilated, grouped cross-correlation, then applies
The epsilon rule of docs/rules.md#epsilon-conv-and-linear as an explicit sum: ``R_j = a_j * sum_k A_kj R_k /
stab(z_k)``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isnet_kernels.ops import (
    conv2d_transpose,
    conv_transpose_output_padding,
    reference_conv_epsilon,
    reference_linear_epsilon,
)

# (Ci, Co, H, W, kernel, stride, padding, dilation, groups)
CONV_CASES = {
    "k3s1p1": (3, 4, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "k3s2p1g2_outpad": (2, 4, 8, 7, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    "depthwise_s3p2_outpad2": (4, 4, 8, 10, (3, 3), (3, 3), (2, 2), (1, 1), 4),
    "k1s2": (3, 5, 6, 7, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    "k5s2p2d2": (2, 3, 11, 10, (5, 5), (2, 2), (2, 2), (2, 2), 1),
    "k7s1p3": (2, 2, 9, 8, (7, 7), (1, 1), (3, 3), (1, 1), 1),
    "k3x5_s1x2_p1x2_d2x1": (3, 2, 7, 10, (3, 5), (1, 2), (1, 2), (2, 1), 1),
    "k3x2_s3x1_p0x1_g2": (4, 6, 7, 7, (3, 2), (3, 1), (0, 1), (1, 1), 2),
    "k2_s3x2_d2x1_g3": (6, 3, 9, 5, (2, 2), (3, 2), (0, 0), (2, 1), 3),
}
BM = [(1, 1), (1, 3), (3, 1), (3, 3)]


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def explicit_conv_matrix(weight, in_hw, stride, padding, dilation, groups):
    """Dense matrix of the convolution from its definition: y[co, oy, ox] = sum W[co, ci, ky, kx] x[g*Cig+ci, iy, ix]
    with iy = oy*s - p + ky*d (zero outside the image). Returns A of shape (Co*Ho*Wo, Ci*H*W) and (Ho, Wo)."""
    w = weight.detach().cpu().double().numpy()
    Co, Cig, kh, kw = w.shape
    H, W = in_hw
    Ho, Wo = (out_size(n, k, s, p, d) for n, k, s, p, d in zip(in_hw, (kh, kw), stride, padding, dilation, strict=True))
    A = np.zeros((Co, Ho, Wo, Cig * groups, H, W))
    co = np.arange(Co)[:, None]
    ci = (co // (Co // groups)) * Cig + np.arange(Cig)[None, :]
    for ky in range(kh):
        for kx in range(kw):
            for oy in range(Ho):
                iy = oy * stride[0] - padding[0] + ky * dilation[0]
                if not 0 <= iy < H:
                    continue
                for ox in range(Wo):
                    ix = ox * stride[1] - padding[1] + kx * dilation[1]
                    if 0 <= ix < W:
                        A[co, oy, ox, ci, iy, ix] += w[:, :, ky, kx]
    return torch.from_numpy(A.reshape(Co * Ho * Wo, -1)), (Ho, Wo)


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def oracle_epsilon(R, a, z, A, eps):
    """R_j = a_j * sum_k A_kj R_k / stab(z_k) on flattened units. R (B, M, K), a (B, J), z (B, K)."""
    return a[:, None, :] * torch.einsum("kj,bmk->bmj", A, R / stab(z, eps)[:, None, :])


def make_conv_problem(case, B, M, seed, dtype=torch.float64):
    Ci, Co, H, W, k, s, p, d, g = CONV_CASES[case]
    torch.manual_seed(seed)
    a = torch.randn(B, Ci, H, W, dtype=torch.float64)
    weight = torch.randn(Co, Ci // g, *k, dtype=torch.float64) / (Ci // g * k[0] * k[1]) ** 0.5
    bias = 0.1 * torch.randn(Co, dtype=torch.float64)
    A, (Ho, Wo) = explicit_conv_matrix(weight, (H, W), s, p, d, g)
    z = (a.flatten(1) @ A.t()).view(B, Co, Ho, Wo) + bias.view(-1, 1, 1)
    R = torch.randn(B, M, Co, Ho, Wo, dtype=torch.float64)
    return dict(R=R, a=a, z=z, weight=weight, bias=bias, A=A, conv=(s, p, d, g))


@pytest.mark.parametrize("case", CONV_CASES)
def test_explicit_matrix_oracle_matches_conv2d(case):
    """Sanity of the oracle itself: the index-built matrix reproduces F.conv2d."""
    prob = make_conv_problem(case, 2, 1, seed=0)
    s, p, d, g = prob["conv"]
    y = F.conv2d(prob["a"], prob["weight"], prob["bias"], s, p, d, g)
    torch.testing.assert_close(prob["z"], y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("B,M", BM)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_epsilon_matches_matrix_oracle(case, B, M):
    prob = make_conv_problem(case, B, M, seed=1)
    s, p, d, g = prob["conv"]
    got = reference_conv_epsilon(prob["R"], prob["a"], prob["z"], prob["weight"], s, p, d, g, eps=1e-2)
    assert got.shape == (B, M, *prob["a"].shape[1:])
    expected = oracle_epsilon(prob["R"].flatten(2), prob["a"].flatten(1), prob["z"].flatten(1), prob["A"], 1e-2)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)


def test_conv_epsilon_accepts_int_parameters():
    prob = make_conv_problem("k3s2p1g2_outpad", 2, 2, seed=2)
    ref = reference_conv_epsilon(prob["R"], prob["a"], prob["z"], prob["weight"], (2, 2), (1, 1), (1, 1), 2)
    got = reference_conv_epsilon(prob["R"], prob["a"], prob["z"], prob["weight"], 2, 1, 1, 2)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_epsilon_float32_close_to_float64_oracle(case):
    prob = make_conv_problem(case, 3, 2, seed=3)
    s, p, d, g = prob["conv"]
    f32 = {k: prob[k].float() for k in ("R", "a", "z", "weight")}
    got = reference_conv_epsilon(f32["R"], f32["a"], f32["z"], f32["weight"], s, p, d, g, eps=1e-2)
    assert got.dtype == torch.float32
    # oracle on exactly the float32-rounded inputs, so only the op's arithmetic error is measured
    A, _ = explicit_conv_matrix(f32["weight"].double(), prob["a"].shape[-2:], s, p, d, g)
    expected = oracle_epsilon(f32["R"].double().flatten(2), f32["a"].double().flatten(1),
                              f32["z"].double().flatten(1), A, 1e-2)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-4, atol=1e-5 * scale)


def test_conv_epsilon_zero_preactivation_uses_plus_eps():
    prob = make_conv_problem("k3s2p1g2_outpad", 2, 3, seed=4)
    z = prob["z"].clone()
    z[0, 1] = 0.0
    z[1, :, 0, :] = 0.0
    s, p, d, g = prob["conv"]
    got = reference_conv_epsilon(prob["R"], prob["a"], z, prob["weight"], s, p, d, g, eps=0.05)
    expected = oracle_epsilon(prob["R"].flatten(2), prob["a"].flatten(1), z.flatten(1), prob["A"], 0.05)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)
    # with the -eps convention the zeroed units would give the opposite sign: make sure they matter
    wrong = oracle_epsilon(prob["R"].flatten(2), prob["a"].flatten(1), z.flatten(1) - 1e-300, prob["A"], 0.05)
    assert not torch.allclose(got.flatten(2), wrong)


@pytest.mark.parametrize("case", ["k3s1p1", "k3s2p1g2_outpad", "k5s2p2d2", "depthwise_s3p2_outpad2"])
def test_conv_epsilon_conserves_without_bias(case):
    """sum_j R_j = sum_k R_k z_k / stab(z_k): exact conservation as eps -> 0 with no bias (padding adds nothing)."""
    prob = make_conv_problem(case, 2, 3, seed=5)
    s, p, d, g = prob["conv"]
    z = F.conv2d(prob["a"], prob["weight"], None, s, p, d, g)
    got = reference_conv_epsilon(prob["R"], prob["a"], z, prob["weight"], s, p, d, g, eps=1e-9)
    torch.testing.assert_close(got.sum((2, 3, 4)), prob["R"].sum((2, 3, 4)), rtol=1e-6, atol=1e-6)


# small problems for gradcheck: (Ci, Co, H, W, kernel, stride, padding, dilation, groups)
GRAD_CASES = {
    "s2p1g2_outpad": (2, 4, 5, 4, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    "k3x2_s1x2_d2x1": (2, 2, 5, 6, (3, 2), (1, 2), (1, 0), (2, 1), 1),
    "depthwise_s3_outpad": (3, 3, 4, 5, (3, 3), (3, 3), (1, 1), (1, 1), 3),
}


@pytest.mark.parametrize("case", GRAD_CASES)
def test_conv_epsilon_gradcheck(case):
    Ci, Co, H, W, k, s, p, d, g = GRAD_CASES[case]
    torch.manual_seed(6)
    Ho, Wo = (out_size(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in zip((H, W), k, s, p, d, strict=True))
    R = torch.randn(2, 2, Co, Ho, Wo, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, Ci, H, W, dtype=torch.float64, requires_grad=True)
    zz = torch.randn(2, Co, Ho, Wo, dtype=torch.float64)
    z = torch.where(zz >= 0, zz + 0.5, zz - 0.5).requires_grad_()  # away from 0: sign is constant under FD
    weight = torch.randn(Co, Ci // g, *k, dtype=torch.float64, requires_grad=True)

    def fn(R, a, z, weight):
        return reference_conv_epsilon(R, a, z, weight, s, p, d, g, eps=0.1)

    assert torch.autograd.gradcheck(fn, (R, a, z, weight), fast_mode=True)


# ------------------------------------------------------------------------------------------- transposed conv


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_transpose_is_adjoint_of_conv2d(case, N):
    Ci, Co, H, W, k, s, p, d, g = CONV_CASES[case]
    torch.manual_seed(7)
    weight = torch.randn(Co, Ci // g, *k, dtype=torch.float64)
    x = torch.randn(N, Ci, H, W, dtype=torch.float64)
    cx = F.conv2d(x, weight, None, s, p, d, g)
    y = torch.randn_like(cx)
    ty = conv2d_transpose(y, weight, (H, W), s, p, d, g)
    assert ty.shape == x.shape
    lhs, rhs = (cx * y).sum(), (x * ty).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    # stronger: equal to the explicit matrix transpose, per sample
    A, _ = explicit_conv_matrix(weight, (H, W), s, p, d, g)
    torch.testing.assert_close(ty.flatten(1), y.flatten(1) @ A, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 0, 1), (3, 2, 1, 1), (2, 3, 0, 1), (3, 3, 2, 2), (5, 2, 2, 2),
                                     (1, 2, 0, 1), (4, 3, 1, 3)])
def test_output_padding_restores_every_input_size(k, s, p, d):
    for n in range(d * (k - 1) + 1 - 2 * p, 17):
        if n < 1:
            continue
        o = out_size(n, k, s, p, d)
        op = conv_transpose_output_padding((n, n + 1), (o, out_size(n + 1, k, s, p, d)), (k, k), (s, s), (p, p),
                                           (d, d))
        assert all(0 <= v < s for v in op)  # the remainder of a floor division by the stride
        back = F.conv_transpose2d(torch.zeros(1, 1, o, out_size(n + 1, k, s, p, d)), torch.zeros(1, 1, k, k),
                                  None, s, p, op, 1, d)
        assert back.shape[-2:] == (n, n + 1)


@pytest.mark.parametrize("input_size,output_size", [((9, 7), (5, 5)), ((5, 7), (5, 5)), ((7, 7), (4, 5)),
                                                    ((7, 12), (5, 5))])
def test_output_padding_impossible_size_raises(input_size, output_size):
    # kernel 3, stride 1, padding 0: only 7 -> 5 is possible
    with pytest.raises(ValueError):
        conv_transpose_output_padding(input_size, output_size, (3, 3), (1, 1), (0, 0), (1, 1))


def test_output_padding_impossible_size_with_dilation_above_stride_raises():
    # kernel 3, stride 1, dilation 2: 8 -> 4 and 7 -> 3, so (8 -> 3) is impossible (output_padding would be 1)
    assert F.conv2d(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 3), dilation=2).shape[-2:] == (4, 4)
    with pytest.raises(ValueError):
        conv_transpose_output_padding((8, 8), (3, 3), (3, 3), (1, 1), (0, 0), (2, 2))


def test_conv2d_transpose_impossible_size_raises():
    s = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    w = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    # stride 2, padding 1: 4 outputs come from inputs of size 7 or 8, never 10 or 5
    assert conv2d_transpose(s, w, (7, 8), (2, 2), (1, 1)).shape == (1, 3, 7, 8)
    for bad in [(10, 8), (7, 5), (9, 7)]:
        with pytest.raises(ValueError):
            conv2d_transpose(s, w, bad, (2, 2), (1, 1))


# ------------------------------------------------------------------------------------------------- linear


def oracle_linear_epsilon(R, a, z, weight, eps):
    """Explicit loops: R_in[b, m, j] = a[b, j] * sum_k W[k, j] * R[b, m, k] / stab(z[b, k])."""
    B, M, K = R.shape
    Fdim = a.shape[1]
    out = torch.zeros(B, M, Fdim, dtype=torch.float64)
    for b in range(B):
        t = [zk + eps if zk >= 0 else zk - eps for zk in z[b].tolist()]
        for m in range(M):
            for j in range(Fdim):
                out[b, m, j] = a[b, j] * sum(weight[k, j] * R[b, m, k] / t[k] for k in range(K))
    return out


def make_linear_problem(B, M, Fdim, K, seed):
    torch.manual_seed(seed)
    a = torch.randn(B, Fdim, dtype=torch.float64)
    weight = torch.randn(K, Fdim, dtype=torch.float64) / Fdim ** 0.5
    bias = 0.1 * torch.randn(K, dtype=torch.float64)
    z = a @ weight.t() + bias
    R = torch.randn(B, M, K, dtype=torch.float64)
    return R, a, z, weight


@pytest.mark.parametrize("B,M", BM)
@pytest.mark.parametrize("Fdim,K", [(7, 5), (1, 3), (6, 1)])
def test_linear_epsilon_matches_explicit_sum(B, M, Fdim, K):
    R, a, z, weight = make_linear_problem(B, M, Fdim, K, seed=8)
    z[0, 0] = 0.0  # sign(0) = +1
    got = reference_linear_epsilon(R, a, z, weight, eps=1e-2)
    torch.testing.assert_close(got, oracle_linear_epsilon(R, a, z, weight, 1e-2), rtol=1e-10, atol=1e-10)


def test_linear_epsilon_float32_close_to_float64_oracle():
    R, a, z, weight = (t.float() for t in make_linear_problem(3, 3, 11, 6, seed=9))
    got = reference_linear_epsilon(R, a, z, weight, eps=1e-2)
    expected = oracle_linear_epsilon(R.double(), a.double(), z.double(), weight.double(), 1e-2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_linear_epsilon_gradcheck():
    R, a, z, weight = make_linear_problem(2, 3, 5, 4, seed=10)
    z = torch.where(z >= 0, z + 0.5, z - 0.5)
    args = tuple(t.clone().requires_grad_() for t in (R, a, z, weight))
    assert torch.autograd.gradcheck(lambda *t: reference_linear_epsilon(*t, eps=0.1), args)
