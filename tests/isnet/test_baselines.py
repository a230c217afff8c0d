"""The alternatives to the ISNet: Right for the Right Reasons (RRR) and the ISNet with Grad x Input heatmaps.

RRR is checked against its closed form on a linear model (the input gradient of sum_k log p_k is W^T (1 - K p)),
its double-backpropagated parameter gradient against autograd of that closed form, and its effect on a toy task.
Grad x Input maps are checked against autograd per explained class, and against the logit they sum to for a
bias-free ReLU network (positive homogeneity: Euler's theorem), at the input and at a supervised layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isnet_kernels import ISNet, ISNetLoss, UnsupportedLayerError
from isnet_kernels.isnet.baselines import DEFAULT_LAMBDA, RRRLoss, log_probability_gradient

DT = torch.float64


def _masks(batch: int, size: int) -> Tensor:
    masks = torch.zeros(batch, 1, size, size, dtype=DT)
    masks[..., 1:size - 1, 2:size - 1] = 1
    return masks


# --------------------------------------------------------------------------------------------------------------
# Right for the Right Reasons


def _linear(C: int = 2, S: int = 4, K: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, K)).to(DT)


def _closed_form(W: Tensor, b: Tensor, x: Tensor, labels: Tensor, masks: Tensor, lam: float):
    """CE + lam * mean_b sum (bg * W^T (1 - K p))^2 for logits z = W x + b, as explicit tensor algebra."""
    K = W.shape[0]
    z = x.flatten(1) @ W.T + b
    p = torch.softmax(z, -1)
    grad = ((1 - K * p) @ W).view_as(x)  # d/dx sum_k (z_k - lse(z)) = W^T (1 - K p)
    bg = (1 - masks).expand_as(x)
    penalty = (bg * grad).square().flatten(1).sum(1).mean()
    ce = F.cross_entropy(z, labels)
    return ce + lam * penalty, ce, penalty, grad


def test_rrr_equals_closed_form_on_a_linear_model():
    model = _linear()
    x = torch.rand(5, 2, 4, 4, dtype=DT).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 1, 0])
    masks = _masks(5, 4)
    out = RRRLoss(lam=3.0)(model(x), x, labels, masks)
    W, b = model[1].weight, model[1].bias
    total, ce, penalty, grad = _closed_form(W, b, x.detach(), labels, masks, 3.0)
    assert penalty > 1e-3  # the background term is not vacuous
    torch.testing.assert_close(out.input_gradient, grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.penalty, penalty, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.classification, ce, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.total, total, rtol=1e-12, atol=1e-14)
    # the parameter gradient is the double-backpropagated one: autograd of the closed form
    gW, gb = torch.autograd.grad(out.total, [W, b])
    W2, b2 = W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    eW, eb = torch.autograd.grad(_closed_form(W2, b2, x.detach(), labels, masks, 3.0)[0], [W2, b2])
    torch.testing.assert_close(gW, eW, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gb, eb, rtol=1e-10, atol=1e-13)
    # lam = 0 is the plain classifier's loss, with the same penalty reported
    plain = RRRLoss(lam=0.0)(model(x), x, labels, masks)
    torch.testing.assert_close(plain.total, ce)


def test_rrr_foreground_is_not_penalised():
    """Masks all foreground: no penalty; all background: the whole input gradient's squared norm."""
    model = _linear()
    x = torch.rand(3, 2, 4, 4, dtype=DT).requires_grad_(True)
    labels = torch.tensor([0, 1, 2])
    fg = RRRLoss()(model(x), x, labels, torch.ones(3, 1, 4, 4))
    assert float(fg.penalty.detach()) == 0.0
    bg = RRRLoss()(model(x), x, labels, torch.zeros(3, 4, 4))
    torch.testing.assert_close(bg.penalty, bg.input_gradient.square().flatten(1).sum(1).mean())


