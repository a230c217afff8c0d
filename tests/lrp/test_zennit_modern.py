"""The new CNN layers against zennit (0.5.1) under matched rules, float64, eval mode.

Matched rules: BatchNorm merged into the conv before it (zennit's canonizer, made exact as in
``zennit_utils``); epsilon on Conv2d, Linear, average / max pooling and the residual sum (a ``zennit.layer.Sum``
in zennit's copy of the model); zennit's ``Pass`` rule on the element-wise activations (ReLU6, GELU, SiLU,
Hardswish), which is our identity rule; data movement (ShuffleNet's channel shuffle, chunk, cat) has no rule in
zennit, its gradient is the op's adjoint, which is ours. Global pooling written as a function (``x.mean``,
``F.adaptive_avg_pool2d``) cannot be hooked, so zennit's copy pools with an ``nn.AdaptiveAvgPool2d`` module.

Element-wise products (squeeze-excitation): zennit has no rule for a product of two activations (it is not a
module); left alone, its relevance is the plain gradient, ``R_x = g R_y`` and ``R_g = x R_y``: not an LRP rule
(not conservative), and not comparable with any of ours. The comparison is possible for our signal-takes-all
rule: in zennit's copy the gate is detached and the product is a module ``y = g x`` under zennit's ``Pass`` rule,
``R_x = R_y``, with no relevance to the gate (zennit's Epsilon on that module, ``R_x = x g R_y / stab(x g)``, is
``R_y`` only up to the stabiliser).
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optional import require

require("zennit")

from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import Epsilon, Pass

import isnet_kernels as ik

from .zennit_utils import ExactSequentialMergeBatchNorm, merged_batchnorms, rel_err, zennit_relevance

DT = torch.float64
TOL = 1e-6


def _torchvision():
    """torchvision (imported by tests/conftest.py beside the CPU torch)."""
    import torchvision

    return torchvision


class GateMul(nn.Module):
    """``y = g x`` with the gate ``g`` (detached) set before the call: a module zennit can put a rule on."""

    g: Tensor

    def forward(self, x):
        return x * self.g


_PASS = (nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid, GateMul)
_EPS_TYPES = (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, Sum)


def _composite(eps: float) -> Composite:
    def module_map(ctx, name, module):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return None if getattr(module, "_zennit_test_merged", False) else Epsilon(epsilon=eps)
        if isinstance(module, _EPS_TYPES):
            return Epsilon(epsilon=eps)
        if isinstance(module, _PASS):
            return Pass()
        return None

    return Composite(module_map=module_map, canonizers=[ExactSequentialMergeBatchNorm()])


def _randomize(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen, dtype=DT) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=DT) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen, dtype=DT) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen, dtype=DT) * 0.4 - 0.2)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3, generator=gen)
    return model


def _not_inplace(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False


def _compare(model: nn.Module, zmodel: nn.Module, x: Tensor, target: Tensor, eps: float, merged: int,
             sums: int = 0) -> float:
    ours = ik.explain(model, x, target, eps=eps, first_layer="epsilon")

    def check(modified):
        assert merged_batchnorms(modified) == merged
        assert sum(isinstance(m, Sum) for m in modified.modules()) == sums

    ref, zlogits = zennit_relevance(zmodel, _composite(eps), x, target, check)
    torch.testing.assert_close(zlogits, model(x).detach(), rtol=1e-10, atol=1e-12)
    return rel_err(ours, ref)


# --- MobileNet V2 (ReLU6, depthwise convs, linear bottlenecks, residual sums) ----------------------------------
def _mbv2_block_forward(self, x):
    if self.use_res_connect:
        return self.zennit_sum(torch.stack([x, self.conv(x)], dim=-1))
    return self.conv(x)


def _pooled_forward(self, x):
    x = self.zennit_pool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


def test_mobilenet_v2_matches_zennit():
    tv = _torchvision()
    from torchvision.models.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    model = _randomize(tv.models.mobilenet_v2(num_classes=4, width_mult=0.25).to(DT).eval())
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    z = copy.deepcopy(model)
    _not_inplace(z)
    sums = 0
    for m in z.modules():
        if isinstance(m, InvertedResidual) and m.use_res_connect:
            m.zennit_sum = Sum()
            m.forward = types.MethodType(_mbv2_block_forward, m)
            sums += 1
    assert sums > 0
    z.zennit_pool = nn.AdaptiveAvgPool2d(1)
    z.forward = types.MethodType(_pooled_forward, z)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(2, 3, 32, 32, dtype=DT)
    assert _compare(model, z, x, torch.tensor([1, 3]), 1e-2, n_bn, sums) < TOL


# --- ShuffleNet V2 (channel shuffle, chunk, cat, max pooling, x.mean) ------------------------------------------
def _shufflenet_forward(self, x):
    x = self.maxpool(self.conv1(x))
    x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
    return self.fc(torch.flatten(self.zennit_pool(x), 1))


def test_shufflenet_v2_matches_zennit():
    tv = _torchvision()
    torch.manual_seed(1)
    model = tv.models.shufflenetv2.ShuffleNetV2([2, 2, 2], [8, 16, 24, 32, 48], num_classes=4)
    model = _randomize(model.to(DT).eval())
    z = copy.deepcopy(model)
    _not_inplace(z)
    z.zennit_pool = nn.AdaptiveAvgPool2d(1)
    z.forward = types.MethodType(_shufflenet_forward, z)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(2, 3, 32, 32, dtype=DT)
    assert _compare(model, z, x, torch.tensor([0, 2]), 1e-2, n_bn) < TOL


# --- GELU / SiLU / Hardswish networks --------------------------------------------------------------------------
class ActNet(nn.Module):
    def __init__(self, act: type[nn.Module]):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), act(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), act(),
            nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), act(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 2 * 2, 10), act(), nn.Linear(10, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("act", [nn.GELU, nn.SiLU, nn.Hardswish])
def test_activation_networks_match_zennit(act):
    torch.manual_seed(2)
    model = _randomize(ActNet(act).to(DT).eval())
    z = copy.deepcopy(model)
    x = torch.rand(3, 3, 8, 8, dtype=DT)
    assert _compare(model, z, x, torch.tensor([0, 1, 2]), 1e-2, 3) < TOL


def test_activation_rule_is_not_the_gradient():
    """zennit without ``Pass`` on GELU takes the gradient through it: the comparison tells the two apart."""
    torch.manual_seed(2)
    model = _randomize(ActNet(nn.GELU).to(DT).eval())
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    target = torch.tensor([0, 1])
    ours = ik.explain(model, x, target, first_layer="epsilon")

    def no_pass(ctx, name, module):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return None if getattr(module, "_zennit_test_merged", False) else Epsilon(epsilon=1e-2)
        return Epsilon(epsilon=1e-2) if isinstance(module, _EPS_TYPES) else None

    ref, _ = zennit_relevance(copy.deepcopy(model), Composite(module_map=no_pass,
                                                              canonizers=[ExactSequentialMergeBatchNorm()]), x, target)
    assert rel_err(ours, ref) > 1e-3


# --- squeeze-excitation: signal takes all ----------------------------------------------------------------------
class SENet(nn.Module):
    """An EfficientNet-style block: conv-BN-SiLU, depthwise conv-BN-SiLU, squeeze-excitation (torchvision's
    ``SqueezeExcitation``: pool, 1x1 conv, SiLU, 1x1 conv, sigmoid, product), projection, head."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import SqueezeExcitation

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU())
        self.se = SqueezeExcitation(8, 4, activation=nn.SiLU)
        self.project = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.project(self.se(self.dw(self.stem(x))))), 1))


