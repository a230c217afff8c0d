"""BatchNorm under the rules (docs/rules.md): folding into the layer before it, the rule pre-activation with its
restricted gradient, the relevance scaled in place of the weight folded, and the epsilon and z+ rules through a
standalone BatchNorm (a diagonal linear layer)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from isnet_kernels.ops import (
    fold_batchnorm,
    reference_batchnorm_epsilon,
    reference_batchnorm_zplus,
    reference_conv_epsilon,
    reference_linear_epsilon,
    rule_preactivation,
    scale_relevance,
)

BN_EPS = 1e-5


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def make_bn(C, seed, affine=True):
    """Random running statistics and affine parameters: (gamma, beta, running_mean, running_var)."""
    torch.manual_seed(seed)
    gamma = (0.5 + torch.rand(C, dtype=torch.float64)) * torch.where(torch.rand(C) < 0.3, -1.0, 1.0).double()
    beta = torch.randn(C, dtype=torch.float64)
    mean = torch.randn(C, dtype=torch.float64)
    var = 0.2 + torch.rand(C, dtype=torch.float64)
    return (gamma if affine else None), (beta if affine else None), mean, var


def bn_eval(y, gamma, beta, mean, var):
    return F.batch_norm(y, mean, var, gamma, beta, training=False, eps=BN_EPS)


# ---------------------------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("conv", [((1, 1), (0, 0), 1), ((2, 2), (1, 1), 2), ((3, 1), (2, 0), 1)])
def test_fold_conv_matches_conv_then_bn_eval(conv, with_bias, affine):
    stride, padding, groups = conv
    gamma, beta, mean, var = make_bn(4, seed=0, affine=affine)
    weight = torch.randn(4, 4 // groups, 3, 3, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64) if with_bias else None
    x = torch.randn(3, 4, 7, 9, dtype=torch.float64)
    expected = bn_eval(F.conv2d(x, weight, bias, stride, padding, 1, groups), gamma, beta, mean, var)
    w_f, b_f = fold_batchnorm(weight, bias, gamma, beta, mean, (var + BN_EPS).rsqrt())
    assert w_f.shape == weight.shape and b_f.shape == (4,)
    torch.testing.assert_close(F.conv2d(x, w_f, b_f, stride, padding, 1, groups), expected, rtol=1e-10, atol=1e-10)


def test_fold_conv_train_mode_uses_batch_statistics():
    gamma, beta, _, _ = make_bn(3, seed=1)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    x = torch.randn(4, 2, 6, 5, dtype=torch.float64)
    y = F.conv2d(x, weight, bias, padding=1)
    running_mean, running_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    expected = F.batch_norm(y, running_mean, running_var, gamma, beta, training=True, eps=BN_EPS)
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    w_f, b_f = fold_batchnorm(weight, bias, gamma, beta, mean, (var + BN_EPS).rsqrt())
    torch.testing.assert_close(F.conv2d(x, w_f, b_f, padding=1), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_linear_matches_linear_then_bn1d(with_bias):
    gamma, beta, mean, var = make_bn(5, seed=2)
    weight = torch.randn(5, 7, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64) if with_bias else None
    x = torch.randn(3, 7, dtype=torch.float64)
    w_f, b_f = fold_batchnorm(weight, bias, gamma, beta, mean, (var + BN_EPS).rsqrt())
    torch.testing.assert_close(F.linear(x, w_f, b_f), bn_eval(F.linear(x, weight, bias), gamma, beta, mean, var),
                               rtol=1e-10, atol=1e-10)


def test_fold_gradients_only_reach_weight_and_gamma():
    gamma, beta, mean, var = make_bn(3, seed=3)
    invstd = (var + BN_EPS).rsqrt()
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (weight, bias, gamma, beta, mean, invstd)]
    w_f, b_f = fold_batchnorm(*leaves)
    Gw, Gb = torch.randn_like(w_f), torch.randn_like(b_f)
    grads = torch.autograd.grad((w_f * Gw).sum() + (b_f * Gb).sum(), leaves, allow_unused=True)
    g_weight, g_bias, g_gamma, g_beta, g_mean, g_invstd = grads
    assert g_bias is None and g_beta is None and g_mean is None and g_invstd is None
    scale = (gamma * invstd).view(-1, 1, 1, 1)
    torch.testing.assert_close(g_weight, Gw * scale, rtol=1e-12, atol=1e-12)
    expected_gamma = (Gw * weight).sum((1, 2, 3)) * invstd + Gb * (bias - mean) * invstd
    torch.testing.assert_close(g_gamma, expected_gamma, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- rule pre-activation


@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (3, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_rule_preactivation_value_and_gradient(shape, with_bias, affine):
    C = shape[1]
    gamma, beta, mean, var = make_bn(C, seed=4, affine=affine)
    invstd = (var + BN_EPS).rsqrt()
    bias = torch.randn(C, dtype=torch.float64) if with_bias else None
    x0 = torch.randn(*shape, dtype=torch.float64)
    pre = x0 if bias is None else x0 + bias.view(-1, *([1] * (len(shape) - 2)))
    expected = bn_eval(pre, gamma, beta, mean, var)

    live = {k: (None if v is None else v.clone().requires_grad_())
            for k, v in dict(x0=x0, bias=bias, gamma=gamma, beta=beta, mean=mean, invstd=invstd).items()}
    z = rule_preactivation(live["x0"], live["bias"], live["gamma"], live["beta"], live["mean"], live["invstd"])
    torch.testing.assert_close(z, expected, rtol=1e-12, atol=1e-12)

    names = [k for k, v in live.items() if v is not None]
    G = torch.randn_like(z)
    grads = dict(zip(names, torch.autograd.grad(z, [live[k] for k in names], G, allow_unused=True), strict=True))
    for k in ("bias", "beta", "mean", "invstd"):
        assert grads.get(k) is None, f"{k} must be detached"
    view = (-1, *([1] * (len(shape) - 2)))
    scale = invstd if gamma is None else gamma * invstd
    torch.testing.assert_close(grads["x0"], G * scale.view(view), rtol=1e-12, atol=1e-12)
    if gamma is not None:
        xhat = (pre - mean.view(view)) * invstd.view(view)
        dims = [d for d in range(len(shape)) if d != 1]
        torch.testing.assert_close(grads["gamma"], (G * xhat).sum(dims), rtol=1e-10, atol=1e-10)


def test_rule_preactivation_train_mode_matches_batchnorm_output():
    gamma, beta, _, _ = make_bn(3, seed=5)
    x0 = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    y = x0 + bias.view(-1, 1, 1)
    expected = F.batch_norm(y, None, None, gamma, beta, training=True, eps=BN_EPS)
    mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    z = rule_preactivation(x0, bias, gamma, beta, mean, (var + BN_EPS).rsqrt())
    torch.testing.assert_close(z, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_bias", [True, False])
def test_rule_preactivation_without_batchnorm(with_bias):
    torch.manual_seed(6)
    x0 = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    z = rule_preactivation(x0, bias)
    expected = x0 if bias is None else x0 + bias.view(-1, 1, 1)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    G = torch.randn_like(z)
    inputs = [x0] if bias is None else [x0, bias]
    grads = torch.autograd.grad(z, inputs, G, allow_unused=True)
    torch.testing.assert_close(grads[0], G, rtol=0, atol=0)
    if with_bias:
        assert grads[1] is None


def test_rule_preactivation_gradcheck():
    gamma, beta, mean, var = make_bn(3, seed=7)
    invstd = (var + BN_EPS).rsqrt()
    bias = torch.randn(3, dtype=torch.float64)
    x0 = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    g = gamma.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x0, g: rule_preactivation(x0, bias, g, beta, mean, invstd), (x0, g))


# -------------------------------------------------------------------------------------- standalone BN epsilon


def oracle_bn_epsilon(R, a, gamma, beta, mean, invstd, eps):
    """The BN as an explicit (diagonal) matrix D from its Jacobian, z = D a + const, then
    R_j = a_j sum_k D_kj R_k / stab(z_k)."""
    B, M = R.shape[:2]
    view = (-1, *([1] * (a.dim() - 2)))
    g = torch.ones_like(invstd) if gamma is None else gamma
    b = torch.zeros_like(invstd) if beta is None else beta

    def bn(t):
        return (t - mean.view(view)) * (g * invstd).view(view) + b.view(view)

    D = jacobian(bn, a[:1]).reshape(a[0].numel(), a[0].numel())
    assert torch.count_nonzero(D - torch.diag(torch.diagonal(D))) == 0  # diagonal (docs/rules.md#standalone-batchnorm)
    z = bn(a).reshape(B, -1)
    s = R.reshape(B, M, -1) / stab(z, eps)[:, None, :]
    out = a.reshape(B, 1, -1) * torch.einsum("kj,bmk->bmj", D, s)
    return out.view(B, M, *a.shape[1:]), bn(a)


@pytest.mark.parametrize("B,M", [(1, 1), (3, 3), (1, 3)])
@pytest.mark.parametrize("shape", [(4, 5, 3), (4,)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_epsilon_matches_diagonal_oracle(shape, affine, B, M):
    gamma, beta, mean, var = make_bn(shape[0], seed=8, affine=affine)
    invstd = (var + BN_EPS).rsqrt()
    a = torch.randn(B, *shape, dtype=torch.float64)
    R = torch.randn(B, M, *shape, dtype=torch.float64)
    z = rule_preactivation(a, None, gamma, beta, mean, invstd)
    expected, z_oracle = oracle_bn_epsilon(R, a, gamma, beta, mean, invstd, 1e-2)
    torch.testing.assert_close(z, z_oracle, rtol=1e-12, atol=1e-12)
    got = reference_batchnorm_epsilon(R, a, z, gamma, invstd, eps=1e-2)
    assert got.shape == R.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_batchnorm_epsilon_zero_preactivation_and_float32():
    gamma, beta, mean, var = make_bn(3, seed=9)
    invstd = (var + BN_EPS).rsqrt()
    a = torch.randn(3, 3, 4, 5, dtype=torch.float64)
    R = torch.randn(3, 2, 3, 4, 5, dtype=torch.float64)
    z = rule_preactivation(a, None, gamma, beta, mean, invstd)
    z[1, 2, 1] = 0.0  # exact zeros: stab(0) = +eps
    got = reference_batchnorm_epsilon(R, a, z, gamma, invstd, eps=1e-2)
    view = (-1, 1, 1)
    expected = (a * (gamma * invstd).view(view)).unsqueeze(1) * R / stab(z, 1e-2).unsqueeze(1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    got32 = reference_batchnorm_epsilon(R.float(), a.float(), z.float(), gamma.float(), invstd.float())
    assert got32.dtype == torch.float32
    ex32 = (a.float().double() * (gamma.float().double() * invstd.float().double()).view(view)).unsqueeze(1) \
        * R.float().double() / stab(z.float().double(), 1e-2).unsqueeze(1)
    torch.testing.assert_close(got32.double(), ex32, rtol=1e-5, atol=1e-6 * ex32.abs().max().item())


def test_batchnorm_epsilon_gradcheck_and_invstd_detached():
    gamma, beta, mean, var = make_bn(3, seed=10)
    invstd = (var + BN_EPS).rsqrt().requires_grad_()
    a = torch.randn(2, 3, 3, 2, dtype=torch.float64)
    z = rule_preactivation(a, None, gamma, beta, mean, invstd.detach())
    z = torch.where(z >= 0, z + 0.5, z - 0.5)  # independent input, away from 0
    R = torch.randn(2, 2, 3, 3, 2, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (R, a, z, gamma))

    def fn(R, a, z, gamma):
        return reference_batchnorm_epsilon(R, a, z, gamma, invstd, eps=0.1)

    assert torch.autograd.gradcheck(fn, args)
    (g_inv,) = torch.autograd.grad(fn(*args).sum(), invstd, allow_unused=True)
    assert g_inv is None


# ------------------------------------------------------------------------------------- relevance scaled, not W


@pytest.mark.parametrize("conv", [True, False])
def test_scale_relevance_equals_the_folded_weight(conv):
    """``W'^T (R / t) = W^T (R gamma / sigma / t)``: the epsilon rule through the folded weight equals the rule
    through the layer's own weight with the relevance scaled, in value and in the gradient of every input."""
    gamma, beta, mean, var = make_bn(4, seed=11)
    invstd = (var + BN_EPS).rsqrt()
    torch.manual_seed(11)
    if conv:
        a, W = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
        R = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64)
        z = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    else:
        a, W = torch.randn(2, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
        R, z = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    a, W, R, g = (t.requires_grad_() for t in (a, W, R, gamma.clone()))

    def rule(R, weight):
        return reference_conv_epsilon(R, a, z, weight) if conv else reference_linear_epsilon(R, a, z, weight)

    folded, _ = fold_batchnorm(W, None, g, beta, mean, invstd)
    expected = rule(R, folded)
    got = rule(scale_relevance(R, g, invstd), W)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    G = torch.randn_like(got)
    for x, y in zip(torch.autograd.grad(got, (a, W, R, g), G), torch.autograd.grad(expected, (a, W, R, g), G)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ standalone z+


@pytest.mark.parametrize("shape", [(4, 5, 3), (4,)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_zplus_matches_positive_diagonal_oracle(shape, affine):
    """``R_in = a w+ R / stab(w+ a + b+)`` with ``w+ = max(gamma / sigma, 0)``, ``b+ = max(beta - mu gamma / sigma,
    0)``, written channel by channel."""
    gamma, beta, mean, var = make_bn(shape[0], seed=12, affine=affine)
    invstd = (var + BN_EPS).rsqrt()
    a = torch.rand(2, *shape, dtype=torch.float64)
    R = torch.randn(2, 3, *shape, dtype=torch.float64)
    got = reference_batchnorm_zplus(R, a, gamma, beta, mean, invstd, eps=1e-2)
    expected = torch.empty_like(R)
    for c in range(shape[0]):
        scale = invstd[c] if gamma is None else gamma[c] * invstd[c]
        shift = -mean[c] * scale + (0.0 if beta is None else beta[c])
        w_pos, b_pos = max(float(scale), 0.0), max(float(shift), 0.0)
        z = w_pos * a[:, c] + b_pos
        expected[:, :, c] = (a[:, c] * w_pos).unsqueeze(1) * R[:, :, c] / stab(z, 1e-2).unsqueeze(1)
    assert got.shape == R.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("live", [False, True])
def test_batchnorm_zplus_gradients(live):
    """``gamma`` keeps its gradient, the statistics only with ``live_stats``, ``beta`` never (the shift is
    detached)."""
    gamma, beta, mean, var = make_bn(3, seed=13)
    g, b, m, inv = (t.clone().requires_grad_() for t in (gamma.abs(), beta, mean, (var + BN_EPS).rsqrt()))
    a = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
    R = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = reference_batchnorm_zplus(R, a, g, b, m, inv, eps=0.1, live_stats=live)
    grads = torch.autograd.grad(out.sum(), (R, a, g, b, m, inv), allow_unused=True)
    assert all(x is not None for x in grads[:3])
    assert grads[3] is None and grads[4] is None
    assert (grads[5] is not None) == live