def _toy() -> tuple[Tensor, Tensor, Tensor]:
    """Three classes told apart only by the background: class 1 has a bright top-left corner, class 2 a bright
    bottom-right one, class 0 neither; the foreground (the central 4x4) is noise in every class."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(48, 1, 8, 8, generator=g, dtype=DT) * 0.3
    labels = torch.arange(48) % 3
    x[labels == 1, :, :2, :2] = 1.0
    x[labels == 2, :, 6:, 6:] = 1.0
    masks = torch.zeros(48, 1, 8, 8, dtype=DT)
    masks[..., 2:6, 2:6] = 1
    return x, labels, masks


def _steps(model: nn.Module, lam: float, steps: int, opt: torch.optim.Optimizer) -> list[float]:
    x, labels, masks = _toy()
    rrr, penalties = RRRLoss(lam=lam), []
    for _ in range(steps):
        xg = x.clone().requires_grad_(True)
        out = rrr(model(xg), xg, labels, masks)
        assert torch.isfinite(out.total)
        opt.zero_grad()
        out.total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        penalties.append(float(out.penalty.detach()))
    return penalties


def test_rrr_penalty_shrinks_the_background_gradient():
    """A plain classifier on a background-only task grows its background gradient (it takes the shortcut); a few
    RRR steps from there bring it down by orders of magnitude."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).to(DT)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    plain = _steps(model, 0.0, 30, opt)
    assert plain[-1] > 100 * plain[0] and plain[-1] > 1
    rrr = _steps(model, 10.0, 10, opt)
    assert rrr[0] == pytest.approx(plain[-1], rel=0.2)
    assert max(rrr[-3:]) < 0.01 * rrr[0]


def test_rrr_errors():
    model = _linear()
    x = torch.rand(2, 2, 4, 4, dtype=DT)
    labels, masks = torch.tensor([0, 1]), _masks(2, 4)
    with pytest.raises(ValueError, match="requires_grad_"):
        RRRLoss()(model(x), x, labels, masks)
    xg = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="do not depend on x"):
        RRRLoss()(model(x.clone().requires_grad_(True)) + 0 * xg.sum(), xg.clone().detach().requires_grad_(True),
                  labels, masks)
    with torch.no_grad():
        logits = model(xg)
    with pytest.raises(ValueError, match="no autograd graph"):
        log_probability_gradient(logits, xg)
    with pytest.raises(ValueError, match="labels"):
        RRRLoss()(model(xg), xg, torch.tensor([0]), masks)
    with pytest.raises(ValueError, match="binary"):
        RRRLoss()(model(xg), xg, labels, masks * 0.5)
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="lam"):
            RRRLoss(lam=bad)
    assert RRRLoss().lam == DEFAULT_LAMBDA


# --------------------------------------------------------------------------------------------------------------
# Grad x Input heatmaps


