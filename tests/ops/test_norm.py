"""LayerNorm / GroupNorm under the epsilon rule with the standard deviation held constant (docs/rules.md).

The oracle builds the normalisation's weight matrix ``W_ji = gamma_j / sigma_g (delta_ij - [g_i = g_j] / N_g)`` by
index arithmetic from the definition of each layout (which elements share a group, which ``gamma`` an element
takes), with ``sigma`` computed from ``x`` directly; it checks that ``W x + beta`` reproduces ``F.layer_norm`` /
``F.group_norm`` and then applies the rule as an explicit sum ``R_x_i = x_i sum_j W_ji R_j / stab(z_j)``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels.backends import dispatch
from isnet_kernels.ops.norm import (
    NormEpsilonFunction,
    NormLayout,
    group_norm_forward,
    layer_norm_forward,
    norm_epsilon,
    reference_norm_epsilon,
    rule_norm_preactivation,
)

NORM_EPS = 1e-5
BACKENDS = [name for name in ("torch", "cpp", "triton") if dispatch.backend_status()[name][0]]

# name: (layout, activation shape without batch)
CASES = {
    "ln_last1_tokens": (NormLayout.layer_norm(1), (5, 7)),
    "ln_last1_channels_last": (NormLayout.layer_norm(1), (3, 4, 6)),
    "ln_last2": (NormLayout.layer_norm(2), (3, 4, 5)),
    "ln_last1_vector": (NormLayout.layer_norm(1), (9,)),
    "gn_3groups_2ch": (NormLayout.group_norm(3), (6, 3, 2)),
    "gn_1group": (NormLayout.group_norm(1), (4, 3, 3)),
    "gn_per_channel": (NormLayout.group_norm(4), (4, 2, 5)),
    "gn_2groups_no_space": (NormLayout.group_norm(2), (6,)),
}
BM = [(1, 1), (2, 3), (1, 3)]


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def affine_shape(layout, S):
    return S[-layout.size:] if layout.kind == "last" else (S[0],)


def make_params(layout, S, dtype=torch.float64, affine=True):
    shape = affine_shape(layout, S)
    if not affine:
        return None, None
    gamma = (0.5 + torch.rand(shape, dtype=dtype)) * torch.where(torch.rand(shape) < 0.3, -1.0, 1.0).to(dtype)
    return gamma, torch.randn(shape, dtype=dtype)


def forward(layout, x, gamma, beta):
    """The normalisation as PyTorch computes it, with its statistics: (y, mean, invstd)."""
    S = x.shape[1:]
    if layout.kind == "last":
        return layer_norm_forward(x, S[-layout.size:], gamma, beta, NORM_EPS)
    return group_norm_forward(x, layout.size, gamma, beta, NORM_EPS)


def functional(layout, x, gamma, beta):
    """The same normalisation through torch.nn.functional only."""
    S = x.shape[1:]
    if layout.kind == "last":
        return F.layer_norm(x, S[-layout.size:], gamma, beta, NORM_EPS)
    return F.group_norm(x, layout.size, gamma, beta, NORM_EPS)


def group_index(layout, S):
    """For each element of one image (flattened), its group id and the flat index of its gamma."""
    n = math.prod(S)
    flat = torch.arange(n)
    if layout.kind == "last":
        inner = math.prod(S[-layout.size:])
        return flat // inner, flat % inner
    spatial = math.prod(S[1:])
    channel = flat // spatial
    return channel // (S[0] // layout.size), channel


def oracle_matrix(layout, x, gamma):
    """Per image b: W[b] (n, n) with rows j (outputs) and columns i (inputs), sigma from x by definition."""
    B, S = x.shape[0], tuple(x.shape[1:])
    n = math.prod(S)
    gid, pid = group_index(layout, S)
    same = (gid[:, None] == gid[None, :]).to(x.dtype)
    N = same.sum(1)  # group size of each element
    g = torch.ones(n, dtype=x.dtype) if gamma is None else gamma.flatten()[pid]
    xs = x.reshape(B, n)
    mean = (xs[:, None, :] * same).sum(-1) / N
    var = (((xs[:, None, :] - mean[:, :, None]) ** 2) * same).sum(-1) / N
    inv = (var + NORM_EPS).rsqrt()  # (B, n): the invstd of each element's group
    eye = torch.eye(n, dtype=x.dtype)
    return (g * inv)[:, :, None] * (eye - same / N[:, None]), inv


def oracle_rule(layout, R, x, gamma, beta, eps):
    B, M = R.shape[:2]
    n = x[0].numel()
    W, _ = oracle_matrix(layout, x, gamma)
    b = torch.zeros(n, dtype=x.dtype) if beta is None else beta.flatten()[group_index(layout, x.shape[1:])[1]]
    z = torch.einsum("bji,bi->bj", W, x.reshape(B, n)) + b
    s = R.reshape(B, M, n) / stab(z, eps)[:, None]
    Rx = x.reshape(B, 1, n) * torch.einsum("bji,bmj->bmi", W, s)
    return Rx.reshape(R.shape), z.reshape(x.shape), W


# -------------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_helpers_equal_functional_and_statistics(name, affine, dtype):
    layout, S = CASES[name]
    x = torch.randn(3, *S, dtype=dtype)
    gamma, beta = make_params(layout, S, dtype, affine)
    y, mean, invstd = forward(layout, x, gamma, beta)
    assert torch.equal(y, functional(layout, x, gamma, beta))
    _, inv = oracle_matrix(layout, x.double(), None)
    gid = group_index(layout, S)[0]
    per_group = torch.zeros(3, int(gid.max()) + 1, dtype=torch.float64).index_copy_(1, gid, inv)
    torch.testing.assert_close(layout.stat_view(invstd, x.shape).reshape(3, -1).double().sort(1).values,
                               per_group.sort(1).values, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    assert layout.stat_view(mean, x.shape).shape == layout.stat_view(invstd, x.shape).shape


@pytest.mark.parametrize("name", CASES)
def test_oracle_matrix_reproduces_the_normalisation(name):
    """W x + beta with sigma frozen at its value is the normalisation's output: the oracle is the right map."""
    layout, S = CASES[name]
    x = torch.randn(2, *S, dtype=torch.float64)
    gamma, beta = make_params(layout, S)
    R = torch.randn(2, 1, *S, dtype=torch.float64)
    _, z, _ = oracle_rule(layout, R, x, gamma, beta, 1e-2)
    torch.testing.assert_close(z, functional(layout, x, gamma, beta), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- rule pre-activation


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("pass_mean", [True, False])
def test_rule_preactivation_value_and_gradient(name, affine, pass_mean):
    layout, S = CASES[name]
    x = torch.randn(3, *S, dtype=torch.float64)
    gamma, beta = make_params(layout, S, affine=affine)
    y, mean, invstd = forward(layout, x, gamma, beta)
    live = {k: (None if v is None else v.clone().requires_grad_())
            for k, v in dict(a=x, gamma=gamma, beta=beta, mean=mean, invstd=invstd).items()}
    z = rule_norm_preactivation(live["a"], live["gamma"], live["beta"], live["mean"] if pass_mean else None,
                                live["invstd"], layout)
    torch.testing.assert_close(z, y, rtol=1e-12, atol=1e-12)

    names = [k for k, v in live.items() if v is not None]
    G = torch.randn_like(z)
    grads = dict(zip(names, torch.autograd.grad(z, [live[k] for k in names], G, allow_unused=True), strict=True))
    for k in ("beta", "mean", "invstd"):
        assert grads.get(k) is None, f"{k} must be detached"
    W, inv = oracle_matrix(layout, x, gamma)
    torch.testing.assert_close(grads["a"], torch.einsum("bji,bj->bi", W, G.reshape(3, -1)).reshape(x.shape),
                               rtol=1e-10, atol=1e-12)
    if gamma is not None:
        W1, _ = oracle_matrix(layout, x, None)  # gamma = 1: xhat = W1 x
        xhat = torch.einsum("bji,bi->bj", W1, x.reshape(3, -1))
        pid = group_index(layout, S)[1]
        expected = torch.zeros(gamma.numel(), dtype=x.dtype).index_add_(0, pid, (G.reshape(3, -1) * xhat).sum(0))
        torch.testing.assert_close(grads["gamma"], expected.view(gamma.shape), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------- reference rule


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("B,M", BM)
@pytest.mark.parametrize("affine", [True, False])
def test_reference_matches_matrix_oracle(name, B, M, affine):
    layout, S = CASES[name]
    x = torch.randn(B, *S, dtype=torch.float64)
    gamma, beta = make_params(layout, S, affine=affine)
    _, mean, invstd = forward(layout, x, gamma, beta)
    z = rule_norm_preactivation(x, gamma, beta, mean, invstd, layout)
    R = torch.randn(B, M, *S, dtype=torch.float64)
    expected, _, _ = oracle_rule(layout, R, x, gamma, beta, 1e-2)
    got = reference_norm_epsilon(R, x, z, gamma, invstd, layout, eps=1e-2)
    assert got.shape == R.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["ln_last2", "gn_3groups_2ch"])
def test_reference_float32_against_float64_oracle(name):
    layout, S = CASES[name]
    x = torch.randn(2, *S)
    gamma, beta = make_params(layout, S, torch.float32)
    _, mean, invstd = forward(layout, x, gamma, beta)
    z = rule_norm_preactivation(x, gamma, beta, mean, invstd, layout)
    R = torch.randn(2, 3, *S)
    got = reference_norm_epsilon(R, x, z, gamma, invstd, layout, eps=1e-2)
    assert got.dtype == torch.float32
    expected, _, _ = oracle_rule(layout, R.double(), x.double(), gamma.double(), beta.double(), 1e-2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("name", CASES)
def test_conservation_and_what_beta_absorbs(name):
    """sum_i R_x_i = sum_j R_j (z_j - beta_j) / stab(z_j) for every map: exactly sum R when beta = 0, eps -> 0."""
    layout, S = CASES[name]
    x = torch.randn(2, *S, dtype=torch.float64)
    gamma, beta = make_params(layout, S)
    R = torch.randn(2, 3, *S, dtype=torch.float64)
    for b, eps in ((None, 1e-12), (beta, 1e-12), (beta, 0.3)):
        _, mean, invstd = forward(layout, x, gamma, b)
        z = rule_norm_preactivation(x, gamma, b, mean, invstd, layout)
        got = reference_norm_epsilon(R, x, z, gamma, invstd, layout, eps=eps).flatten(2).sum(-1)
        shift = 0.0 if b is None else b.flatten()[group_index(layout, S)[1]].view(S)
        expected = (R * ((z - shift) / stab(z, eps)).unsqueeze(1)).flatten(2).sum(-1)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        if b is None:
            torch.testing.assert_close(got, R.flatten(2).sum(-1), rtol=1e-8, atol=1e-8)


def test_reference_gradcheck_and_invstd_detached():
    layout, S = CASES["gn_3groups_2ch"]
    x = torch.randn(2, *S, dtype=torch.float64)
    gamma, beta = make_params(layout, S)
    _, mean, invstd = forward(layout, x, gamma, beta)
    z = stab(rule_norm_preactivation(x, gamma, beta, mean, invstd, layout), 0.5)  # independent input, away from 0
    R = torch.randn(2, 2, *S, dtype=torch.float64)
    invstd = invstd.clone().requires_grad_()
    args = tuple(t.clone().requires_grad_() for t in (R, x, z, gamma))

    def fn(R, a, z, gamma):
        return reference_norm_epsilon(R, a, z, gamma, invstd, layout, eps=0.1)

    assert torch.autograd.gradcheck(fn, args)
    (g_inv,) = torch.autograd.grad(fn(*args).sum(), invstd, allow_unused=True)
    assert g_inv is None


@pytest.mark.parametrize("name", ["ln_last1_tokens", "ln_last2", "gn_3groups_2ch"])
def test_heatmap_gradcheck_through_rule_preactivation(name):
    """The rule as the engine composes it (z from the pre-activation helper) is differentiable in a and gamma.

    ``mean=None``: the mean is recomputed from ``a``, so the function gradcheck perturbs is the one differentiated
    (with the forward's ``mean`` the value is pinned to it and only the gradient is the recomputed mean's)."""
    layout, S = CASES[name]
    x = torch.randn(2, *S, dtype=torch.float64, requires_grad=True)
    gamma, beta = make_params(layout, S)
    gamma.requires_grad_()
    _, _, invstd = forward(layout, x.detach(), gamma.detach(), beta)
    R = torch.randn(2, 3, *S, dtype=torch.float64, requires_grad=True)

    def fn(R, a, g):
        z = rule_norm_preactivation(a, g, beta, None, invstd, layout)
        return reference_norm_epsilon(R, a, z, g, invstd, layout, eps=0.5)

    assert torch.autograd.gradcheck(fn, (R, x, gamma))


# -------------------------------------------------------------------------------------------------- Function


def _function_inputs(name, B, M, affine, seed):
    torch.manual_seed(seed)
    layout, S = CASES[name]
    x = torch.randn(B, *S, dtype=torch.float64)
    gamma, beta = make_params(layout, S, affine=affine)
    _, mean, invstd = forward(layout, x, gamma, beta)
    z = rule_norm_preactivation(x, gamma, beta, mean, invstd, layout)
    z.view(-1)[0] = 0.0  # an exact zero: stab(0) = +eps
    R = torch.randn(B, M, *S, dtype=torch.float64)
    return layout, R, x, z, gamma, invstd


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_function_matches_reference_values_and_gradients(backend, name, M, affine, monkeypatch):
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")
    layout, R, x, z, gamma, invstd = _function_inputs(name, 2, M, affine, seed=1)
    prims = dispatch.primitives(backend)
    inputs = [t.clone().requires_grad_() for t in (R, x, z) + (() if gamma is None else (gamma,))]

    def split(ts):
        return ts[0], ts[1], ts[2], (ts[3] if gamma is not None else None)

    out = norm_epsilon(*split(inputs), invstd, layout, 0.1, prims)
    expected = reference_norm_epsilon(*split(inputs), invstd, layout, 0.1)
    assert out.grad_fn is not None and "NormEpsilonFunction" in type(out.grad_fn).__name__
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    G = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, G)
    ref_grads = torch.autograd.grad(expected, inputs, G)
    for label, g, r in zip(("R", "a", "z", "gamma"), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=lambda m, n=label: f"gradient of {n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["ln_last1_tokens", "ln_last2", "gn_3groups_2ch"])
def test_function_float32(backend, name, monkeypatch):
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")
    layout, R, x, z, gamma, invstd = _function_inputs(name, 2, 3, True, seed=4)
    R, x, z, gamma, invstd = (t.float() for t in (R, x, z, gamma, invstd))
    g = gamma.clone().requires_grad_()
    out = norm_epsilon(R, x, z, g, invstd, layout, 0.1, dispatch.primitives(backend))
    expected = reference_norm_epsilon(R, x, z, g, invstd, layout, 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    G = torch.randn_like(out)
    (dg,), (ref,) = torch.autograd.grad(out, g, G), torch.autograd.grad(expected, g, G)
    torch.testing.assert_close(dg, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("name", ["ln_last2", "gn_3groups_2ch", "gn_per_channel"])
@pytest.mark.parametrize("affine", [True, False])
def test_function_gradcheck(name, affine):
    layout, R, x, z, gamma, invstd = _function_inputs(name, 2, 2, affine, seed=2)
    z = stab(z, 0.5)
    prims = dispatch.primitives("torch")
    args = tuple(t.clone().requires_grad_() for t in (R, x, z) + (() if gamma is None else (gamma,)))

    def fn(R, a, z, g=None):
        return NormEpsilonFunction.apply(R, a, z, g, invstd, layout, 0.1, prims)

    assert torch.autograd.gradcheck(fn, args)


def test_function_gamma_gradient_alone():
    layout, R, x, z, gamma, invstd = _function_inputs("gn_3groups_2ch", 2, 3, True, seed=3)
    g = gamma.clone().requires_grad_()
    out = norm_epsilon(R, x, z, g, invstd, layout, 0.1, dispatch.primitives("torch"))
    (dg,) = torch.autograd.grad(out.sum(), g)
    (ref,) = torch.autograd.grad(reference_norm_epsilon(R, x, z, g, invstd, layout, 0.1).sum(), g)
    torch.testing.assert_close(dg, ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="multiple"):
        NormLayout.group_norm(4).grouped_shape((2, 6, 3, 3))
    with pytest.raises(ValueError, match="affine parameter"):
        NormLayout.layer_norm(1).affine_view(torch.ones(5), (2, 3, 4))
    with pytest.raises(ValueError, match="statistics"):
        NormLayout.group_norm(2).stat_view(torch.ones(2, 3), (2, 4, 3, 3))
    with pytest.raises(ValueError, match="at least 3 axes"):
        NormLayout.layer_norm(2).grouped_shape((2, 5))
    with pytest.raises(ValueError, match="kind"):
        NormLayout("rows")
    with pytest.raises(ValueError, match="positive"):
        NormLayout.group_norm(0)
