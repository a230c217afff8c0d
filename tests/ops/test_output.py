"""Output rules (docs/rules.md#output-rules): the logit rule and the selective (Faster ISNet) rule through
the last linear layer, against explicit per-class loops in float64."""

import math

import pytest
import torch

from isnet_kernels.ops import reference_logit_output, reference_selective_output, selective_relevance

TARGETS = {
    "B1M1": [[2]],
    "B3M1": [[0], [4], [2]],
    "B1M3": [[1, 3, 0]],
    "B3M3_repeated": [[1, 1, 2], [0, 4, 0], [3, 3, 3]],
}


def stab(v, eps):
    return v + eps if v >= 0 else v - eps


def make_problem(B, K=5, Fdim=6, seed=0, logit_scale=1.0):
    torch.manual_seed(seed)
    a = torch.randn(B, Fdim, dtype=torch.float64)
    weight = logit_scale * torch.randn(K, Fdim, dtype=torch.float64)
    bias = torch.randn(K, dtype=torch.float64)
    z = a @ weight.t() + bias
    return a, z, weight


# ------------------------------------------------------------------------------------------------ logit rule


def oracle_logit(a, z, weight, targets, eps):
    """R_out = z_c e_c, then R_j = a_j sum_k W_kj R_out_k / stab(z_k), as explicit loops."""
    B, Fdim = a.shape
    K = z.shape[1]
    M = targets.shape[1]
    out = torch.zeros(B, M, Fdim, dtype=torch.float64)
    for b in range(B):
        for m in range(M):
            c = int(targets[b, m])
            R_out = [float(z[b, c]) if k == c else 0.0 for k in range(K)]
            for j in range(Fdim):
                out[b, m, j] = float(a[b, j]) * sum(float(weight[k, j]) * R_out[k] / stab(float(z[b, k]), eps)
                                                   for k in range(K))
    return out


