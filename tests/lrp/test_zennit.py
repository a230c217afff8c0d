"""Whole-model heatmaps of ``isnet_kernels`` against zennit under matched rules (float64, eval mode).

Rules on both sides: BatchNorm merged into the Conv2d/Linear before it; epsilon on Conv2d, Linear, max-pool,
average pools, the residual sum and the BatchNorms that follow no linear layer (DenseNet's pre-activation norms,
transition norms, ``norm5``); ReLU, dropout and identity pass relevance; the logit rule at the output; Z^B (zennit
``ZBox``) or epsilon on the first layer. The models are torchvision's ResNet (basic and bottleneck blocks), VGG
and DenseNet classes at small widths (``tests/tv_models.py``), with randomised BatchNorm statistics, scales and
shifts so that folding matters; zennit's stock ResNet block canonizers match torchvision's blocks.

Z^B and biases: zennit's stock ``ZBox`` leaves the bias out of its denominator altogether (its bound terms carry
``b+`` and ``b-``, which cancel the layer's ``b``), while ``isnet_kernels`` follows the ISNet reference code and
counts the bias as an input in the box: ``z - (conv(l, W+) + l * b+) - (conv(h, W-) + h * b-)``. The two agree
exactly when the first layer's folded bias is zero (first conv without bias or with a zero one, its BatchNorm with
``beta = 0`` and ``running_mean = 0``), whatever the bounds; that is the configuration of the stock-``ZBox`` tests.
With a non-zero bias they differ, also for ``l = 0`` and ``b >= 0`` (ours keeps ``+b`` in the denominator): the
bias terms are checked against :class:`~tests.lrp.zennit_utils.ZBoxWithBias`, zennit's ZBox with the bias bounded
by ``[min(l), max(h)]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import isnet_kernels as ik

from ..tv_models import Bottleneck, tiny_densenet, tiny_resnet, tiny_vgg
from .zennit_utils import (
    Epsilon,
    ExactNamedMergeBatchNorm,
    ExactSequentialMergeBatchNorm,
    ResNetBasicBlockCanonizer,
    ResNetBottleneckCanonizer,
    ZBox,
    ZBoxWithBias,
    make_composite,
    merged_batchnorms,
    rel_err,
    zennit_copy,
    zennit_relevance,
)

DT = torch.float64
EPS = 1e-2
TOL = 1e-6
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=DT)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=DT)


@dataclass
class Case:
    """A test model and how zennit must see it."""

    model: nn.Module
    size: int  # input height = width
    first: str  # name of the first (input-reading) conv
    first_bn: str | None  # name of its BatchNorm
    canonizers: Callable[[], list]  # fresh zennit canonizers
    merged: int  # BatchNorms zennit must merge (the rest take epsilon)
    sums: int  # residual sums the block canonizers must insert


def _vgg(batch_norm: bool) -> Case:
    # 96x96 -> 3x3 features -> AdaptiveAvgPool2d(2): uneven, overlapping windows; 64x64 -> 2x2 -> 1x1.
    size, pool = (64, 1) if batch_norm else (96, 2)
    model = tiny_vgg("vgg11", width=8, hidden=16, pool_size=pool, batch_norm=batch_norm, num_classes=5)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return Case(model, size, "features.0", "features.1" if batch_norm else None,
                lambda: [ExactSequentialMergeBatchNorm()], n_bn, 0)


def _resnet_basic() -> Case:
    # torchvision stem (7x7 stride 2, max-pool 3x3 stride 2 padding 1: overlapping windows), 2 blocks per stage:
    # identity shortcuts in layer1 and in the second block of every stage, 1x1 projections (downsample) elsewhere.
    model = tiny_resnet(width=4, num_classes=5)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return Case(model, 64, "conv1", "bn1", lambda: [ExactSequentialMergeBatchNorm(), ResNetBasicBlockCanonizer()],
                n_bn, 8)


def _resnet_bottleneck() -> Case:
    # every stage's first block has a downsample (layer1: 4 -> 16 channels, stride 1); layer1's second block not.
    model = tiny_resnet(Bottleneck, (2, 1, 1, 1), width=4, num_classes=5, small_input=True)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    return Case(model, 32, "conv1", "bn1", lambda: [ExactSequentialMergeBatchNorm(), ResNetBottleneckCanonizer()],
                n_bn, 5)


def _densenet() -> Case:
    model = tiny_densenet(growth_rate=4, block_config=(2, 2, 2), num_init_features=8, bn_size=2, num_classes=5,
                          small_input=True)
    # Merged: conv0 -> norm0 and each dense layer's conv1 -> norm2. Not merged (epsilon): norm1 (after the
    # concatenation), the transitions' norm, norm5. zennit's SequentialMergeBatchNorm would wrongly pair a dense
    # layer's conv2 with the next layer's norm1 (adjacent in module order), hence explicit pairs.
    pairs = [(("features.conv0",), "features.norm0")]
    pairs += [((f"{name}.conv1",), f"{name}.norm2") for name, m in model.named_modules()
              if type(m).__name__ == "_DenseLayer"]
    return Case(model, 32, "features.conv0", "features.norm0", lambda: [ExactNamedMergeBatchNorm(pairs)],
                len(pairs), 0)


CASES = {
    "vgg": lambda: _vgg(False),
    "vgg_bn": lambda: _vgg(True),
    "resnet_basic": _resnet_basic,
    "resnet_bottleneck": _resnet_bottleneck,
    "densenet": _densenet,
}


def _build(name: str, first_bias: str) -> Case:
    """The case's model in float64 eval mode with random parameters and statistics.

    ``first_bias``: ``"zero"`` makes the first layer's folded bias zero; ``"positive"`` makes it positive;
    ``"random"`` leaves it random (non-zero).
    """
    case = CASES[name]()
    model = case.model.to(DT).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()  # torchvision's VGG uses N(0, 0.01) linear weights: too small to be interesting
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
        modules = dict(model.named_modules())
        conv, bn = modules[case.first], modules[case.first_bn] if case.first_bn else None
        if first_bias == "zero":
            if conv.bias is not None:
                conv.bias.zero_()
            if bn is not None:
                bn.bias.zero_()
                bn.running_mean.zero_()
        elif first_bias == "positive":
            if conv.bias is not None:
                conv.bias.uniform_(0.05, 0.2)
            if bn is not None:  # folded bias gamma * (b - mu) / sigma + beta with gamma > 0, b - mu >= 0, beta > 0
                bn.running_mean.zero_()
                bn.bias.uniform_(0.05, 0.2)
    return case


def _folded_first_bias(case: Case) -> Tensor:
    modules = dict(case.model.named_modules())
    conv = modules[case.first]
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=DT)
    if case.first_bn is None:
        return b
    bn = modules[case.first_bn]
    return bn.weight.detach() * (b - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias.detach()


def _inputs(case: Case, batch: int, normalised: bool) -> Tensor:
    x = torch.rand(batch, 3, case.size, case.size, dtype=DT)
    return (x - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1) if normalised else x


def _zennit(case: Case, x: Tensor, target: Tensor, first_rule) -> Tensor:
    """zennit's heatmaps (B, C, H, W) for one class per image, checking that the canonized model is exact."""
    zmodel = zennit_copy(case.model)
    composite = make_composite(case.first, first_rule, EPS, case.canonizers())

    def check(modified: nn.Module) -> None:
        assert merged_batchnorms(modified) == case.merged
        assert sum(name.endswith("canonizer_sum") for name, _ in modified.named_modules()) == case.sums

    relevance, logits = zennit_relevance(zmodel, composite, x, target, check)
    with torch.no_grad():
        expected = case.model(x)
    assert rel_err(logits, expected) < 1e-12, "the canonized zennit model computes another function"
    return relevance


