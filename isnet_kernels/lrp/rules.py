"""Rule objects: how a layer family distributes relevance under one LRP rule (docs/rules.md).

A relevance pass has a *hidden* rule for the layers between the input and the logits (:class:`Epsilon`, or
:class:`ZPlus` for the dual ISNet's z+ map) and a *first-layer* rule for the layers that read the input
(:class:`ZBox`, or :class:`Epsilon`); :class:`RuleConfig` holds both with the pass's other settings. Each rule
chooses the op of ``ops/`` for the layers whose rule it changes: linear layers (``Conv2d``/``Linear`` with a folded
BatchNorm), standalone BatchNorms, residual sums and the all-logits output. Layers whose rule does not depend on
the choice (pooling, data movement, products, norms) do not ask.

A step hands its rule the values it reads as a record, :class:`FoldedLayer` or :class:`BatchNormLayer`, built from
what the step's forward kept; rules read nothing else (no module, no step), so data flows one way: steps import
rules, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .. import ops


@dataclass(frozen=True)
class FoldedLayer:
    """A ``Conv2d`` or ``Linear`` with its BatchNorm folded in, as a rule reads it (built by the step, see
    docs/rules.md#folded-batchnorm).

    ``pre`` is the rule's pre-activation ``z`` given by its parts (:class:`~isnet_kernels.ops.Preactivation`: the
    bias-free output ``x0`` and the per-channel scale and shift; ``z`` the forward's output in value, with the rule's
    gradient), so that the epsilon op keeps ``x0`` rather than a ``z`` of its own; ``w`` and ``b`` the
    folded weight and (detached) bias ``W' = W gamma / sigma``, ``b' = gamma (b - mu) / sigma + beta`` (``W`` and
    ``b`` themselves without a BatchNorm). ``weight`` is the layer's own ``W``; ``gamma``, ``invstd`` (``1 /
    sigma``) and ``live`` (statistics keep their gradient) are the BatchNorm's, ``invstd`` None without one.
    Parameters are in ``a``'s dtype.
    """

    a: Tensor  # the layer input (B, ...)
    pre: ops.Preactivation  # the rule's pre-activation z (B, ...), by its parts
    w: Tensor  # W'
    b: Tensor | None  # b', detached
    geom: ops.Geometry
    weight: Tensor  # W
    gamma: Tensor | None = None
    invstd: Tensor | None = None
    live: bool = False

    @property
    def z(self) -> Tensor:
        """The rule's pre-activation, built from its parts."""
        return self.pre.value()


@dataclass(frozen=True)
class BatchNormLayer:
    """A BatchNorm with no linear layer before it, as a rule reads it: the diagonal layer ``y = (gamma / sigma) a +
    (beta - mu gamma / sigma)`` (docs/rules.md#standalone-batchnorm), parameters in ``a``'s dtype, the statistics
    ``mean``, ``invstd = 1 / sigma`` those the rule uses (``live``: they keep their gradient)."""

    a: Tensor  # the BatchNorm input (B, C, ...)
    gamma: Tensor | None
    beta: Tensor | None
    mean: Tensor
    invstd: Tensor
    live: bool