def _se_forward(self, x):
    self.zennit_mul.g = self._scale(x).detach()
    return self.zennit_mul(x)


def test_squeeze_excitation_gate_matches_zennit_with_the_gate_held_constant():
    _torchvision()
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(3)
    model = _randomize(SENet().to(DT).eval())
    z = copy.deepcopy(model)
    _not_inplace(z)
    for m in z.modules():
        if isinstance(m, SqueezeExcitation):
            m.zennit_mul = GateMul()
            m.forward = types.MethodType(_se_forward, m)
    x = torch.rand(2, 3, 6, 6, dtype=DT)
    target = torch.tensor([2, 0])
    assert _compare(model, z, x, target, 1e-2, 3) < TOL
    # the plain gradient through the product (zennit's default) is a different map
    z2 = copy.deepcopy(model)
    ref, _ = zennit_relevance(z2, _composite(1e-2), x, target)
    assert rel_err(ik.explain(model, x, target, first_layer="epsilon"), ref) > 1e-3
    # and our uniform rule differs from signal-takes-all
    _, uniform = ik.LRP(model, first_layer="epsilon", product="uniform")(x, target.view(-1, 1))
    assert rel_err(uniform[:, 0], ik.explain(model, x, target, first_layer="epsilon")) > 1e-3


def _mbconv_forward(self, x):
    result = self.block(x)
    if self.use_res_connect:
        return self.zennit_sum(torch.stack([x, self.stochastic_depth(result)], dim=-1))
    return result


def test_efficientnet_b0_matches_zennit_with_the_gates_held_constant():
    """torchvision's EfficientNet-B0 (SiLU, squeeze-excitation with a sigmoid gate, stochastic depth in eval mode,
    in-place residual sums): every rule matched as above."""
    tv = _torchvision()
    from torchvision.models.efficientnet import MBConv
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(5)
    model = _randomize(tv.models.efficientnet_b0(num_classes=3).to(DT).eval())
    z = copy.deepcopy(model)
    _not_inplace(z)
    sums = 0
    for m in z.modules():
        if isinstance(m, SqueezeExcitation):
            m.zennit_mul = GateMul()
            m.forward = types.MethodType(_se_forward, m)
        if isinstance(m, MBConv) and m.use_res_connect:
            m.zennit_sum = Sum()
            m.forward = types.MethodType(_mbconv_forward, m)
            sums += 1
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(1, 3, 32, 32, dtype=DT)
    assert _compare(model, z, x, torch.tensor([1]), 1e-2, n_bn, sums) < TOL


def test_functional_forms_are_as_the_modules():
    """``F.gelu`` / ``F.silu`` / ``F.hardswish`` written in a forward take the same rule as their modules."""

    class Functional(ActNet):
        def __init__(self, fn):
            super().__init__(nn.Identity)
            self.fn = fn

        def forward(self, x):
            f = self.features
            x = self.fn(f[1](f[0](x)))
            x = self.fn(f[4](f[3](x)))
            x = f[9](self.fn(f[7](f[6](x))))
            c = self.classifier
            return c[3](self.fn(c[1](c[0](x))))

    for act, fn in ((nn.GELU, F.gelu), (nn.SiLU, F.silu), (nn.Hardswish, F.hardswish)):
        torch.manual_seed(4)
        mod = _randomize(ActNet(act).to(DT).eval())
        fun = Functional(fn).to(DT).eval()
        fun.load_state_dict(mod.state_dict())
        x = torch.rand(2, 3, 8, 8, dtype=DT)
        a = ik.explain(mod, x, torch.tensor([0, 2]))
        b = ik.explain(fun, x, torch.tensor([0, 2]))
        torch.testing.assert_close(b, a, rtol=0, atol=0)