PER_CHANNEL = ((-MEAN / STD), ((1 - MEAN) / STD))  # bounds of normalised [0, 1] images, shape (C,)


@pytest.mark.parametrize("name", list(CASES))
def test_zb_default_bounds(name: str) -> None:
    """First layer Z^B with bounds (0, 1), zero folded first bias: equals zennit's ZBox(0, 1); target None and (B,)."""
    case = _build(name, first_bias="zero")
    assert _folded_first_bias(case).abs().max() == 0
    x = _inputs(case, 3, normalised=False)
    with torch.no_grad():
        predicted = case.model(x).argmax(1)
    explicit = (predicted + 1 + torch.arange(3)) % 5  # differs from the prediction for every image
    for target, zennit_target in ((None, predicted), (explicit, explicit)):
        ours = ik.explain(case.model, x, target, eps=EPS, first_layer="zb", bounds=(0.0, 1.0))
        ref = _zennit(case, x, zennit_target, ZBox(0.0, 1.0, stabilizer=EPS))
        assert ours.shape == x.shape
        err = rel_err(ours, ref)
        assert err < TOL, f"{name} target={target}: relative error {err:.3g}"


@pytest.mark.parametrize("name", list(CASES))
def test_zb_per_channel_bounds(name: str) -> None:
    """Z^B with per-channel bounds (normalised inputs), zero folded first bias: equals zennit's ZBox with (1,C,1,1)."""
    case = _build(name, first_bias="zero")
    x = _inputs(case, 2, normalised=True)
    low, high = PER_CHANNEL
    ours = ik.explain(case.model, x, None, eps=EPS, first_layer="zb", bounds=(low, high))
    with torch.no_grad():
        predicted = case.model(x).argmax(1)
    ref = _zennit(case, x, predicted, ZBox(low.view(1, 3, 1, 1), high.view(1, 3, 1, 1), stabilizer=EPS))
    err = rel_err(ours, ref)
    assert err < TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("name", list(CASES))
