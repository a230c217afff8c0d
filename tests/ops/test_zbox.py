"""Z^B (box) rule for the first layer against an explicit matrix oracle (docs/rules.md#zb-first-layer).

With the convolution's dense matrix ``A`` (one-hot basis inputs), ``A+ = max(A, 0)``, ``A- = min(A, 0)``, bound
vectors ``l``, ``h`` over the input units, the bias bounds ``l_b = min(l)``, ``h_b = max(h)`` and ``ch(k)`` the
output channel of unit ``k``:

    z_B_k = z_k - (sum_j A+_kj l_j + l_b b+_ch(k)) - (sum_j A-_kj h_j + h_b b-_ch(k))
    R_i   = sum_k (x_i A_ki - l_i A+_ki - h_i A-_ki) / stab(z_B_k) * R_k
"""

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels.ops import reference_conv_zbox, reference_linear_zbox

# (Ci, Co, H, W, kernel, stride, padding, dilation, groups)
CASES = {
    "k3s1p1": (3, 4, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "stem_k7s2p3_outpad": (3, 4, 10, 11, (7, 7), (2, 2), (3, 3), (1, 1), 1),
    "depthwise_k3s2p2d2": (3, 3, 9, 8, (3, 3), (2, 2), (2, 2), (2, 2), 3),
    "k1s3": (3, 2, 7, 8, (1, 1), (3, 3), (0, 0), (1, 1), 1),
    "k5x3_s3x1_p2x0_g2": (4, 4, 11, 7, (5, 3), (3, 1), (2, 0), (1, 1), 2),
}

MEAN, STD = torch.tensor([0.485, 0.456, 0.406, 0.5]), torch.tensor([0.229, 0.224, 0.225, 0.25])


def bounds(kind, Ci):
    """(low, high) as the op takes them: scalar tensors or per-channel (Ci, 1, 1) / (1, Ci, 1, 1)."""
    if kind == "unit":
        return torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    if kind == "scalar":
        return torch.tensor(-1.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    low = (-MEAN[:Ci] / STD[:Ci]).double()
    high = ((1 - MEAN[:Ci]) / STD[:Ci]).double()
    if kind == "channel":
        return low.view(Ci, 1, 1), high.view(Ci, 1, 1)
    return low.view(1, Ci, 1, 1), high.view(1, Ci, 1, 1)


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def conv_matrix(weight, in_shape, s, p, d, g):
    """(K, J) matrix of x -> conv2d(x, weight) from one-hot inputs: column j is the response to e_j."""
    n = in_shape[0] * in_shape[1] * in_shape[2]
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    return F.conv2d(basis, weight.detach().double(), None, s, p, d, g).flatten(1).t()


def oracle_zbox(R, x, z, A, lvec, hvec, bias_unit, eps):
    """R (B, M, K), x (B, J), z (B, K), A (K, J), lvec/hvec (J,) per input unit, bias_unit (K,) or None."""
    Ap, An = A.clamp(min=0), A.clamp(max=0)
    z_low = Ap @ lvec
    z_high = An @ hvec
    if bias_unit is not None:
        z_low = z_low + lvec.min() * bias_unit.clamp(min=0)
        z_high = z_high + hvec.max() * bias_unit.clamp(max=0)
    zB = z - z_low - z_high
    coef = x[:, None, :] * A - lvec * Ap - hvec * An  # (B, K, J)
    return torch.einsum("bkj,bmk->bmj", coef, R / stab(zB, eps)[:, None, :]), zB


def make_problem(case, B, M, bound_kind, with_bias, seed):
    Ci, Co, H, W, k, s, p, d, g = CASES[case]
    torch.manual_seed(seed)
    low, high = bounds(bound_kind, Ci)
    lvec = low.expand(1, Ci, H, W).flatten()
    hvec = high.expand(1, Ci, H, W).flatten()
    x = (lvec + (hvec - lvec) * torch.rand(B, Ci * H * W, dtype=torch.float64)).view(B, Ci, H, W)
    weight = torch.randn(Co, Ci // g, *k, dtype=torch.float64) / (Ci // g * k[0] * k[1]) ** 0.5
    bias = 0.5 * torch.randn(Co, dtype=torch.float64) if with_bias else None
    z = F.conv2d(x, weight, bias, s, p, d, g)
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    A = conv_matrix(weight, (Ci, H, W), s, p, d, g)
    bias_unit = None if bias is None else bias.repeat_interleave(z.shape[-2] * z.shape[-1])
    return dict(R=R, x=x, z=z, weight=weight, bias=bias, low=low, high=high, A=A, lvec=lvec, hvec=hvec,
                bias_unit=bias_unit, conv=(s, p, d, g))


def run_op(P, eps=1e-2, **over):
    P = {**P, **over}
    return reference_conv_zbox(P["R"], P["x"], P["z"], P["weight"], P["bias"], P["low"], P["high"], *P["conv"],
                               eps=eps)


def run_oracle(P, eps=1e-2):
    return oracle_zbox(P["R"].flatten(2), P["x"].flatten(1), P["z"].flatten(1), P["A"], P["lvec"], P["hvec"],
                       P["bias_unit"], eps)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("bound_kind", ["unit", "scalar", "channel", "channel4d"])
@pytest.mark.parametrize("case", CASES)
def test_conv_zbox_matches_matrix_oracle(case, bound_kind, with_bias):
    P = make_problem(case, 2, 3, bound_kind, with_bias, seed=0)
    got = run_op(P)
    assert got.shape == (2, 3, *P["x"].shape[1:])
    expected, _ = run_oracle(P)
    torch.testing.assert_close(got.flatten(2), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B,M", [(1, 1), (3, 1), (1, 3), (3, 3)])
def test_conv_zbox_batch_and_maps(B, M):
    P = make_problem("stem_k7s2p3_outpad", B, M, "channel", True, seed=1)
    expected, _ = run_oracle(P)
    torch.testing.assert_close(run_op(P).flatten(2), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bound_kind", ["unit", "channel"])
def test_conv_zbox_conserves_without_bias(case, bound_kind):
    """With no bias the numerators sum to z_B exactly, so as eps -> 0 the relevance is conserved."""
    P = make_problem(case, 2, 3, bound_kind, False, seed=2)
    _, zB = run_oracle(P)
    assert (zB > 1e-6).all()  # inputs inside the box: z_B is a sum of non-negative terms
    got = run_op(P, eps=1e-9)
    torch.testing.assert_close(got.sum((2, 3, 4)), P["R"].sum((2, 3, 4)), rtol=1e-6, atol=1e-6)


def test_conv_zbox_bias_breaks_conservation():
    """The conservation test above can fail: a bias takes a share of the relevance."""
    P = make_problem("k3s1p1", 2, 1, "unit", True, seed=3)
    P["R"] = P["R"].abs()
    got = run_op(P, eps=1e-9)
    assert not torch.allclose(got.sum((2, 3, 4)), P["R"].sum((2, 3, 4)), rtol=1e-3)


def test_conv_zbox_scalar_bounds_equal_uniform_per_channel_bounds():
    P = make_problem("k3s1p1", 2, 2, "scalar", True, seed=4)
    per_channel = run_op(P, low=P["low"].expand(3, 1, 1).clone(), high=P["high"].expand(3, 1, 1).clone())
    torch.testing.assert_close(per_channel, run_op(P), rtol=1e-12, atol=1e-12)


def test_conv_zbox_per_channel_bias_bounds_use_min_low_and_max_high():
    """The bias counts as an input in [min(l), max(h)] when the bounds differ per channel."""
    P = make_problem("k1s3", 1, 1, "channel", True, seed=5)
    expected, _ = run_oracle(P)
    torch.testing.assert_close(run_op(P).flatten(2), expected, rtol=1e-10, atol=1e-10)
    # a variant where the bias used max(l) / min(h) instead must differ (guards the oracle's bias convention)
    lvec, hvec = P["lvec"], P["hvec"]
    Ap, An = P["A"].clamp(min=0), P["A"].clamp(max=0)
    zB_wrong = (P["z"].flatten(1) - Ap @ lvec - lvec.max() * P["bias_unit"].clamp(min=0) - An @ hvec
                - hvec.min() * P["bias_unit"].clamp(max=0))
    coef = P["x"].flatten(1)[:, None, :] * P["A"] - lvec * Ap - hvec * An
    wrong = torch.einsum("bkj,bmk->bmj", coef, P["R"].flatten(2) / stab(zB_wrong, 1e-2)[:, None, :])
    assert not torch.allclose(run_op(P).flatten(2), wrong)


@pytest.mark.parametrize("case", ["stem_k7s2p3_outpad", "k5x3_s3x1_p2x0_g2"])
def test_conv_zbox_float32_close_to_float64_oracle(case):
    P = make_problem(case, 3, 2, "channel", True, seed=6)
    P32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in P.items()}
    got = run_op(P32)
    assert got.dtype == torch.float32
    P64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in P32.items()}
    P64["A"] = conv_matrix(P64["weight"], P64["x"].shape[1:], *P64["conv"])
    expected, _ = run_oracle(P64)
    torch.testing.assert_close(got.double().flatten(2), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("bound_kind", ["unit", "channel"])
def test_conv_zbox_gradcheck(bound_kind):
    """Differentiable in R, x, z, W and the bias (used as given: callers detach it, or pass a folded b')."""
    torch.manual_seed(7)
    s, p, d, g = (2, 1), (1, 1), (1, 2), 1
    Ci, Co = 3, 2
    low, high = bounds(bound_kind, Ci)
    lvec, hvec = low.expand(1, Ci, 5, 6).flatten(), high.expand(1, Ci, 5, 6).flatten()
    x = (lvec + (hvec - lvec) * torch.rand(2, Ci * 30, dtype=torch.float64)).view(2, Ci, 5, 6).requires_grad_()
    weight = torch.randn(Co, Ci, 3, 2, dtype=torch.float64)
    weight = torch.where(weight.abs() < 0.05, weight + 0.1, weight).requires_grad_()  # away from the W+/W- kink
    bias = torch.randn(Co, dtype=torch.float64)
    bias = torch.where(bias >= 0, bias + 0.1, bias - 0.1).requires_grad_()  # away from the b+/b- kink
    z_shift = F.conv2d(x.detach(), weight.detach(), None, s, p, d, g)
    _, zB = oracle_zbox(torch.zeros(2, 1, z_shift[0].numel(), dtype=torch.float64), x.detach().flatten(1),
                        torch.zeros(2, z_shift[0].numel(), dtype=torch.float64),
                        conv_matrix(weight, (Ci, 5, 6), s, p, d, g), lvec, hvec,
                        bias.detach().repeat_interleave(z_shift.shape[-2] * z_shift.shape[-1]), 0.1)
    # z such that z_B = z - z_low - z_high is at least 0.5 away from 0
    off = torch.randn_like(z_shift)
    z = (-zB.view_as(z_shift) + torch.where(off >= 0, off + 0.5, off - 0.5)).requires_grad_()
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64, requires_grad=True)

    def fn(R, x, z, weight, bias):
        return reference_conv_zbox(R, x, z, weight, bias, low, high, s, p, d, g, eps=0.1)

    assert torch.autograd.gradcheck(fn, (R, x, z, weight, bias), fast_mode=True)


# ------------------------------------------------------------------------------------------------- linear


def oracle_linear_zbox(R, x, z, weight, bias, lvec, hvec, eps):
    """Explicit loops over the formula of docs/rules.md#zb-first-layer for a linear layer."""
    B, M, K = R.shape
    Fdim = x.shape[1]
    lb, hb = float(lvec.min()), float(hvec.max())
    out = torch.zeros(B, M, Fdim, dtype=torch.float64)
    for b in range(B):
        zB = []
        for k in range(K):
            zl = sum(max(float(weight[k, j]), 0.0) * float(lvec[j]) for j in range(Fdim))
            zh = sum(min(float(weight[k, j]), 0.0) * float(hvec[j]) for j in range(Fdim))
            if bias is not None:
                zl += lb * max(float(bias[k]), 0.0)
                zh += hb * min(float(bias[k]), 0.0)
            v = float(z[b, k]) - zl - zh
            zB.append(v + eps if v >= 0 else v - eps)
        for m in range(M):
            for i in range(Fdim):
                acc = 0.0
                for k in range(K):
                    w = float(weight[k, i])
                    num = float(x[b, i]) * w - float(lvec[i]) * max(w, 0.0) - float(hvec[i]) * min(w, 0.0)
                    acc += num / zB[k] * float(R[b, m, k])
                out[b, m, i] = acc
    return out


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("B,M", [(1, 1), (3, 3), (2, 1)])
def test_linear_zbox_matches_explicit_sum(B, M, per_feature, with_bias):
    torch.manual_seed(8)
    Fdim, K = 5, 4
    if per_feature:
        low = -torch.rand(1, Fdim, dtype=torch.float64) - 0.5
        high = torch.rand(1, Fdim, dtype=torch.float64) + 0.5
    else:
        low, high = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    lvec, hvec = low.expand(1, Fdim).flatten(), high.expand(1, Fdim).flatten()
    x = lvec + (hvec - lvec) * torch.rand(B, Fdim, dtype=torch.float64)
    weight = torch.randn(K, Fdim, dtype=torch.float64)
    bias = torch.randn(K, dtype=torch.float64) if with_bias else None
    z = x @ weight.t() + (0 if bias is None else bias)
    R = torch.randn(B, M, K, dtype=torch.float64)
    got = reference_linear_zbox(R, x, z, weight, bias, low, high, eps=1e-2)
    expected = oracle_linear_zbox(R, x, z, weight, bias, lvec, hvec, 1e-2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    if not with_bias:
        conserved = reference_linear_zbox(R, x, z, weight, None, low, high, eps=1e-9)
        torch.testing.assert_close(conserved.sum(-1), R.sum(-1), rtol=1e-6, atol=1e-6)
    got32 = reference_linear_zbox(R.float(), x.float(), z.float(), weight.float(),
                                  None if bias is None else bias.float(), low.float(), high.float())
    expected32 = oracle_linear_zbox(R.float().double(), x.float().double(), z.float().double(),
                                    weight.float().double(), None if bias is None else bias.float().double(),
                                    lvec.float().double(), hvec.float().double(), 1e-2)
    torch.testing.assert_close(got32.double(), expected32, rtol=1e-4, atol=1e-5 * expected32.abs().max().item())


def test_linear_zbox_gradcheck():
    torch.manual_seed(9)
    low, high = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    x = (-1 + 3 * torch.rand(2, 5, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(3, 5, dtype=torch.float64)
    weight = torch.where(weight.abs() < 0.05, weight + 0.1, weight).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64)
    bias = torch.where(bias >= 0, bias + 0.1, bias - 0.1).requires_grad_()
    # z_low + z_high for l = -1, h = 2 (bias bounds l_b = -1, h_b = 2)
    w_pos, w_neg = weight.detach().clamp(min=0), weight.detach().clamp(max=0)
    z_lh = -w_pos.sum(1) + 2 * w_neg.sum(1) - bias.detach().clamp(min=0) + 2 * bias.detach().clamp(max=0)
    off = torch.randn(2, 3, dtype=torch.float64)
    z = (z_lh + torch.where(off >= 0, off + 0.5, off - 0.5)).requires_grad_()  # z_B = z - z_lh, |z_B| >= 0.5
    R = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)

    def fn(R, x, z, weight, bias):
        return reference_linear_zbox(R, x, z, weight, bias, low, high, eps=0.1)

    assert torch.autograd.gradcheck(fn, (R, x, z, weight, bias))
