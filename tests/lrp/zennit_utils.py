"""zennit as an independent reference for whole-model LRP heatmaps (used by ``test_zennit.py``).

zennit (0.5.1) computes LRP with backward hooks on modules: each rule recomputes its layer's forward and maps the
incoming gradient (the relevance at the layer output) to the relevance at its input. Relevance starts as the
gradient at the logits, so ``grad_outputs = one_hot(c) * logits`` gives the logit rule ``R = z_c e_c``.

What this module adds to stock zennit, and why:

* :class:`ExactSequentialMergeBatchNorm`, :class:`ExactNamedMergeBatchNorm`: zennit's ``MergeBatchNorm`` folds
  ``gamma / sqrt(var + eps)`` into the linear layer and turns the BatchNorm into ``(x - 0) / sqrt(1 + eps) * 1 + 0``,
  keeping its ``eps``: the canonized model is off by ``1 / sqrt(1 + 1e-5)`` per merged BatchNorm (4e-5 relative
  on a VGG-11 with BatchNorm), more than the tolerance of the comparison. These subclasses also set the merged
  BatchNorm's ``eps`` to 0 (an exact identity) and restore it on removal, and mark the merged BatchNorms so that
  the rule map leaves them without a rule (an epsilon rule on an identity would not pass relevance unchanged).
* zennit's stock ResNet block canonizers (``ResNetBasicBlockCanonizer``, ``ResNetBottleneckCanonizer``: their
  forward with a ``zennit.layer.Sum`` for the residual add), which match torchvision's ``BasicBlock`` and
  ``Bottleneck``, re-exported.
* :class:`ZBoxWithBias`: zennit's ``ZBox`` rule but with the bias counted as an input in the box, the way the
  ISNet reference code (and ``isnet_kernels``) does it. Stock ``ZBox`` clamps *all* parameters in its bound terms,
  so their biases ``b+`` and ``b-`` cancel the layer's own bias ``b = b+ + b-``: its denominator is
  ``conv(x, W) - conv(l, W+) - conv(h, W-)``, bias-free. Ours is ``conv(x, W) + b - (conv(l, W+) + l_b b+) -
  (conv(h, W-) + h_b b-)`` with ``l_b = min(l)``, ``h_b = max(h)``. The two agree exactly when the first layer's
  (BatchNorm-folded) bias is zero, for any bounds; for a non-zero bias they differ (also for ``l = 0`` and
  ``b >= 0``, where ours keeps ``+b`` in the denominator). The numerators are the same.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optional import require

require("zennit")

from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.core import BasicHook, Composite, ParamMod, Stabilizer, expand
from zennit.layer import Sum
from zennit.rules import Epsilon, NoMod, ZBox
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

from ..tv_models import DenseNet

__all__ = [
    "Epsilon",
    "ExactNamedMergeBatchNorm",
    "ExactSequentialMergeBatchNorm",
    "ResNetBasicBlockCanonizer",
    "ResNetBottleneckCanonizer",
    "ZBox",
    "ZBoxWithBias",
    "make_composite",
    "merged_batchnorms",
    "rel_err",
    "zennit_copy",
    "zennit_relevance",
]

MERGED = "_zennit_test_merged"  # attribute set on a BatchNorm while it is merged into its linear layer


class _ExactMerge:
    """Mixin for zennit's MergeBatchNorm canonizers: make the merged BatchNorm an exact identity (``eps = 0``)."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.batch_norm_eps = batch_norm.eps
        batch_norm.eps = 0.0
        setattr(batch_norm, MERGED, True)

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps
        delattr(self.batch_norm, MERGED)


class ExactSequentialMergeBatchNorm(_ExactMerge, SequentialMergeBatchNorm):
    """zennit's SequentialMergeBatchNorm (BatchNorm right after a linear layer in module order), exact."""


class ExactNamedMergeBatchNorm(_ExactMerge, NamedMergeBatchNorm):
    """zennit's NamedMergeBatchNorm (explicit ``[((linear_name,), bn_name), ...]`` pairs), exact."""


def _bias_bound(bound: float | Tensor, reduce: str) -> float | Tensor:
    if isinstance(bound, Tensor):
        return bound.amin() if reduce == "min" else bound.amax()
    return bound


