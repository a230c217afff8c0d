"""AttnLRP's softmax and matrix-product rules, CP-LRP, and scaled dot-product attention (docs/rules.md).

Oracles: the softmax rule as ``x * J^T (R / s)`` with ``J`` the softmax's Jacobian from
``torch.autograd.functional.jacobian``; the products as explicit three-index einsums of the rule's definition
(``R_A_ij = sum_k A_ij B_jk R_ik / (2 stab(y_ik))``), one map at a time; attention as these oracles chained.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from isnet_kernels.ops.attention import (
    attention_bias,
    reference_matmul_cp,
    reference_matmul_uniform,
    reference_sdpa_relevance,
    reference_softmax,
    sdpa_forward,
)

DTYPES = [torch.float64, torch.float32]
BM = [(1, 1), (2, 3)]


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def tol(dtype, ref=None):
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12)
    return dict(rtol=1e-4, atol=1e-5 * (1.0 if ref is None else max(ref.abs().max().item(), 1.0)))


# ---------------------------------------------------------------------------------------------------- softmax


def softmax_oracle(R, x, dim):
    """R_x_i = x_i sum_j J_ji R_j / s_j per image and map, J[j, i] = d s_j / d x_i from autograd's Jacobian."""
    B, M = R.shape[:2]
    out = torch.empty_like(R)
    for b in range(B):
        xb = x[b]
        J = jacobian(lambda t: torch.softmax(t, dim - 1 if dim > 0 else dim), xb, create_graph=True)
        J = J.reshape(xb.numel(), xb.numel())
        s = torch.softmax(xb, dim - 1 if dim > 0 else dim).reshape(-1)
        for m in range(M):
            out[b, m] = (xb.reshape(-1) * (J.T @ (R[b, m].reshape(-1) / s))).view(xb.shape)
    return out


SOFTMAX_CASES = {"last": ((4, 5), -1), "middle": ((3, 4, 5), 2), "first_feature": ((6, 3), 1), "vector": ((7,), 1)}


@pytest.mark.parametrize("name", SOFTMAX_CASES)
@pytest.mark.parametrize("B,M", BM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_matches_jacobian_oracle(name, B, M, dtype):
    shape, dim = SOFTMAX_CASES[name]
    x = 2 * torch.randn(B, *shape, dtype=dtype)
    s = torch.softmax(x, dim)
    R = torch.randn(B, M, *shape, dtype=dtype)
    got = reference_softmax(R, x, s, dim)
    assert got.shape == R.shape and got.dtype == dtype
    expected = softmax_oracle(R.double(), x.double(), dim)
    torch.testing.assert_close(got.double(), expected, **tol(dtype, expected))


def test_softmax_what_it_conserves():
    """Along the softmax axis: sum R_x = sum_i R_i (x_i - sum_j s_j x_j); invariant to a shift of x; zero for R
    proportional to s; and in general not the incoming sum (not conservative)."""
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    s = torch.softmax(x, -1)
    R = torch.randn(3, 2, 4, 6, dtype=torch.float64)
    total = reference_softmax(R, x, s, -1).sum(-1)
    xbar = (s * x).sum(-1, keepdim=True)
    torch.testing.assert_close(total, (R * (x - xbar).unsqueeze(1)).sum(-1), rtol=1e-12, atol=1e-12)
    shifted = reference_softmax(R, x + 5.0, torch.softmax(x + 5.0, -1), -1).sum(-1)
    torch.testing.assert_close(shifted, total, rtol=1e-10, atol=1e-10)
    proportional = reference_softmax(3.0 * s.unsqueeze(1).expand_as(R), x, s, -1)
    torch.testing.assert_close(proportional, torch.zeros_like(R), rtol=0, atol=1e-14)
    assert (total - R.sum(-1)).abs().max() > 1e-2


def test_softmax_masked_entries_get_nothing_and_stay_finite():
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    x[:, :, 1] = float("-inf")
    x[0, 2, 4] = float("-inf")
    x.requires_grad_()
    s = torch.softmax(x, -1)
    R = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    R = R.masked_fill(~torch.isfinite(x.detach()).unsqueeze(1), 0.0).requires_grad_()  # as R_p is where p = 0
    got = reference_softmax(R, x, s, -1)
    assert torch.isfinite(got).all()
    assert (got[:, :, :, 1] == 0).all() and (got[0, :, 2, 4] == 0).all()
    keep = torch.isfinite(x.detach())
    cols = [0, 2, 3]  # the finite entries of row (0, 2): the rule there is the softmax over them alone
    expected = softmax_oracle(R[:1, :, 2:3, cols].detach(), x[:1, 2:3, cols].detach(), -1)
    torch.testing.assert_close(got[:1, :, 2:3, cols], expected, rtol=1e-10, atol=1e-12)
    gR, gx = torch.autograd.grad((got * torch.randn_like(got)).sum(), [R, x])
    assert torch.isfinite(gR).all() and torch.isfinite(gx[keep]).all() and (gx[~keep] == 0).all()


def test_softmax_gradcheck_and_bad_dim():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    s = torch.softmax(x.detach(), 1).requires_grad_()  # independent input
    R = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda R, x, s: reference_softmax(R, x, s, 1), (R, x, s))
    assert torch.autograd.gradcheck(lambda R, x: reference_softmax(R, x, torch.softmax(x, -1), -1), (R, x))
    with pytest.raises(ValueError, match="batch axis"):
        reference_softmax(R, x, s, 0)
    with pytest.raises(ValueError, match="out of range"):
        reference_softmax(R, x, s, 3)


