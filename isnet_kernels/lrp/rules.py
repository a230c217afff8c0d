"""Rule objects: how a layer family distributes relevance under one LRP rule (docs/rules.md).

A relevance pass has a *hidden* rule for the layers between the input and the logits (:class:`Epsilon`, or
:class:`ZPlus` for the dual ISNet's z+ map) and a *first-layer* rule for the layers that read the input
(:class:`ZBox`, or :class:`Epsilon`). Each rule owns its maths for the layers whose rule it changes: linear
layers (``Conv2d``/``Linear`` with a folded BatchNorm), standalone BatchNorms, residual sums and the all-logits
output. Layers whose rule does not depend on the choice (pooling, data movement, products, norms) do not ask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor

from .. import ops

if TYPE_CHECKING:  # pragma: no cover
    from .steps import BatchNormStep, LinearBlock, RuleConfig


def like(t: Tensor | None, ref: Tensor) -> Tensor | None:
    """``t`` (a parameter read live) in ``ref``'s dtype (see :func:`isnet_kernels.lrp.steps.like`)."""
    return t if t is None or t.dtype == ref.dtype else t.to(ref.dtype)


class Rule:
    """Base: the epsilon rule for every layer family (the default of every pass)."""

    name = "epsilon"

    def linear(self, step: LinearBlock, R: Tensor, saved: Any, cfg: RuleConfig) -> Tensor:
        """Epsilon through a conv/linear layer with its BatchNorm folded: ``R_in = a * W'^T (R / stab(z))``."""
        a = saved[0]
        stats = step.statistics(saved, cfg) if step.bn is not None else None
        z, w, _ = step.folded(saved, cfg, stats)
        if cfg.prims is not None and step.bn is not None and step.layer.weight.numel() > R.numel():
            # W'^T (R / t) = W^T (R gamma/sigma / t): scaling the (small) relevance costs less than folding the
            # (large) weight; the same value and gradient.
            _, invstd, live = stats
            scale = ops.batchnorm.batchnorm_scale(like(step.bn.weight, a), invstd, live)
            R = R * scale.view(-1, *([1] * (R.dim() - 3)))
            w = like(step.layer.weight, a)
        return ops.epsilon(R, a, z, w, step.geom, cfg.eps, cfg.prims)

    def batchnorm(self, step: BatchNormStep, R: Tensor, a: Tensor, mean: Tensor, invstd: Tensor, live: bool,
                  cfg: RuleConfig) -> Tensor:
        """Epsilon through a BatchNorm on its own: diagonal weight ``gamma / sigma``."""
        gamma, beta = like(step.bn.weight, a), like(step.bn.bias, a)
        z = ops.rule_preactivation(a, None, gamma, beta, mean, invstd, live)
        return ops.batchnorm_epsilon(R, a, z, gamma, invstd, cfg.eps, cfg.prims, live)

    def residual(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor | None, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        """``y = x + f``: ``R_x = x R / stab(y)``, ``R_f = f R / stab(y)`` (``y`` None: recomputed, ``x + f``)."""
        return ops.residual_split(R, x, f, y, eps=cfg.eps, prims=cfg.prims)

    def all_logits(self, a: Tensor, z: Tensor, w: Tensor, b: Tensor | None, cfg: RuleConfig) -> Tensor:
        """All logits explained together (one map): ``R_out = z``, then this rule through the last layer."""
        return ops.all_logits_output(a, z, w, cfg.eps)


class Epsilon(Rule):
    """The epsilon rule (``stab(z) = z + eps sign(z)``)."""


class ZPlus(Rule):
    """The z+ rule: only the positive weights and biases, ``R_in = a * W+^T (R / stab(W+ a + b+))`` (meant for
    non-negative layer inputs, as after ReLUs); residual sums split by the positive parts of the summands."""

    name = "zplus"

    def linear(self, step: LinearBlock, R: Tensor, saved: Any, cfg: RuleConfig) -> Tensor:
        _, w, b = step.folded(saved, cfg)
        return ops.zplus(R, saved[0], w, b, step.geom, cfg.eps, cfg.prims)

    def batchnorm(self, step: BatchNormStep, R: Tensor, a: Tensor, mean: Tensor, invstd: Tensor, live: bool,
                  cfg: RuleConfig) -> Tensor:
        # diagonal weights: W+ = max(gamma / sigma, 0), b+ = max(beta - mu gamma / sigma, 0)
        scale = ops.batchnorm.batchnorm_scale(like(step.bn.weight, a), invstd, live)
        shift = -mean.detach() * scale.detach()
        if step.bn.bias is not None:
            shift = shift + like(step.bn.bias, a).detach()
        w_pos, b_pos = scale.clamp(min=0), shift.clamp(min=0)
        view = (-1, *([1] * (a.dim() - 2)))
        z = a * w_pos.view(view) + b_pos.view(view)
        return a.unsqueeze(1) * w_pos.view(view) * R / ops.stabilize(z, cfg.eps).unsqueeze(1)

    def residual(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor | None, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        x, f = x.clamp(min=0), f.clamp(min=0)
        return ops.residual_split(R, x, f, x + f, eps=cfg.eps, prims=cfg.prims)

    def all_logits(self, a: Tensor, z: Tensor, w: Tensor, b: Tensor | None, cfg: RuleConfig) -> Tensor:
        w = w.clamp(min=0)
        z = F.linear(a, w, None if b is None else b.clamp(min=0))
        return ops.all_logits_output(a, z, w, cfg.eps)


class ZBox(Rule):
    """The Z^B rule for the layers that read the input, with the input's bounds ``cfg.low``, ``cfg.high``."""

    name = "zb"

    def linear(self, step: LinearBlock, R: Tensor, saved: Any, cfg: RuleConfig) -> Tensor:
        a = saved[0]
        z, w, b = step.folded(saved, cfg)
        low = cfg.low.reshape(1, *a.shape[1:]) if cfg.low.dim() > 0 else cfg.low
        high = cfg.high.reshape(1, *a.shape[1:]) if cfg.high.dim() > 0 else cfg.high
        return ops.zbox(R, a, z, w, b, low, high, step.geom, cfg.eps, cfg.prims)


#: The hidden-layer rules by name (``LRP(..., rule=...)``) and the first-layer rules (``first_layer=...``).
HIDDEN = {"epsilon": Epsilon(), "zplus": ZPlus()}
FIRST = {"zb": ZBox(), "epsilon": Epsilon()}
