"""The einsum rule (isnet_kernels/lrp/layers/einsum.py): against an explicit loop over every index assignment,
conservation as eps -> 0, gradcheck, the engine on einsum attention and on a small torchvision MaxViT."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isnet_kernels as ik
from isnet_kernels.lrp.layers import einsum as EL
from isnet_kernels.ops import stabilize

EQUATIONS = [  # (equation, shape of A, shape of B)
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("B G H I D, B G H J D -> B G H I J", (2, 2, 1, 3, 4), (2, 2, 1, 5, 4)),  # MaxViT's scores
    ("bhij,bhjd->bhid", (1, 2, 3, 4), (1, 2, 4, 3)),
    ("bi,bj->bij", (2, 3), (2, 4)),  # outer product: nothing summed
    ("bij,bkj->bi", (2, 3, 2), (2, 4, 2)),  # j and k summed, k only in B
    ("b...d,b...d->b...", (2, 3, 4), (2, 3, 4)),
    ("bxi,bi->bx", (2, 3, 4), (2, 4)),
]


def loop_relevance(eq: EL.Equation, R, A, B, eps, share=2.0):
    """R_A[a] = sum_{other indices} A[a] B[b] R[m, y] / (share * stab(y)) by an explicit loop over all indices."""
    (ta, tb), to = eq.terms, eq.output
    sizes = {}
    for t, x in ((ta, A), (tb, B)):
        sizes.update(dict(zip(t, x.shape)))
    y = torch.einsum(f"{ta},{tb}->{to}", A, B)
    S = R / (share * stabilize(y, eps)).unsqueeze(1)
    RA, RB = torch.zeros(R.shape[:2] + A.shape[1:], dtype=R.dtype), torch.zeros(R.shape[:2] + B.shape[1:],
                                                                                dtype=R.dtype)
    letters = sorted(sizes)
    for values in itertools.product(*(range(sizes[c]) for c in letters)):
        v = dict(zip(letters, values))
        ia, ib, io = (tuple(v[c] for c in t) for t in (ta, tb, to))
        for m in range(R.shape[1]):
            term = A[ia] * B[ib] * S[(io[0], m, *io[1:])]
            RA[(ia[0], m, *ia[1:])] += term
            RB[(ib[0], m, *ib[1:])] += term
    return RA, RB, y


@pytest.mark.parametrize("equation,sa,sb", EQUATIONS)
def test_uniform_rule_matches_index_loop(equation, sa, sb):
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(sa, generator=g, dtype=torch.float64), torch.randn(sb, generator=g, dtype=torch.float64)
    eq = EL.parse_equation(equation, (A.dim(), B.dim()))
    y = torch.einsum(equation, A, B)
    R = torch.randn(y.shape[0], 2, *y.shape[1:], generator=g, dtype=torch.float64)
    RA, RB = EL.reference_einsum_relevance(R, eq, [A, B], y, [True, True], 0.1)
    LA, LB, ly = loop_relevance(eq, R, A, B, 0.1)
    torch.testing.assert_close(y, ly)
    torch.testing.assert_close(RA, LA, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(RB, LB, rtol=1e-10, atol=1e-12)
    # one operand constant: all relevance to the other (the loop with share 1)
    RA1, RB1 = EL.reference_einsum_relevance(R, eq, [A, B], y, [True, False], 0.1)
    LA1, _, _ = loop_relevance(eq, R, A, B, 0.1, share=1.0)
    assert RB1 is None
    torch.testing.assert_close(RA1, LA1, rtol=1e-10, atol=1e-12)


def test_operand_letter_summed_alone_broadcasts():
    """A letter only in A (summed out): vjp_A broadcasts along it; checked against the loop."""
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    eq = EL.parse_equation("bik,bi->bi", (3, 2))
    y = torch.einsum("bik,bi->bi", A, B)
    R = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    RA, RB = EL.reference_einsum_relevance(R, eq, [A, B], y, [True, True], 0.05)
    LA, LB, _ = loop_relevance(eq, R, A, B, 0.05)
    torch.testing.assert_close(RA, LA)
    torch.testing.assert_close(RB, LB)


@pytest.mark.parametrize("equation,sa,sb", EQUATIONS[:3])
def test_conservation_as_eps_vanishes(equation, sa, sb):
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(sa, generator=g, dtype=torch.float64), torch.randn(sb, generator=g, dtype=torch.float64)
    eq = EL.parse_equation(equation, (A.dim(), B.dim()))
    y = torch.einsum(equation, A, B)
    R = torch.randn(y.shape[0], 3, *y.shape[1:], generator=g, dtype=torch.float64)
    RA, RB = EL.reference_einsum_relevance(R, eq, [A, B], y, [True, True], 1e-12)
    total = RA.flatten(2).sum(-1) + RB.flatten(2).sum(-1)
    torch.testing.assert_close(total, R.flatten(2).sum(-1), rtol=1e-8, atol=1e-8)


def test_cp_holds_the_softmax_constant():
    g = torch.Generator().manual_seed(4)
    P = torch.softmax(torch.randn(2, 3, 4, generator=g, dtype=torch.float64), -1)
    V = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    eq = EL.parse_equation("bij,bjd->bid", (3, 3))
    y = torch.einsum("bij,bjd->bid", P, V)
    R = torch.randn(2, 2, 3, 5, generator=g, dtype=torch.float64)
    RP, RV = EL.reference_einsum_relevance(R, eq, [P, V], y, [True, True], 1e-9, constant=0)
    assert RP is None
    expected = V.unsqueeze(1) * (P.mT.unsqueeze(1) @ (R / y.unsqueeze(1)))  # CP-LRP of P @ V
    torch.testing.assert_close(RV, expected, rtol=1e-6, atol=1e-9)


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    R = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    eq = EL.parse_equation("bij,bjk->bik", (3, 3))

    def f(R, A, B):
        y = torch.einsum("bij,bjk->bik", A, B)
        return tuple(EL.reference_einsum_relevance(R, eq, [A, B], y, [True, True], 0.5))

    assert torch.autograd.gradcheck(f, (R, A, B))


def test_parse_errors():
    with pytest.raises(ValueError, match="diagonal"):
        EL.parse_equation("bii->bi", (3,))
    eq = EL.parse_equation("ib,bj->ij", (2, 2))
    assert "batch letter first" in EL.check_batch(eq, [True, True])
    eq = EL.parse_equation("bij,jk->bik", (3, 2))
    assert EL.check_batch(eq, [True, False]) is None  # a constant weight needs no batch axis
    eq = EL.parse_equation("...ij,...jk", (4, 4))
    assert eq.output == eq.terms[0][:2] + "ik"


class EinsumAttention(nn.Module):
    def __init__(self, d=6, heads=2):
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(d, 3 * d), nn.Linear(d, d), heads
        self.w = nn.Parameter(torch.randn(d, d) / d ** 0.5)
        self.head = nn.Linear(d, 3)

    def forward(self, x):  # x (B, d, 1, T): tokens as an image
        x = x.flatten(2).transpose(1, 2)
        B, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = (t.reshape(B, T, self.heads, D // self.heads).permute(0, 2, 1, 3) for t in (q, k, v))
        p = F.softmax(torch.einsum("bhid,bhjd->bhij", q, k), dim=-1)
        o = torch.einsum("bhij,bhjd->bhid", p, v).permute(0, 2, 1, 3).reshape(B, T, D)
        o = torch.einsum("btd,de->bte", self.proj(o), self.w)  # a constant operand
        return self.head(o.mean(1))


@pytest.mark.parametrize("attention", ["attnlrp", "cp"])
def test_engine_on_einsum_attention(attention):
    torch.manual_seed(0)
    m = EinsumAttention().double().eval()
    x = torch.randn(2, 6, 1, 5, dtype=torch.float64)
    targets = torch.tensor([[0], [2]])
    _, h = ik.LRP(m, eps=1e-2, first_layer="epsilon", attention=attention)(x, targets)
    assert h.shape == (2, 1, 6, 1, 5) and torch.isfinite(h).all() and h.abs().sum() > 0
    if attention == "cp":  # CP-LRP with zero biases conserves: input relevance sums to the logit
        for mod in (m.qkv, m.proj, m.head):
            nn.init.zeros_(mod.bias)
        ik.lrp.clear_cache()
        logits, h = ik.LRP(m, eps=1e-12, first_layer="epsilon", attention="cp")(x, targets)
        torch.testing.assert_close(h.flatten(1).sum(1), logits.gather(1, targets)[:, 0], rtol=1e-6, atol=1e-8)


def test_engine_rejects_batch_inside_an_ellipsis():
    """With '...' the terms are checked at the first forward (the ellipsis' length depends on the shapes)."""

    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = x.flatten(2)
            return self.fc(torch.einsum("i...,i...->...", x, x))

    with pytest.raises(ValueError, match="batch letter first"):
        ik.LRP(Bad(), first_layer="epsilon")(torch.randn(3, 4, 2, 2), torch.tensor([[0], [1], [0]]))


@pytest.mark.parametrize("equation,sa,sb", EQUATIONS[:3])
def test_float32_matches_float64(equation, sa, sb):
    g = torch.Generator().manual_seed(6)
    A, B = torch.randn(sa, generator=g, dtype=torch.float64), torch.randn(sb, generator=g, dtype=torch.float64)
    eq = EL.parse_equation(equation, (A.dim(), B.dim()))
    y = torch.einsum(equation, A, B)
    R = torch.randn(y.shape[0], 2, *y.shape[1:], generator=g, dtype=torch.float64)
    r64 = EL.reference_einsum_relevance(R, eq, [A, B], y, [True, True], 0.1)
    r32 = EL.reference_einsum_relevance(R.float(), eq, [A.float(), B.float()], y.float(), [True, True], 0.1)
    for a, b in zip(r32, r64):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_engine_rejects_batch_not_first():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc(torch.einsum("bi,ci->ic", x, x))

    with pytest.raises(ik.UnsupportedLayerError, match="batch letter first"):
        ik.LRP(Bad(), first_layer="epsilon")(torch.randn(3, 4, 1, 1), torch.tensor([[0], [1], [0]]))


def _torchvision():
    """torchvision's MaxViT module (torchvision is imported by tests/conftest.py beside the CPU torch)."""
    import torchvision.models.maxvit as maxvit

    return maxvit


def test_maxvit_explains():
    """A small MaxViT (torchvision's class; maxvit_t itself needs 224x224 and runs the same code)."""
    maxvit = _torchvision()
    m = maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[16], block_layers=[1],
                      head_dim=8, stochastic_depth_prob=0.0, num_classes=5).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.rand(2, 3, 32, 32)
    h = ik.explain(m, x, first_layer="epsilon")
    assert h.shape == x.shape and torch.isfinite(h).all() and h.abs().sum() > 0