class ZBoxWithBias(BasicHook):
    """zennit's ZBox with the bound terms' biases scaled by the bias's own bounds: ``l_b * b+`` and ``h_b * b-``.

    ``l_b = min(low)``, ``h_b = max(high)``; ``low``/``high`` are floats or tensors broadcastable like ZBox's
    (``(1, C, 1, 1)`` per channel). Everything else (inputs, weights, gradient mapping, reduction) is ZBox's.
    """

    def __init__(self, low, high, stabilizer=1e-6):
        low_b, high_b = _bias_bound(low, "min"), _bias_bound(high, "max")

        def sub(positive, *negatives):
            return positive - sum(negatives)

        def positive(param, name):
            return param.clamp(min=0) * (low_b if name == "bias" else 1)

        def negative(param, name):
            return param.clamp(max=0) * (high_b if name == "bias" else 1)

        stabilizer_fn = Stabilizer.ensure(stabilizer)
        super().__init__(
            input_modifiers=[
                lambda input: input,
                lambda input: expand(low, input.shape, cut_batch_dim=True).to(input),
                lambda input: expand(high, input.shape, cut_batch_dim=True).to(input),
            ],
            param_modifiers=[NoMod(), ParamMod(positive), ParamMod(negative)],
            output_modifiers=[lambda output: output] * 3,
            gradient_mapper=(lambda out_grad, outputs: (out_grad / stabilizer_fn(sub(*outputs)),) * 3),
            reducer=(lambda inputs, gradients: sub(*(i * g for i, g in zip(inputs, gradients, strict=True)))),
        )


_EPSILON_TYPES = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, Sum)


def make_composite(first_name: str, first_rule: BasicHook, eps: float, canonizers: list) -> Composite:
    """The rule map matching ``isnet_kernels``: ``first_rule`` on the module ``first_name``; Epsilon(eps) on every
    Conv2d, Linear, max/avg pool, residual Sum and every BatchNorm that is not merged; nothing on ReLU, dropout,
    identity and merged BatchNorms (relevance passes through them as the gradient)."""

    def module_map(ctx, name, module):
        if name == first_name:
            return first_rule
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return None if getattr(module, MERGED, False) else Epsilon(epsilon=eps)
        if isinstance(module, _EPSILON_TYPES):
            return Epsilon(epsilon=eps)
        return None

    return Composite(module_map=module_map, canonizers=canonizers)


def _densenet_forward(self: DenseNet, x: Tensor) -> Tensor:
    out = F.relu(self.features(x))
    out = self.zennit_gap(out)
    return self.classifier(torch.flatten(out, 1))


def zennit_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for zennit (whose canonizers edit the model in place).

    The global pooling of torchvision's DenseNet is the functional ``F.adaptive_avg_pool2d``, which zennit cannot
    hook; the copy computes the same function with an ``nn.AdaptiveAvgPool2d`` module, so the pooling takes the
    epsilon rule as in ``isnet_kernels`` (which traces the functional form).
    """
    z = copy.deepcopy(model)
    if isinstance(z, DenseNet):
        z.zennit_gap = nn.AdaptiveAvgPool2d((1, 1))
        z.forward = types.MethodType(_densenet_forward, z)
    return z


def merged_batchnorms(model: nn.Module) -> int:
    """How many BatchNorms of ``model`` are merged right now (inside a composite context)."""
    return sum(bool(getattr(m, MERGED, False)) for m in model.modules())


def zennit_relevance(zmodel: nn.Module, composite: Composite, x: Tensor, target: Tensor,
                     check=None) -> tuple[Tensor, Tensor]:
    """zennit's heatmap (B, C, H, W) of the logit of class ``target`` (B,), and the canonized model's logits.

    ``check(zmodel)`` is called inside the composite context (canonizers applied, hooks registered).
    """
    x = x.detach().clone().requires_grad_(True)
    with composite.context(zmodel) as modified:
        if check is not None:
            check(modified)
        out = modified(x)
        idx = target.view(-1, 1)
        grad = torch.zeros_like(out).scatter_(1, idx, out.gather(1, idx)).detach()
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=grad)
    return relevance.detach(), out.detach()


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """``max |ours - ref| / max |ref|``."""
    ours, ref = ours.detach(), ref.detach()
    scale = ref.abs().max()
    assert scale > 0, "the reference heatmap is all zero: the comparison would be vacuous"
    return float((ours - ref).abs().max() / scale)
