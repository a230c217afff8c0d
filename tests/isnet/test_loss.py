"""ISNetLoss against a direct, loop-by-loop transcription of docs/isnet.md#the-heatmap-loss in float64, its edge
cases and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import isnet_kernels as ik
from isnet_kernels.isnet.loss import gwrp, heatmap_loss

DT = torch.float64


def transcribed_gwrp(values: list[float], d: float) -> float:
    ranked = sorted(values, reverse=True)
    weights = [d ** i for i in range(len(ranked))]
    return sum(w * v for w, v in zip(weights, ranked)) / sum(weights)


def transcribed_heatmap_loss(H, mask, d, E, A, B, C1, C2, foreground):
    """docs/isnet.md#the-heatmap-loss, one image, map and channel at a time. ``mask`` (B, h, w) already at the
    heatmap's size."""
    Bsz, M, C, h, w = H.shape
    total = 0.0
    bkg_sum = fg_sum = 0.0
    for b in range(Bsz):
        bkg_b = fg_b = 0.0
        for m in range(M):
            c1 = C1[m] if isinstance(C1, (list, tuple)) else C1
            c2 = C2[m] if isinstance(C2, (list, tuple)) else C2
            absH = H[b, m].abs()
            fg_elems = float(mask[b].sum()) * C
            fg = float((absH * mask[b]).sum())
            Hn = absH / (fg / max(fg_elems, 1) + 1e-10)
            for c in range(C):
                S = transcribed_gwrp((Hn[c] * (1 - mask[b])).flatten().tolist(), d)
                bkg_b += -math.log(1 - min(S / (S + E), 1 - 1e-7)) / (C * M)
            left = (min(fg / c1, 1) - 1) ** 2
            l2 = ((max(fg, c2) - c2) / c1) ** 2
            right = l2 if foreground == "l2" or fg <= c1 + c2 else fg - c1 - c2 + 1
            fg_b += (left + right) / M
        total += (A * bkg_b + B * fg_b) / Bsz
        bkg_sum += bkg_b / Bsz
        fg_sum += fg_b / Bsz
    return total, bkg_sum, fg_sum