# ----------------------------------------------------------------------------------------------- matmul rules

# (A shape, B shape) without the batch axis
MATMUL_CASES = {
    "plain": ((4, 3), (3, 5)),
    "heads": ((2, 5, 3), (2, 3, 4)),
    "broadcast_heads": ((3, 4, 2), (1, 2, 5)),
    "square_scores": ((2, 6, 6), (2, 6, 3)),
}


def uniform_oracle(R, A, B, y, eps):
    """R_A_ij = sum_k A_ij B_jk R_ik / (2 stab(y_ik)), R_B_jk = sum_i (same), one map at a time, leading axes
    expanded explicitly and summed back."""
    lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    Ae, Be = A.expand(*lead, *A.shape[-2:]), B.expand(*lead, *B.shape[-2:])
    RA, RB = [], []
    for m in range(R.shape[1]):
        T = R[:, m] / (2 * stab(y, eps))
        RA.append(torch.einsum("...ij,...jk,...ik->...ij", Ae, Be, T).sum_to_size(A.shape))
        RB.append(torch.einsum("...ij,...jk,...ik->...jk", Ae, Be, T).sum_to_size(B.shape))
    return torch.stack(RA, 1), torch.stack(RB, 1)


def make_matmul(name, Bn, M, dtype):
    sa, sb = MATMUL_CASES[name]
    A, B = torch.randn(Bn, *sa, dtype=dtype), torch.randn(Bn, *sb, dtype=dtype)
    y = A @ B
    return A, B, y, torch.randn(Bn, M, *y.shape[1:], dtype=dtype)