@pytest.mark.parametrize("name", TARGETS)
def test_logit_output_matches_explicit(name):
    targets = torch.tensor(TARGETS[name])
    a, z, weight = make_problem(targets.shape[0], seed=1)
    z[0, int(targets[0, 0])] = 0.0  # a zero logit carries no relevance (0 / stab(0) = 0)
    got = reference_logit_output(a, z, weight, targets, eps=1e-2)
    assert got.shape == (*targets.shape, a.shape[1])
    expected = oracle_logit(a, z, weight, targets, 1e-2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert (got[0, 0] == 0).all()
    # repeated targets give identical maps
    for b in range(targets.shape[0]):
        for m in range(1, targets.shape[1]):
            if targets[b, m] == targets[b, 0]:
                torch.testing.assert_close(got[b, m], got[b, 0], rtol=0, atol=0)


def test_logit_output_conserves_without_bias():
    a, _, weight = make_problem(3, seed=2)
    z = a @ weight.t()
    targets = torch.tensor([[0, 1], [2, 3], [4, 4]])
    got = reference_logit_output(a, z, weight, targets, eps=1e-10)
    torch.testing.assert_close(got.sum(-1), z.gather(1, targets), rtol=1e-7, atol=1e-7)


def test_logit_output_float32():
    targets = torch.tensor(TARGETS["B3M3_repeated"])
    a, z, weight = (t.float() for t in make_problem(3, seed=3))
    got = reference_logit_output(a, z, weight, targets)
    assert got.dtype == torch.float32
    expected = oracle_logit(a.double(), z.double(), weight.double(), targets, 1e-2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_logit_output_gradcheck():
    targets = torch.tensor([[1, 3], [0, 0]])
    a, z, weight = make_problem(2, K=4, Fdim=3, seed=4)
    z = torch.where(z >= 0, z + 0.5, z - 0.5)  # away from 0
    args = tuple(t.clone().requires_grad_() for t in (a, z, weight))
    assert torch.autograd.gradcheck(lambda a, z, w: reference_logit_output(a, z, w, targets, eps=0.1), args)


# -------------------------------------------------------------------------------------------- selective rule


def oracle_selective(a, z, weight, targets, eps):
    """Per class, straight from the docstring:
    R_cc' = z_cc' exp(-z_cc') / (sum_c'' exp(-z_cc'') - 1 + 1e-5)  (stab_1e-5 of a positive number),
    R_j   = a_j sum_{c' != c} (w_cj - w_c'j) R_cc' / stab(z_cc').
    Returns (R_in (B, M, F), q (B, M, K) with q_c' = R_cc' / stab(z_cc') and q_c = 0). The sum is taken with
    math.fsum, which is exact, so subtracting the c'' = c term (1) loses nothing."""
    B, Fdim = a.shape
    K = z.shape[1]
    M = targets.shape[1]
    out = torch.zeros(B, M, Fdim, dtype=torch.float64)
    q = torch.zeros(B, M, K, dtype=torch.float64)
    for b in range(B):
        for m in range(M):
            c = int(targets[b, m])
            zcc = [float(z[b, c]) - float(z[b, k]) for k in range(K)]
            denom = math.fsum([math.exp(-v) for v in zcc] + [-1.0]) + 1e-5
            for k in range(K):
                if k == c:
                    continue
                R_cck = zcc[k] * math.exp(-zcc[k]) / denom
                q[b, m, k] = R_cck / stab(zcc[k], eps)
                for j in range(Fdim):
                    out[b, m, j] += float(a[b, j]) * (float(weight[c, j]) - float(weight[k, j])) * q[b, m, k]
    return out, q


@pytest.mark.parametrize("name", TARGETS)
def test_selective_output_matches_explicit(name):
    targets = torch.tensor(TARGETS[name])
    a, z, weight = make_problem(targets.shape[0], seed=5)
    got = reference_selective_output(a, z, weight, targets, eps=1e-2)
    assert got.shape == (*targets.shape, a.shape[1])
    expected, q = oracle_selective(a, z, weight, targets, 1e-2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(selective_relevance(z, targets, eps=1e-2), q, rtol=1e-10, atol=1e-12)
    for b in range(targets.shape[0]):
        for m in range(1, targets.shape[1]):
            if targets[b, m] == targets[b, 0]:
                torch.testing.assert_close(got[b, m], got[b, 0], rtol=0, atol=0)


def test_selective_output_conserves_without_bias():
    """With z = W a exactly, the contrastive layers conserve: sum_j R_j -> sum_c' R_cc' as eps -> 0."""
    a, _, weight = make_problem(3, seed=6)
    z = a @ weight.t()
    targets = torch.tensor([[0, 2], [1, 1], [4, 3]])
    got = reference_selective_output(a, z, weight, targets, eps=1e-10)
    _, q = oracle_selective(a, z, weight, targets, 1e-10)
    zcc = z.gather(1, targets).unsqueeze(-1) - z.unsqueeze(1)
    R_cc = q * (zcc + 1e-10 * torch.where(zcc >= 0, 1.0, -1.0).double())  # undo the division by stab
    torch.testing.assert_close(got.sum(-1), R_cc.sum(-1), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("gap", [200.0, 60.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selective_output_large_logit_gaps_stay_finite(gap, dtype):
    """Logits whose differences reach 2 * gap: exp(-z_cc') overflows float32 when evaluated naively."""
    torch.manual_seed(7)
    K, Fdim = 5, 4
    z = torch.tensor([[0.0, gap, -gap, gap / 4, gap / 2], [gap, gap + 1.5, -gap, 3.0, gap - 0.5]], dtype=torch.float64)
    z = z + 0.1 * torch.randn_like(z)
    a = torch.randn(2, Fdim, dtype=torch.float64)
    weight = torch.randn(K, Fdim, dtype=torch.float64)
    targets = torch.tensor([[0, 1, 2, 3, 4], [2, 2, 0, 1, 4]])
    a_, z_, w_ = (t.to(dtype) for t in (a, z, weight))
    got = reference_selective_output(a_, z_, w_, targets, eps=1e-2)
    q = selective_relevance(z_, targets, eps=1e-2)
    assert torch.isfinite(got).all() and torch.isfinite(q).all()
    expected, q_exp = oracle_selective(a_.double(), z_.double(), w_.double(), targets, 1e-2)
    assert q_exp.abs().max() > 0.1  # the lowest-logit class carries real relevance: the check is not vacuous
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (1e-4, 1e-5)
    torch.testing.assert_close(q.double(), q_exp, rtol=rtol, atol=atol)
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol * expected.abs().max().item())


def test_selective_output_gap_beyond_float64_exp_range():
    """Gap 1000: exp(1000) overflows float64. For the lowest class c the weights are a softmax of -z_cc' over
    c' != c (the 1e-5 term vanishes next to exp(1000)), so q_c' = softmax_c' * z_cc' / stab(z_cc')."""
    z = torch.tensor([[0.0, 1000.0, 1000.5, 1001.0]], dtype=torch.float64)
    targets = torch.tensor([[0]])
    q = selective_relevance(z, targets, eps=1e-2)
    assert torch.isfinite(q).all()
    zcc = -z[0, 1:]
    soft = torch.softmax(-zcc, 0)
    torch.testing.assert_close(q[0, 0, 1:], soft * zcc / (zcc - 1e-2), rtol=1e-12, atol=0)
    assert q[0, 0, 0] == 0
    a = torch.randn(1, 3, dtype=torch.float64)
    weight = torch.randn(4, 3, dtype=torch.float64)
    assert torch.isfinite(reference_selective_output(a, z, weight, targets)).all()


def test_selective_output_float32_ordinary_logits():
    targets = torch.tensor(TARGETS["B3M3_repeated"])
    a, z, weight = (t.float() for t in make_problem(3, seed=8, logit_scale=3.0))
    got = reference_selective_output(a, z, weight, targets)
    assert got.dtype == torch.float32
    expected, _ = oracle_selective(a.double(), z.double(), weight.double(), targets, 1e-2)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_selective_output_gradcheck():
    torch.manual_seed(9)
    B, K, Fdim = 2, 4, 3
    a = torch.randn(B, Fdim, dtype=torch.float64)
    weight = torch.randn(K, Fdim, dtype=torch.float64)
    # logits at least 0.7 apart, so no z_cc' (c' != c) comes near 0 under finite differences
    z = torch.stack([torch.randperm(K).double() * 0.7 + 0.05 * torch.rand(K, dtype=torch.float64) for _ in range(B)])
    targets = torch.tensor([[0, 3], [2, 2]])
    args = tuple(t.clone().requires_grad_() for t in (a, z, weight))
    assert torch.autograd.gradcheck(lambda a, z, w: reference_selective_output(a, z, w, targets, eps=0.1), args)
    zz = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: selective_relevance(z, targets, eps=0.1), (zz,))