def random_case(B=3, M=2, C=2, h=5, w=6, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = (torch.randn(B, M, C, h, w, generator=g, dtype=DT) * scale)
    mask = (torch.rand(B, 1, h, w, generator=g) > 0.5).to(DT)
    return H, mask


@pytest.mark.parametrize("d", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("foreground", ["hybrid", "l2"])
def test_heatmap_loss_matches_transcription(d: float, foreground: str) -> None:
    for scale in (0.05, 1.0, 8.0):  # F below C1, between, and past C1 + C2 (both branches of the hybrid term)
        H, mask = random_case(scale=scale, seed=int(scale * 10))
        C1, C2 = (0.5, 2.0), (3.0, 5.0)
        parts = heatmap_loss(H, mask, d=d, E=1.3, A=0.7, B=2.5, C1=C1, C2=C2, foreground=foreground)
        ref = transcribed_heatmap_loss(H, mask[:, 0], d, 1.3, 0.7, 2.5, C1, C2, foreground)
        for ours, want in zip((parts.heatmap, parts.background, parts.foreground), ref):
            assert float(ours) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_total_loss_and_resized_masks() -> None:
    """The total is (1 - P) CE + P L_heat; a mask at twice the heatmap's size is average-pooled and binarised != 0."""
    H, _ = random_case(B=2, M=1, C=3, h=4, w=4)
    big = torch.zeros(2, 1, 8, 8, dtype=DT)
    big[0, 0, 0, 0] = 1  # one foreground pixel in the top-left 2x2 cell: that cell is foreground
    big[1, 0, 2:6, 2:6] = 1
    small = F.adaptive_avg_pool2d(big, (4, 4))
    assert set(small.unique().tolist()) > {0.0, 1.0}  # the pooled mask is fractional: binarising matters
    binary = (small != 0).to(DT)
    logits = torch.randn(2, 5, dtype=DT)
    labels = torch.tensor([1, 4])
    out = ik.ISNetOutput(logits, H)
    loss = ik.ISNetLoss(P=0.6, C1=0.3, C2=2.0)(out, labels, big)
    heat, bkg, fg = transcribed_heatmap_loss(H, binary[:, 0], 0.9, 1.0, 1.0, 3.0, 0.3, 2.0, "hybrid")
    ce = float(F.cross_entropy(logits, labels))
    assert float(loss.heatmap) == pytest.approx(heat, rel=1e-12)
    assert float(loss.background) == pytest.approx(bkg, rel=1e-12)
    assert float(loss.foreground) == pytest.approx(fg, rel=1e-12)
    assert float(loss.classification) == pytest.approx(ce, rel=1e-12)
    assert float(loss.total) == pytest.approx(0.4 * ce + 0.6 * heat, rel=1e-12)
    assert loss.finite


def test_gwrp_limits() -> None:
    v = torch.randn(4, 7, dtype=DT)
    assert torch.allclose(gwrp(v, 0.0), v.max(-1).values)
    assert torch.allclose(gwrp(v, 1.0), v.mean(-1))
    assert float(gwrp(v[0], 0.5)) == pytest.approx(transcribed_gwrp(v[0].tolist(), 0.5), rel=1e-13)
    with pytest.raises(ValueError, match="decay"):
        gwrp(v, 1.5)


def test_no_background() -> None:
    """A mask covering everything: no background relevance, so the background term is exactly 0."""
    H, _ = random_case()
    parts = heatmap_loss(H, torch.ones(3, 1, 5, 6, dtype=DT))
    assert float(parts.background) == 0.0
    ref = transcribed_heatmap_loss(H, torch.ones(3, 5, 6, dtype=DT), 0.9, 1, 1, 3, 1.0, 25.0, "hybrid")
    assert float(parts.heatmap) == pytest.approx(ref[0], rel=1e-12)


def test_no_foreground() -> None:
    """An empty mask: all relevance is background, the background term saturates at -log(1e-7); F = 0 costs 1."""
    H, _ = random_case()
    parts = heatmap_loss(H, torch.zeros(3, 1, 5, 6, dtype=DT))
    assert torch.isfinite(parts.heatmap)
    assert float(parts.background) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert float(parts.foreground) == pytest.approx(1.0)


def test_all_zero_heatmap() -> None:
    """A vanishing map: no background term, the foreground term's left side (F < C1) is 1; all finite."""
    H = torch.zeros(2, 1, 2, 4, 4, dtype=DT, requires_grad=True)
    mask = torch.zeros(2, 1, 4, 4, dtype=DT)
    mask[:, :, 1:3, 1:3] = 1
    parts = heatmap_loss(H, mask)
    assert float(parts.background.detach()) == 0.0
    assert float(parts.foreground.detach()) == 1.0
    parts.heatmap.backward()
    assert torch.isfinite(H.grad).all()


def test_hybrid_seam_is_continuous() -> None:
    """Hybrid foreground: the l2 side and the linear side meet at F = C1 + C2 with the same value 1."""
    mask = torch.ones(1, 1, 1, 1, dtype=DT)
    values = []
    for F_ in (6.0 - 1e-9, 6.0 + 1e-9):
        H = torch.full((1, 1, 1, 1, 1), F_, dtype=DT)
        values.append(float(heatmap_loss(H, mask, C1=1.0, C2=5.0, B=1.0, A=0.0).foreground))
    assert values[0] == pytest.approx(1.0, abs=1e-8) and values[1] == pytest.approx(1.0, abs=1e-8)
    H = torch.full((1, 1, 1, 1, 1), 50.0, dtype=DT)
    assert float(heatmap_loss(H, mask, C1=1.0, C2=5.0, A=0.0, B=1.0).foreground) == pytest.approx(45.0)
    assert float(heatmap_loss(H, mask, C1=1.0, C2=5.0, A=0.0, B=1.0, foreground="l2").foreground) == 45.0 ** 2


def test_gradcheck_heatmap_loss() -> None:
    H, mask = random_case(B=2, M=2, C=2, h=3, w=3, scale=2.0)
    H.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: heatmap_loss(h, mask, C1=(0.5, 1.0), C2=(2.0, 3.0)).heatmap, (H,))


def test_deep_supervision_levels_combined_by_gwrp() -> None:
    """Levels: the input's and each supervised layer's heatmap loss, combined by GWRP(d_loss), largest first."""
    H, mask = random_case(B=2, M=1, C=1, h=8, w=8)
    inter = {"layer1": torch.randn(2, 1, 4, 4, 4, dtype=DT), "layer2": torch.randn(2, 1, 8, 2, 2, dtype=DT) * 5}
    out = ik.ISNetOutput(torch.randn(2, 3, dtype=DT), H, None, inter)
    labels = torch.tensor([0, 2])
    cuts = {"input": 1.0, "layer1": 2.0, "layer2": 4.0}
    loss = ik.ISNetLoss(d_loss=0.5, C1=cuts, C2=20.0)(out, labels, mask)
    levels = [float(heatmap_loss(h, mask, C1=cuts[k], C2=20.0).heatmap)
              for k, h in (("input", H), *inter.items())]
    assert [float(v) for v in loss.levels] == pytest.approx(levels, rel=1e-12)
    assert float(loss.heatmap) == pytest.approx(transcribed_gwrp(levels, 0.5), rel=1e-12)
    with pytest.raises(ValueError, match="layer2"):
        ik.ISNetLoss(C1={"input": 1.0, "layer1": 2.0})(out, labels, mask)


def test_mask_errors() -> None:
    H, mask = random_case(B=2, M=1, C=1)
    out = ik.ISNetOutput(torch.randn(2, 3, dtype=DT), H)
    labels = torch.tensor([0, 1])
    loss = ik.ISNetLoss()
    with pytest.raises(ValueError, match="binary"):
        loss(out, labels, mask * 0.5)
    with pytest.raises(ValueError, match="3 images but the batch has 2"):
        loss(out, labels, torch.ones(3, 1, 5, 6))
    with pytest.raises(ValueError, match="one channel"):
        loss(out, labels, torch.ones(2, 3, 5, 6))
    with pytest.raises(TypeError, match="torch.Tensor"):
        loss(out, labels, [[1.0]])
    with pytest.raises(ValueError, match="labels"):
        loss(out, torch.tensor([0, 1, 2]), mask)
    with pytest.raises(ValueError, match="no heatmaps"):
        loss(ik.ISNetOutput(out.logits), labels, mask)
    assert torch.isfinite(loss(out, labels, mask[:, 0].bool()).total)  # (B, H, W) bool masks are accepted


def test_bad_parameters() -> None:
    for kwargs, match in (({"P": 1.5}, "P"), ({"d": -0.1}, "d"), ({"foreground": "l3"}, "foreground"),
                          ({"C1": 0.0}, "C1"), ({"C2": (1.0, float("nan"))}, "C2"), ({"nonfinite": "x"}, "nonfinite"),
                          ({"C1": {"layer1": 1.0}}, "input")):
        with pytest.raises(ValueError, match=match):
            ik.ISNetLoss(**kwargs)
    H, mask = random_case(M=2)
    with pytest.raises(ValueError, match="one value per map"):
        heatmap_loss(H, mask, C1=(1.0, 2.0, 3.0))


def _nonfinite_case():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    logits = model(x)
    H = (logits.sum() * torch.ones(2, 1, 1, 2, 2)).clone()
    H = H * torch.tensor([[[[[1.0, float("nan")], [1.0, 1.0]]]], [[[[1.0, 1.0], [1.0, 1.0]]]]])
    mask = torch.ones(2, 1, 2, 2)
    mask[:, :, 0, 0] = 0
    return model, ik.ISNetOutput(logits, H), torch.tensor([0, 1]), mask


def test_nonfinite_raises() -> None:
    _, out, labels, mask = _nonfinite_case()
    with pytest.raises(FloatingPointError, match="nonfinite='skip'"):
        ik.ISNetLoss()(out, labels, mask)
    assert not torch.isfinite(ik.ISNetLoss(nonfinite="propagate")(out, labels, mask).total)


def test_nonfinite_skip_leaves_parameters_and_momentum_unchanged() -> None:
    model, out, labels, mask = _nonfinite_case()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    loss = ik.ISNetLoss(nonfinite="skip")(out, labels, mask)
    assert not loss.finite and float(loss.total.detach()) == 0.0
    assert torch.isfinite(loss.classification)  # the parts are still reported, detached
    opt.zero_grad()
    loss.total.backward()
    opt.step()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state  # no momentum buffer was created from a corrupted step


def test_background_mass_term_is_the_share_of_relevance_outside_the_mask() -> None:
    """``mass * -log(1 - f)`` with ``f`` the background share of |H| (at E = 1), per image and map, batch mean;
    a faint relevance spread evenly over the background moves it where GWRP's mean barely moves."""
    H, mask = random_case(B=2, M=2, C=1, h=6, w=7, seed=3)
    plain = heatmap_loss(H, mask, mass=0.0)
    with_mass = heatmap_loss(H, mask, mass=2.0)
    absH, m = H.abs(), mask.unsqueeze(1)
    out, inside = (absH * (1 - m)).sum((2, 3, 4)), (absH * m).sum((2, 3, 4))
    share = out / (out + inside)
    expected = 2.0 * (-torch.log1p(-share)).mean()
    torch.testing.assert_close(with_mass.heatmap - plain.heatmap, expected)
    torch.testing.assert_close(with_mass.background, plain.background)  # the GWRP term is unchanged

    # a faint uniform spread: the background pixels at a fifth of the foreground's mean carry a third of the mass
    spread = torch.zeros(1, 1, 1, 6, 7, dtype=DT)
    fg_mask = torch.zeros(1, 1, 6, 7, dtype=DT)
    fg_mask[..., :2, :6] = 1  # 12 foreground pixels
    spread[..., :2, :6] = 1.0
    spread[..., 2:, :] = 0.2  # 30 background pixels at 0.2 hold 6 where the foreground holds 12: f = 1/3
    weak = heatmap_loss(spread, fg_mask, d=0.9, mass=0.0).background
    strong = heatmap_loss(spread, fg_mask, d=0.9, mass=1.0).heatmap - heatmap_loss(spread, fg_mask, d=0.9).heatmap
    assert float(strong) > 2 * float(weak)  # -log(2/3) = 0.41 against -log(1 - 0.2 / 1.2) = 0.18


def test_gradcheck_background_mass_term() -> None:
    H, mask = random_case(B=2, M=1, C=2, h=4, w=4, seed=5)
    H.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: heatmap_loss(h, mask, mass=1.5).heatmap, (H,))


def test_background_mass_weight_is_checked() -> None:
    with pytest.raises(ValueError, match="mass"):
        ik.ISNetLoss(mass=-1.0)
    assert ik.ISNetLoss(mass=0.5).mass == 0.5