class _BiasFree(nn.Module):
    """conv - ReLU - max-pool - conv - ReLU - average pool - linear, no biases: positively homogeneous."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _autograd_maps(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    """x * d y_{b, t_bm} / dx per map, image by image (no batch coupling), (B, M, C, H, W)."""
    maps = []
    for b in range(x.shape[0]):
        row = []
        for c in targets[b].tolist():
            xb = x[b:b + 1].detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xb)[0, c], xb)
            row.append((xb * g)[0])
        maps.append(torch.stack(row))
    return torch.stack(maps)


@pytest.mark.parametrize(("variant", "select"), [("original", "lowest"), ("selective", "lowest"),
                                                 ("selective", "highest"), ("selective", "label"),
                                                 ("stochastic", "lowest")])
def test_gradinput_equals_autograd_per_class(variant, select):
    torch.manual_seed(0)
    model = _BiasFree().to(DT).eval()
    gen = torch.Generator().manual_seed(1) if variant == "stochastic" else None
    net = ISNet(model, variant, heatmap="gradinput", select=select, generator=gen).eval()
    assert net.lrp is None and "gradinput" in repr(net)
    x = torch.rand(3, 2, 6, 6, dtype=DT)
    labels = torch.tensor([2, 0, 3])
    out = net(x, labels, heatmaps=True)
    M = 4 if variant == "original" else 1
    assert out.heatmaps.shape == (3, M, 2, 6, 6) and out.targets.shape == (3, M)
    logits = model(x)
    if variant == "selective":
        expected = {"lowest": logits.argmin(1), "highest": logits.argmax(1), "label": labels}[select]
        assert torch.equal(out.targets[:, 0], expected)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.heatmaps, _autograd_maps(model, x, out.targets), rtol=1e-12, atol=1e-14)


def test_gradinput_of_a_bias_free_relu_network_sums_to_the_logit():
    """For a positively homogeneous network, sum(x * dy_c/dx) = y_c, at the input and at a supervised layer
    (the rest of the network from that layer on is homogeneous too)."""
    torch.manual_seed(0)
    model = _BiasFree(5).to(DT).eval()
    net = ISNet(model, "original", heatmap="gradinput", deep_supervision=["features.2"]).eval()
    x = torch.rand(4, 2, 8, 8, dtype=DT)
    out = net(x, heatmaps=True)
    logits = model(x)
    assert logits.abs().min() > 1e-6
    torch.testing.assert_close(out.heatmaps.sum((2, 3, 4)), logits, rtol=1e-12, atol=1e-14)
    level = out.intermediate["features.2"]
    assert level.shape == (4, 5, 3, 4, 4)
    torch.testing.assert_close(level.sum((2, 3, 4)), logits, rtol=1e-12, atol=1e-14)
    # a model with biases does not conserve: the test above can fail
    biased = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 5)).to(DT)
    with torch.no_grad():
        biased[1].bias.fill_(0.5)
    b_out = ISNet(biased, "original", heatmap="gradinput").eval()(x, heatmaps=True)
    torch.testing.assert_close(b_out.heatmaps.sum((2, 3, 4)), biased(x) - 0.5)


def test_gradinput_is_differentiable_through_the_loss():
    """The ISNet loss on Grad x Input maps has the double-backpropagated gradient (gradcheck w.r.t. weights)."""
    torch.manual_seed(0)
    model = _BiasFree(3).to(DT).eval()
    net = ISNet(model, "selective", heatmap="gradinput", select="label", deep_supervision=True).eval()
    x = torch.rand(2, 2, 6, 6, dtype=DT)
    labels = torch.tensor([0, 2])
    masks = _masks(2, 6)
    loss_fn = ISNetLoss(C1=0.5, C2=0.5)
    names = ["model.features.0.weight", "model.fc.weight"]
    current = dict(net.named_parameters())
    params = tuple(current[n].detach().clone().requires_grad_(True) for n in names)

    def run(*ps: Tensor) -> Tensor:
        out = torch.func.functional_call(net, dict(zip(names, ps)), (x, labels), {"heatmaps": True}, strict=False)
        return loss_fn(out, labels, masks).total

    grads = torch.autograd.grad(run(*params), params)
    assert all(torch.isfinite(g).all() and g.abs().max() > 1e-8 for g in grads)
    assert torch.autograd.gradcheck(run, params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_gradinput_without_autograd_and_in_train_mode():
    torch.manual_seed(0)
    model = _BiasFree().to(DT)
    net = ISNet(model, "original", heatmap="gradinput")
    x = torch.rand(2, 2, 6, 6, dtype=DT)
    ref = net.eval()(x, heatmaps=True).heatmaps
    with torch.no_grad():
        out = net(x, heatmaps=True)
    assert not out.heatmaps.requires_grad and not out.logits.requires_grad
    torch.testing.assert_close(out.heatmaps, ref.detach())
    train = net.train()(x)  # heatmaps by default in train mode, on the graph
    assert train.heatmaps.requires_grad and train.heatmaps.shape == (2, 4, 2, 6, 6)


class _Cumsum(nn.Module):
    """A layer no relevance rule covers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.cumsum(-1)


def test_gradinput_needs_no_relevance_rules_and_dual_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _Cumsum(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(DT)
    with pytest.raises(UnsupportedLayerError):
        ISNet(model)
    net = ISNet(model, heatmap="gradinput", select="highest")
    out = net(torch.rand(2, 1, 6, 6, dtype=DT), heatmaps=True)
    assert out.heatmaps.shape == (2, 1, 1, 6, 6)
    with pytest.raises(ValueError, match="no Grad x Input counterpart"):
        ISNet(model, "dual", heatmap="gradinput")
    with pytest.raises(ValueError, match="heatmap must be one of"):
        ISNet(model, heatmap="gradcam")
    with pytest.raises(ValueError, match="does not have"):
        ISNet(model, heatmap="gradinput", deep_supervision=["nope"])
