"""z+ rule (dual ISNet) through Conv2d / Linear against an explicit matrix oracle.

Oracle: the convolution's dense matrix ``A`` from one-hot basis inputs, ``A+ = max(A, 0)`` entrywise (each entry
of a convolution matrix is a single kernel tap, so this is the matrix of the convolution with ``W+``), then
``z+_k = sum_j A+_kj a_j + b+_k`` and ``R_j = a_j * sum_k A+_kj R_k / stab(z+_k)``.
"""

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels.ops import reference_conv_zplus, reference_linear_zplus

# (Ci, Co, H, W, kernel, stride, padding, dilation, groups)
CASES = {
    "k3s1p1": (3, 4, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "k3s2p1g2_outpad": (2, 4, 8, 7, (3, 3), (2, 2), (1, 1), (1, 1), 2),
    "depthwise_s3p2": (4, 4, 8, 10, (3, 3), (3, 3), (2, 2), (1, 1), 4),
    "k1s2": (3, 5, 6, 7, (1, 1), (2, 2), (0, 0), (1, 1), 1),
    "k5s2p2d2": (2, 3, 11, 10, (5, 5), (2, 2), (2, 2), (2, 2), 1),
    "k3x5_s1x2_d2x1": (3, 2, 7, 10, (3, 5), (1, 2), (1, 2), (2, 1), 1),
}


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def conv_matrix(weight, in_shape, s, p, d, g):
    """(K, J) matrix of x -> conv2d(x, weight) from one-hot inputs: column j is the response to e_j."""
    n = in_shape[0] * in_shape[1] * in_shape[2]
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    return F.conv2d(basis, weight.detach().double(), None, s, p, d, g).flatten(1).t()


def oracle_zplus(R, a, A, bias_per_unit, eps):
    """R (B, M, K), a (B, J), A (K, J), bias_per_unit (K,) or None."""
    Ap = A.clamp(min=0)
    zp = a @ Ap.t()
    if bias_per_unit is not None:
        zp = zp + bias_per_unit.clamp(min=0)
    return a[:, None, :] * torch.einsum("kj,bmk->bmj", Ap, R / stab(zp, eps)[:, None, :])


def make_problem(case, B, M, seed, with_bias):
    Ci, Co, H, W, k, s, p, d, g = CASES[case]
    torch.manual_seed(seed)
    a = torch.rand(B, Ci, H, W, dtype=torch.float64)  # after a ReLU: non-negative
    weight = torch.randn(Co, Ci // g, *k, dtype=torch.float64)
    bias = torch.randn(Co, dtype=torch.float64) if with_bias else None
    A = conv_matrix(weight, (Ci, H, W), s, p, d, g)
    Ho, Wo = F.conv2d(a[:1], weight, None, s, p, d, g).shape[-2:]
    R = torch.randn(B, M, Co, Ho, Wo, dtype=torch.float64)
    bias_unit = None if bias is None else bias.repeat_interleave(Ho * Wo)
    return R, a, weight, bias, A, bias_unit, (s, p, d, g)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("B,M", [(1, 1), (3, 3), (1, 3)])
@pytest.mark.parametrize("case", CASES)
def test_conv_zplus_matches_matrix_oracle(case, B, M, with_bias):
    R, a, weight, bias, A, bias_unit, (s, p, d, g) = make_problem(case, B, M, 0, with_bias)
    got = reference_conv_zplus(R, a, weight, bias, s, p, d, g, eps=1e-2)
    assert got.shape == (B, M, *a.shape[1:])
    expected = oracle_zplus(R.flatten(2), a.flatten(1), A, bias_unit, 1e-2)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)


def test_conv_zplus_ignores_negative_weights():
    R, a, weight, bias, A, bias_unit, (s, p, d, g) = make_problem("k3s1p1", 2, 2, 1, True)
    got = reference_conv_zplus(R, a, weight, bias, s, p, d, g)
    torch.testing.assert_close(got, reference_conv_zplus(R, a, weight.clamp(min=0), bias.clamp(min=0), s, p, d, g))
    changed = reference_conv_zplus(R, a, weight + weight.clamp(min=0), bias, s, p, d, g)
    assert not torch.allclose(got, changed)


@pytest.mark.parametrize("case", ["k3s2p1g2_outpad", "k5s2p2d2", "k3x5_s1x2_d2x1"])
def test_conv_zplus_float32_close_to_float64_oracle(case):
    R, a, weight, bias, A, bias_unit, (s, p, d, g) = make_problem(case, 3, 2, 2, True)
    R, a, weight, bias = R.float(), a.float(), weight.float(), bias.float()
    got = reference_conv_zplus(R, a, weight, bias, s, p, d, g, eps=1e-2)
    A = conv_matrix(weight, a.shape[1:], s, p, d, g)
    expected = oracle_zplus(R.double().flatten(2), a.double().flatten(1), A,
                            bias.double().repeat_interleave(R.shape[-1] * R.shape[-2]), 1e-2)
    torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("case", ["k3s2p1g2_outpad", "depthwise_s3p2"])
def test_conv_zplus_conserves_without_bias(case):
    R, a, weight, _, _, _, (s, p, d, g) = make_problem(case, 2, 3, 3, False)
    # every output unit needs z+ > 0 (a window that sees only padding and negative taps carries no relevance)
    weight = weight.abs() + 0.1
    got = reference_conv_zplus(R, a, weight, None, s, p, d, g, eps=1e-9)
    torch.testing.assert_close(got.sum((2, 3, 4)), R.sum((2, 3, 4)), rtol=1e-6, atol=1e-6)


def away_from_zero(t, margin=0.1):
    """No entry within ``margin`` of 0, so the kinks of clamp / stab stay put under finite differences."""
    return torch.where(t >= 0, t + margin, t - margin)


def test_conv_zplus_gradcheck():
    """Differentiable in R, a, W and the bias (used as given: callers detach it, or pass a folded b')."""
    torch.manual_seed(4)
    s, p, d, g = (2, 1), (1, 0), (1, 2), 2
    a = (0.2 + torch.rand(2, 2, 5, 6, dtype=torch.float64)).requires_grad_()
    weight = away_from_zero(torch.randn(4, 1, 3, 2, dtype=torch.float64)).requires_grad_()
    bias = away_from_zero(torch.randn(4, dtype=torch.float64)).requires_grad_()
    Ho, Wo = F.conv2d(a, weight, None, s, p, d, g).shape[-2:]
    R = torch.randn(2, 2, 4, Ho, Wo, dtype=torch.float64, requires_grad=True)

    def fn(R, a, weight, bias):
        return reference_conv_zplus(R, a, weight, bias, s, p, d, g, eps=0.1)

    assert torch.autograd.gradcheck(fn, (R, a, weight, bias), fast_mode=True)


# ------------------------------------------------------------------------------------------------- linear


def oracle_linear_zplus(R, a, weight, bias, eps):
    B, M, K = R.shape
    Fdim = a.shape[1]
    out = torch.zeros(B, M, Fdim, dtype=torch.float64)
    wp = [[max(float(weight[k, j]), 0.0) for j in range(Fdim)] for k in range(K)]
    for b in range(B):
        zp = [sum(wp[k][j] * float(a[b, j]) for j in range(Fdim)) + (0.0 if bias is None else max(float(bias[k]), 0.0))
              for k in range(K)]
        t = [v + eps if v >= 0 else v - eps for v in zp]
        for m in range(M):
            for j in range(Fdim):
                out[b, m, j] = float(a[b, j]) * sum(wp[k][j] * float(R[b, m, k]) / t[k] for k in range(K))
    return out


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("B,M,Fdim,K", [(1, 1, 6, 4), (3, 3, 5, 7), (2, 1, 1, 3)])
def test_linear_zplus_matches_explicit_sum(B, M, Fdim, K, with_bias):
    torch.manual_seed(5)
    a = torch.rand(B, Fdim, dtype=torch.float64)
    weight = torch.randn(K, Fdim, dtype=torch.float64)
    bias = torch.randn(K, dtype=torch.float64) if with_bias else None
    R = torch.randn(B, M, K, dtype=torch.float64)
    got = reference_linear_zplus(R, a, weight, bias, eps=1e-2)
    torch.testing.assert_close(got, oracle_linear_zplus(R, a, weight, bias, 1e-2), rtol=1e-10, atol=1e-10)
    got32 = reference_linear_zplus(R.float(), a.float(), weight.float(), None if bias is None else bias.float())
    expected32 = oracle_linear_zplus(R.float().double(), a.float().double(), weight.float().double(),
                                     None if bias is None else bias.float().double(), 1e-2)
    torch.testing.assert_close(got32.double(), expected32, rtol=1e-4, atol=1e-5 * expected32.abs().max().item())


def test_linear_zplus_gradcheck():
    torch.manual_seed(6)
    a = (0.2 + torch.rand(2, 5, dtype=torch.float64)).requires_grad_()
    weight = away_from_zero(torch.randn(3, 5, dtype=torch.float64)).requires_grad_()
    bias = away_from_zero(torch.randn(3, dtype=torch.float64)).requires_grad_()
    R = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda R, a, w, b: reference_linear_zplus(R, a, w, b, eps=0.1),
                                    (R, a, weight, bias))
