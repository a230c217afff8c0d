"""Train-mode BatchNorm statistics in the heatmap's gradient: ``batch_stats="detached"`` (reference) vs ``"live"``.

With live statistics the heatmap is, as a function of the input, the weights and the BatchNorm scales, exactly what
the relevance pass computes (only biases and BatchNorm shifts are detached, and they are not varied here), so
finite differences check it with no statistics held fixed; and it is invariant to the scale of a bias-free weight
before a BatchNorm, as the classifier is.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import isnet_kernels as ik
from isnet_kernels.ops import batch_statistics

from .models import EveryLayer, randomize_bn
from .test_engine import maps_as_function, swapped_parameters


def _model(train: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = EveryLayer().double().train(train)
    randomize_bn(model)
    return model


def _weighted_maps(lrp: ik.LRP, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)  # the same dropout masks at every call
    _, maps = lrp(x, targets)
    return maps


def test_batch_statistics_match_batchnorm():
    x = torch.randn(5, 3, 4, 6, dtype=torch.float64)
    bn = nn.BatchNorm2d(3, eps=1e-3).double().train()
    y = bn(x)
    mean, invstd = batch_statistics(x, bn.eps)
    view = (1, -1, 1, 1)
    torch.testing.assert_close((x - mean.view(view)) * invstd.view(view), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("first_layer", ["zb", "epsilon"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_live_statistics_give_the_same_heatmaps(first_layer, train):
    model = _model(train)
    x = torch.rand(4, 3, 9, 9, dtype=torch.double)
    targets = torch.tensor([[0, 2], [1, 3], [3, 0], [2, 2]])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    maps = {}
    for stats in ("detached", "live"):
        model.load_state_dict(state)
        maps[stats] = _weighted_maps(ik.LRP(model, first_layer=first_layer, bounds=(-0.5, 1.5), batch_stats=stats),
                                     x, targets)
    torch.testing.assert_close(maps["live"], maps["detached"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("first_layer", ["zb", "epsilon"])
def test_live_statistics_gradcheck_train_mode(first_layer):
    """No statistics held fixed: the finite differences see the BatchNorms renormalise every perturbed batch."""
    model = _model(train=True)
    x = torch.rand(3, 3, 9, 9, dtype=torch.double)
    targets = torch.tensor([[0, 2], [1, 3], [3, 0]])
    params = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d,
                                                                  nn.BatchNorm2d))]
    lrp = ik.LRP(model, first_layer=first_layer, bounds=(-0.5, 1.5), check_input=False, batch_stats="live")
    weight = torch.linspace(-1, 1, 3 * 2 * 3 * 9 * 9, dtype=torch.double).view(3, 2, 3, 9, 9)

    loss = maps_as_function(lrp, model, params, targets, weight)
    values = [p.detach().clone().requires_grad_() for p in params]
    inp = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (inp, *values), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_detached_statistics_fail_the_same_gradcheck():
    """The check above can fail: with the reference semantics the gradient w.r.t. a weight before a train-mode
    BatchNorm misses the statistics' dependence on it."""
    model = _model(train=True)
    x = torch.rand(3, 3, 9, 9, dtype=torch.double)
    targets = torch.tensor([[0, 2], [1, 3], [3, 0]])
    conv = model.branch[0]
    lrp = ik.LRP(model, first_layer="epsilon", check_input=False, batch_stats="detached")

    def loss(w):
        with swapped_parameters(model, [conv.weight], (w,)):
            return _weighted_maps(lrp, x, targets).pow(2).sum()

    w = conv.weight.detach().clone().requires_grad_()
    assert not torch.autograd.gradcheck(loss, (w,), eps=1e-6, atol=1e-6, rtol=1e-5, raise_exception=False)


@pytest.mark.parametrize("stats", ["detached", "live"])
def test_scale_of_weights_before_batchnorm(stats):
    """``branch[0]`` is a bias-free convolution before a BatchNorm: the classifier and the heatmap do not change
    when its weight is scaled, so a gradient along the weight itself (radial) is an artefact of detaching."""
    model = _model(train=True)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-12  # exact invariance
    x = torch.rand(4, 3, 9, 9, dtype=torch.double)
    targets = torch.tensor([[0], [1], [3], [2]])
    conv = model.branch[0]
    lrp = ik.LRP(model, first_layer="zb", batch_stats=stats)
    maps = _weighted_maps(lrp, x, targets)
    (grad,) = torch.autograd.grad(maps.abs().sum(), conv.weight)
    w = conv.weight.detach()
    radial = float((grad * w).sum() / (grad.norm() * w.norm()))  # cosine of the gradient with the weight
    with torch.no_grad():
        conv.weight.mul_(3.0)
    scaled = _weighted_maps(lrp, x, targets)
    torch.testing.assert_close(scaled, maps, rtol=1e-9, atol=1e-12)  # the function is scale-invariant
    if stats == "live":
        assert abs(radial) < 1e-8
    else:
        assert abs(radial) > 1e-3


def test_isnet_passes_batch_stats_and_rejects_bad_values():
    model = _model(train=True)
    net = ik.ISNet(model, "selective", batch_stats="live")
    assert net.lrp.batch_stats == "live" and "batch_stats='live'" in repr(net)
    with pytest.raises(ValueError, match="batch_stats must be one of"):
        ik.ISNet(model, batch_stats="frozen")
    with pytest.raises(ValueError, match="batch_stats must be one of"):
        ik.LRP(model, batch_stats="running")