def test_maxvit_cp_conserves_without_biases():
    """CP-LRP, zero biases, eps -> 0: every rule on the path conserves (the einsums by the epsilon rule of p @ v with
    p constant; the scores, position bias and softmax get no relevance), so the heatmap sums to the logit."""
    maxvit = _torchvision()
    m = maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[16], block_layers=[1],
                      head_dim=8, stochastic_depth_prob=0.0, num_classes=5).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.zeros_like(p) if name.endswith("bias") else torch.randn_like(p) * 0.3)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[0], [2]])
    logits, h = ik.LRP(m, eps=1e-12, first_layer="epsilon", attention="cp")(x, targets)
    torch.testing.assert_close(h.flatten(1).sum(1), logits.gather(1, targets)[:, 0], rtol=1e-7, atol=1e-9)


def test_maxvit_selective_isnet_step_trains():
    maxvit = _torchvision()
    m = maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=4, block_channels=[16], block_layers=[1],
                      head_dim=8, stochastic_depth_prob=0.0, num_classes=5)
    isnet = ik.ISNet(m, "selective", first_layer="epsilon").train()
    x = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1
    labels = torch.tensor([0, 3])
    loss = ik.ISNetLoss()(isnet(x, labels), labels, masks)
    loss.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    attention = m.blocks[0].layers[0].layers.window_attention.attn_layer[1]
    assert attention.to_qkv.weight.grad.abs().sum() > 0