@pytest.mark.parametrize("name", MATMUL_CASES)
@pytest.mark.parametrize("Bn,M", BM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_uniform_matches_einsum_oracle(name, Bn, M, dtype):
    A, B, y, R = make_matmul(name, Bn, M, dtype)
    RA, RB = reference_matmul_uniform(R, A, B, y, eps=1e-2)
    assert RA.shape == (Bn, M, *A.shape[1:]) and RB.shape == (Bn, M, *B.shape[1:])
    eA, eB = uniform_oracle(R.double(), A.double(), B.double(), y.double(), 1e-2)
    torch.testing.assert_close(RA.double(), eA, **tol(dtype, eA))
    torch.testing.assert_close(RB.double(), eB, **tol(dtype, eB))


@pytest.mark.parametrize("name", MATMUL_CASES)
def test_matmul_uniform_conserves_and_maps_are_independent(name):
    A, B, y, R = make_matmul(name, 2, 3, torch.float64)
    for eps in (1e-12, 0.3):
        RA, RB = reference_matmul_uniform(R, A, B, y, eps)
        expected = (R * (y / stab(y, eps)).unsqueeze(1)).flatten(2).sum(-1)
        torch.testing.assert_close(RA.flatten(2).sum(-1) + RB.flatten(2).sum(-1), expected, rtol=1e-10, atol=1e-10)
    for m in range(3):  # the map axis folded into the products: each map as if alone
        RA1, RB1 = reference_matmul_uniform(R[:, m:m + 1], A, B, y, 0.3)
        torch.testing.assert_close(RA1, RA[:, m:m + 1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(RB1, RB[:, m:m + 1], rtol=1e-12, atol=1e-14)


def test_matmul_uniform_gradcheck():
    A, B, y, R = make_matmul("broadcast_heads", 2, 2, torch.float64)
    y = stab(y, 0.5)  # independent input, away from 0
    args = tuple(t.clone().requires_grad_() for t in (R, A, B, y))
    assert torch.autograd.gradcheck(lambda R, A, B, y: reference_matmul_uniform(R, A, B, y, 0.1), args)


@pytest.mark.parametrize("name", MATMUL_CASES)
@pytest.mark.parametrize("Bn,M", BM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_cp_matches_einsum_oracle_and_conserves(name, Bn, M, dtype):
    A, B, y, R = make_matmul(name, Bn, M, dtype)
    none, RB = reference_matmul_cp(R, A, B, y, eps=1e-2)
    assert none is None
    lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    Ae, Be = A.double().expand(*lead, *A.shape[-2:]), B.double().expand(*lead, *B.shape[-2:])
    expected = torch.stack([torch.einsum("...ij,...jk,...ik->...jk", Ae, Be, R[:, m].double() / stab(y.double(), 1e-2))
                            .sum_to_size(B.shape) for m in range(M)], 1)
    torch.testing.assert_close(RB.double(), expected, **tol(dtype, expected))
    if dtype == torch.float64:
        _, RB0 = reference_matmul_cp(R, A, B, y, eps=1e-12)
        torch.testing.assert_close(RB0.flatten(2).sum(-1), R.flatten(2).sum(-1), rtol=1e-8, atol=1e-8)


def test_matmul_cp_gradcheck_and_probabilities_held_constant():
    A, B, y, R = make_matmul("heads", 2, 2, torch.float64)
    y = stab(y, 0.5)
    args = tuple(t.clone().requires_grad_() for t in (R, B, y))
    assert torch.autograd.gradcheck(lambda R, B, y: reference_matmul_cp(R, A, B, y, 0.1)[1], args)
    A = A.clone().requires_grad_()
    B = B.clone().requires_grad_()
    gA, gB = torch.autograd.grad(reference_matmul_cp(R, A, B, y, 0.1)[1].sum(), [A, B], allow_unused=True)
    assert gA is None and gB is not None


def test_matmul_bad_input():
    A, B, y, R = make_matmul("plain", 2, 1, torch.float64)
    with pytest.raises(ValueError, match="linear layer"):
        reference_matmul_uniform(R, A, B[0], y)
    with pytest.raises(ValueError, match="batch axis"):
        reference_matmul_uniform(R, A, B[:1], y)
    with pytest.raises(ValueError, match=r"\(B, M"):
        reference_matmul_uniform(R[:, :, :2], A, B, y)


# ------------------------------------------------------------------------------------------- attention (SDPA)

# (q shape, k shape, v shape) without batch; mask kind; scale
SDPA_CASES = {
    "heads_no_mask": ((2, 4, 3), (2, 5, 3), (2, 5, 6), None, None),
    "tokens_3d": ((5, 4), (5, 4), (5, 2), None, 0.7),
    "position_bias": ((2, 4, 3), (2, 4, 3), (2, 4, 3), "float", None),
    "bool_mask": ((2, 3, 4), (2, 5, 4), (2, 5, 2), "bool", None),
    "causal": ((1, 5, 3), (1, 5, 3), (1, 5, 4), "causal", None),
}


def make_sdpa(name, Bn, M, dtype=torch.float64):
    sq, sk, sv, mask_kind, scale = SDPA_CASES[name]
    q, k, v = (torch.randn(Bn, *s, dtype=dtype) for s in (sq, sk, sv))
    L, S = sq[-2], sk[-2]
    mask, causal = None, False
    if mask_kind == "float":
        mask = torch.randn(1, sq[0], L, S, dtype=dtype)  # a relative position bias, shared by the batch
    elif mask_kind == "bool":
        mask = torch.rand(L, S) < 0.7
        mask[:, 0] = True  # every query attends to something
        mask[:, 3] = False  # a key nobody attends to
    elif mask_kind == "causal":
        causal = True
    R = torch.randn(Bn, M, *sq[:-1], sv[-1], dtype=dtype)
    return q, k, v, mask, causal, scale, R


@pytest.mark.parametrize("name", SDPA_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_forward_equals_torch(name, dtype):
    q, k, v, mask, causal, scale, _ = make_sdpa(name, 2, 1, dtype)
    out, p, scores = sdpa_forward(q, k, v, mask, scale, causal)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    torch.testing.assert_close(out, expected, **(dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else {}))
    torch.testing.assert_close(p, torch.softmax(scores, -1), rtol=0, atol=0)
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def sdpa_oracle(R, q, k, v, mask, causal, scale, eps):
    """The attention relevance chained from the oracles above, scores as the bilinear map with a bias."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    bias = attention_bias(mask, causal, q.shape[-2], k.shape[-2], q.dtype)
    raw = scale * q @ k.mT
    scores = raw if bias is None else raw + bias
    p = torch.softmax(scores, -1)
    out = p @ v
    R_p, R_v = uniform_oracle(R, p, v, out, eps)
    fin = torch.isfinite(scores)
    lead = scores.shape[:-1]
    R_s = torch.zeros_like(R_p)
    for idx in itertools.product(*[range(n) for n in lead]):
        keep = fin[idx]
        xs = scores[idx][keep].unsqueeze(0)  # one softmax row over the keys it attends to
        rows = R_p[(idx[0], slice(None), *idx[1:])][:, keep].unsqueeze(0)
        R_s[(idx[0], slice(None), *idx[1:])] = torch.zeros_like(R_p[(idx[0], slice(None), *idx[1:])]).masked_scatter(
            keep.expand(R.shape[1], -1), softmax_oracle(rows, xs, -1)[0])
    z = raw if bias is None else raw + torch.where(fin, bias, 0.0).detach()  # the bias detached in the denominator
    R_q, R_kt = uniform_oracle(R_s, scale * q, k.mT, torch.where(fin, z, 0.0), eps)
    return R_q, R_kt.mT, R_v, R_s, R_p


@pytest.mark.parametrize("name", SDPA_CASES)
@pytest.mark.parametrize("Bn,M", BM)
def test_sdpa_attnlrp_matches_chained_oracle(name, Bn, M):
    q, k, v, mask, causal, scale, R = make_sdpa(name, Bn, M)
    R_q, R_k, R_v = reference_sdpa_relevance(R, q, k, v, mask, scale, "attnlrp", 1e-2, is_causal=causal)
    eq, ek, ev, _, _ = sdpa_oracle(R, q, k, v, mask, causal, scale, 1e-2)
    assert R_q.shape == (Bn, M, *q.shape[1:]) and R_k.shape == (Bn, M, *k.shape[1:])
    for got, exp in ((R_q, eq), (R_k, ek), (R_v, ev)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    saved = sdpa_forward(q, k, v, mask, scale, causal)
    again = reference_sdpa_relevance(R, q, k, v, mask, scale, "attnlrp", 1e-2, is_causal=causal, saved=saved)
    for got, exp in zip(again, (R_q, R_k, R_v)):
        torch.testing.assert_close(got, exp, rtol=0, atol=0)


def test_sdpa_learnt_bias_gradients():
    """A float mask (a learnt position bias) trains through the forward as through F.sdpa, and through the
    relevance by the softmax rule only (detached in the product's denominator)."""
    q, k, v, mask, causal, scale, R = make_sdpa("position_bias", 2, 2)
    b1, b2 = mask.clone().requires_grad_(), mask.clone().requires_grad_()
    out, _, _ = sdpa_forward(q, k, v, b1, scale)
    G = torch.randn_like(out)
    (g_ours,) = torch.autograd.grad(out, b1, G)
    (g_torch,) = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=b2, scale=scale), b2, G)
    torch.testing.assert_close(g_ours, g_torch, rtol=1e-10, atol=1e-12)
    got = reference_sdpa_relevance(R, q, k, v, b1, scale)
    expected = sdpa_oracle(R, q, k, v, b2, causal, scale, 1e-2)[:3]
    Ws = [torch.randn_like(t) for t in got]
    (g_ours,) = torch.autograd.grad(sum((t * w).sum() for t, w in zip(got, Ws)), b1)
    (g_oracle,) = torch.autograd.grad(sum((t * w).sum() for t, w in zip(expected, Ws)), b2)
    torch.testing.assert_close(g_ours, g_oracle, rtol=1e-10, atol=1e-12)
    assert g_ours.abs().max() > 0


def test_sdpa_attnlrp_float32():
    q, k, v, mask, causal, scale, R = make_sdpa("position_bias", 2, 3, torch.float32)
    got = reference_sdpa_relevance(R, q, k, v, mask, scale)
    expected = sdpa_oracle(R.double(), q.double(), k.double(), v.double(), mask.double(), causal, scale, 1e-2)[:3]
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), e, **tol(torch.float32, e))


@pytest.mark.parametrize("name", ["heads_no_mask", "position_bias", "bool_mask"])
def test_sdpa_attnlrp_relevance_budget(name):
    """eps -> 0: sum R_v + sum R_p = sum R; sum R_q + sum R_k = sum R_scores (scores - bias) / scores (all of it
    without a bias); the softmax is what does not conserve."""
    q, k, v, mask, causal, scale, R = make_sdpa(name, 2, 3)
    eps = 1e-12
    R_q, R_k, R_v = reference_sdpa_relevance(R, q, k, v, mask, scale, "attnlrp", eps, is_causal=causal)
    _, _, _, R_s, R_p = sdpa_oracle(R, q, k, v, mask, causal, scale, eps)

    def total(t):
        return t.flatten(2).sum(-1)

    torch.testing.assert_close(total(R_v) + total(R_p), total(R), rtol=1e-8, atol=1e-8)
    _, _, scores = sdpa_forward(q, k, v, mask, scale, causal)
    bias = attention_bias(mask, causal, q.shape[-2], k.shape[-2], q.dtype)
    fin = torch.isfinite(scores)
    share = torch.ones_like(scores) if bias is None else torch.where(fin, (scores - bias) / scores, 0.0)
    torch.testing.assert_close(total(R_q) + total(R_k), total(R_s * share.unsqueeze(1)), rtol=1e-8, atol=1e-8)
    if mask is not None and mask.dtype == torch.bool:  # key 3: attended by no query, gets nothing
        assert (R_k[..., 3, :] == 0).all() and (R_v[..., 3, :] == 0).all()


@pytest.mark.parametrize("name", ["heads_no_mask", "bool_mask"])
def test_sdpa_cp_rule(name):
    q, k, v, mask, causal, scale, R = make_sdpa(name, 2, 3)
    R_q, R_k, R_v = reference_sdpa_relevance(R, q, k, v, mask, scale, "cp", 1e-2, is_causal=causal)
    assert R_q is None and R_k is None
    out, p, _ = sdpa_forward(q, k, v, mask, scale, causal)
    expected = torch.stack([torch.einsum("...ij,...jk,...ik->...jk", p, v, R[:, m] / stab(out, 1e-2))
                            for m in range(3)], 1)
    torch.testing.assert_close(R_v, expected, rtol=1e-10, atol=1e-12)
    R_v0 = reference_sdpa_relevance(R, q, k, v, mask, scale, "cp", 1e-12, is_causal=causal)[2]
    torch.testing.assert_close(R_v0.flatten(2).sum(-1), R.flatten(2).sum(-1), rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="attention rule"):
        reference_sdpa_relevance(R, q, k, v, rule="lrp")


def test_sdpa_relevance_gradcheck():
    q, k, v, mask, causal, scale, R = make_sdpa("position_bias", 1, 2)
    args = tuple(t.clone().requires_grad_() for t in (R, q, k, v))
    assert torch.autograd.gradcheck(lambda *a: reference_sdpa_relevance(*a, mask, scale, "attnlrp", 0.1), args)


def test_sdpa_cp_gradcheck_with_probabilities_constant():
    """CP-LRP holds p constant (detached): differentiated with p fixed, out = p @ v live in v."""
    q, k, v, mask, causal, scale, R = make_sdpa("position_bias", 1, 2)
    _, p, scores = sdpa_forward(q, k, v, mask, scale)

    def fn(R, v):
        return reference_sdpa_relevance(R, q, k, v, mask, scale, "cp", 0.1, saved=(p @ v, p, scores))[2]

    assert torch.autograd.gradcheck(fn, (R.requires_grad_(), v.requires_grad_()))
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    out, p, scores = sdpa_forward(qg, kg, v, mask, scale)
    R_v = reference_sdpa_relevance(R, qg, kg, v, mask, scale, "cp", 0.1, saved=(out.detach(), p, scores))[2]
    assert torch.autograd.grad(R_v.sum(), [qg, kg], allow_unused=True) == (None, None)


def test_sdpa_query_with_every_key_masked():
    """torch gives out = 0 for such a query; the relevance there is 0 and everything stays finite."""
    q, k, v, mask, causal, scale, R = make_sdpa("bool_mask", 2, 2)
    mask = mask.clone()
    mask[1] = False
    out, p, _ = sdpa_forward(q, k, v, mask, scale)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
                               rtol=1e-12, atol=1e-12)
    assert (p[..., 1, :] == 0).all() and (out[..., 1, :] == 0).all()
    args = [t.clone().requires_grad_() for t in (R, q, k, v)]
    R_q, R_k, R_v = reference_sdpa_relevance(*args, mask, scale)
    assert (R_q[..., 1, :] == 0).all()
    grads = torch.autograd.grad(sum((o * torch.randn_like(o)).sum() for o in (R_q, R_k, R_v)), args)
    assert all(torch.isfinite(g).all() for g in grads)


def test_sdpa_relevance_with_mask_has_finite_gradients():
    q, k, v, mask, causal, scale, R = make_sdpa("bool_mask", 2, 2)
    args = [t.clone().requires_grad_() for t in (R, q, k, v)]
    outs = reference_sdpa_relevance(*args, mask, scale)
    grads = torch.autograd.grad(sum((o * torch.randn_like(o)).sum() for o in outs), args)
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.autograd.gradcheck(lambda *a: reference_sdpa_relevance(*a, mask, scale, "attnlrp", 0.1),
                                    tuple(t.detach().requires_grad_() for t in args))