def test_epsilon_first_layer(name: str) -> None:
    """first_layer="epsilon", non-zero biases everywhere (the first layer's too), int target: zennit's Epsilon."""
    case = _build(name, first_bias="random")
    assert _folded_first_bias(case).abs().min() > 0
    x = _inputs(case, 2, normalised=True)
    ours = ik.explain(case.model, x, 4, eps=EPS, first_layer="epsilon")
    ref = _zennit(case, x, torch.tensor([4, 4]), Epsilon(epsilon=EPS))
    err = rel_err(ours, ref)
    assert err < TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("name", ["vgg", "densenet"])  # conv bias without BatchNorm; BatchNorm-folded bias
def test_zb_bias_terms(name: str) -> None:
    """Non-zero folded first bias: ours counts it in the box (l_b * b+, h_b * b-), matching ZBoxWithBias, for
    scalar bounds (0, 1) with a positive bias and for per-channel bounds with a mixed-sign bias; stock ZBox, which
    drops the bias, then differs clearly."""
    case = _build(name, first_bias="positive")
    assert _folded_first_bias(case).min() > 0
    x = _inputs(case, 2, normalised=False)
    target = torch.tensor([0, 3])
    ours = ik.explain(case.model, x, target, eps=EPS, first_layer="zb", bounds=(0.0, 1.0))
    err = rel_err(ours, _zennit(case, x, target, ZBoxWithBias(0.0, 1.0, stabilizer=EPS)))
    assert err < TOL, f"{name} scalar bounds: relative error {err:.3g}"
    assert rel_err(ours, _zennit(case, x, target, ZBox(0.0, 1.0, stabilizer=EPS))) > 1e-3

    case = _build(name, first_bias="random")
    folded = _folded_first_bias(case)
    assert folded.min() < 0 < folded.max()
    x = _inputs(case, 2, normalised=True)
    low, high = PER_CHANNEL
    ours = ik.explain(case.model, x, target, eps=EPS, first_layer="zb", bounds=(low, high))
    ref = _zennit(case, x, target, ZBoxWithBias(low.view(1, 3, 1, 1), high.view(1, 3, 1, 1), stabilizer=EPS))
    err = rel_err(ours, ref)
    assert err < TOL, f"{name} per-channel bounds: relative error {err:.3g}"


def test_lrp_targets_and_all() -> None:
    """``LRP`` with targets (B, M=2) and "all": every map equals zennit's for that class; logits are the model's."""
    case = _build("resnet_basic", first_bias="zero")
    x = _inputs(case, 2, normalised=True)
    low, high = PER_CHANNEL
    lrp = ik.LRP(case.model, eps=EPS, first_layer="zb", bounds=(low, high))
    rule = ZBox(low.view(1, 3, 1, 1), high.view(1, 3, 1, 1), stabilizer=EPS)
    refs = [_zennit(case, x, torch.full((2,), k), rule) for k in range(5)]  # (B, C, H, W) per class
    with torch.no_grad():
        expected_logits = case.model(x)

    targets = torch.tensor([[3, 0], [1, 1]])
    logits, maps = lrp(x, targets)
    assert maps.shape == (2, 2, *x.shape[1:])
    assert rel_err(logits, expected_logits) < 1e-12
    for b in range(2):
        for m in range(2):
            err = rel_err(maps[b, m], refs[int(targets[b, m])][b])
            assert err < TOL, f"targets[{b}, {m}]: relative error {err:.3g}"

    logits, maps = lrp(x, "all")
    assert maps.shape == (2, 5, *x.shape[1:])
    assert rel_err(logits, expected_logits) < 1e-12
    for k in range(5):
        err = rel_err(maps[:, k], refs[k])
        assert err < TOL, f"class {k}: relative error {err:.3g}"