class Rule:
    """Base: the epsilon rule for every layer family (the default of every pass)."""

    name = "epsilon"

    def linear(self, layer: FoldedLayer, R: Tensor, cfg: RuleConfig) -> Tensor:
        """Epsilon through a conv/linear layer with its BatchNorm folded: ``R_in = a * W'^T (R / stab(z))``.

        On a backend's kernels, when the weight has more elements than the relevance, the relevance is scaled
        instead of the weight folded (:func:`~isnet_kernels.ops.batchnorm.scale_relevance`)."""
        w = layer.w
        if cfg.prims is not None and layer.invstd is not None and layer.weight.numel() > R.numel():
            R, w = ops.scale_relevance(R, layer.gamma, layer.invstd, layer.live), layer.weight
        return ops.epsilon(R, layer.a, layer.pre, w, layer.geom, cfg.eps, cfg.prims)  # z rebuilt, not kept

    def batchnorm(self, layer: BatchNormLayer, R: Tensor, cfg: RuleConfig) -> Tensor:
        """Epsilon through a BatchNorm on its own: diagonal weight ``gamma / sigma``."""
        a = layer.a
        z = ops.rule_preactivation(a, None, layer.gamma, layer.beta, layer.mean, layer.invstd, layer.live)
        return ops.batchnorm_epsilon(R, a, z, layer.gamma, layer.invstd, cfg.eps, cfg.prims, layer.live)

    def residual(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor | None, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        """``y = x + f``: ``R_x = x R / stab(y)``, ``R_f = f R / stab(y)`` (``y`` None: recomputed, ``x + f``)."""
        return ops.residual_split(R, x, f, y, eps=cfg.eps, prims=cfg.prims)

    def all_logits(self, layer: FoldedLayer, cfg: RuleConfig) -> Tensor:
        """All logits explained together (one map): ``R_out = z``, then this rule through the last layer."""
        return ops.all_logits_output(layer.a, layer.z, layer.w, cfg.eps)


class Epsilon(Rule):
    """The epsilon rule (``stab(z) = z + eps sign(z)``)."""


class ZPlus(Rule):
    """The z+ rule: only the positive weights and biases, ``R_in = a * W+^T (R / stab(W+ a + b+))`` (meant for
    non-negative layer inputs, as after ReLUs); residual sums split by the positive parts of the summands."""

    name = "zplus"

    def linear(self, layer: FoldedLayer, R: Tensor, cfg: RuleConfig) -> Tensor:
        return ops.zplus(R, layer.a, layer.w, layer.b, layer.geom, cfg.eps, cfg.prims)

    def batchnorm(self, layer: BatchNormLayer, R: Tensor, cfg: RuleConfig) -> Tensor:
        return ops.reference_batchnorm_zplus(R, layer.a, layer.gamma, layer.beta, layer.mean, layer.invstd,
                                             cfg.eps, layer.live)

    def residual(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor | None, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        """``R_x = x+ R / stab(x+ + f+)``, ``R_f = f+ R / stab(x+ + f+)``; ``x+ = max(x, 0)``, ``f+ = max(f, 0)``."""
        return ops.zplus_residual_split(R, x, f, eps=cfg.eps, prims=cfg.prims)

    def all_logits(self, layer: FoldedLayer, cfg: RuleConfig) -> Tensor:
        """``R_out = z+ = W'+ a + b'+`` (the positive layer's logits), then epsilon through ``W'+``."""
        return ops.zplus_all_logits(layer.a, layer.w, layer.b, cfg.eps)


class ZBox(Rule):
    """The Z^B rule for the layers that read the input, with the input's bounds ``cfg.low``, ``cfg.high``."""

    name = "zb"

    def linear(self, layer: FoldedLayer, R: Tensor, cfg: RuleConfig) -> Tensor:
        a = layer.a
        low = cfg.low.reshape(1, *a.shape[1:]) if cfg.low.dim() > 0 else cfg.low
        high = cfg.high.reshape(1, *a.shape[1:]) if cfg.high.dim() > 0 else cfg.high
        return ops.zbox(R, a, layer.z, layer.w, layer.b, low, high, layer.geom, cfg.eps, cfg.prims)


@dataclass
class RuleConfig:
    """Run-time settings of a relevance pass: the rule objects and the options of the rules that have them."""

    eps: float
    first: Rule = field(default_factory=Epsilon)  # the layers reading the input: ZBox or Epsilon
    hidden: Rule = field(default_factory=Epsilon)  # every other linear layer: Epsilon, or ZPlus (dual ISNet)
    live_stats: bool = False  # train-mode BatchNorm statistics keep their gradient (ops.batchnorm docstring)
    product: str = "gate"  # x * gate(...): "gate" (signal takes all) or "uniform" (AttnLRP's half and half)
    attention: str = "attnlrp"  # "attnlrp" (softmax and matmul rules) or "cp" (attention weights held constant)
    low: Tensor | None = None  # bounds broadcast to (1, C, H, W) of the input, for Z^B
    high: Tensor | None = None
    prims: ops.TorchPrimitives | None = None  # the backend's kernels; None: the autograd reference ops


#: The hidden-layer rules by name (``LRP(..., rule=...)``) and the first-layer rules (``first_layer=...``).
HIDDEN = {"epsilon": Epsilon(), "zplus": ZPlus()}
FIRST = {"zb": ZBox(), "epsilon": Epsilon()}
