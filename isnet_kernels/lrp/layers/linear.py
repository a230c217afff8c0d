"""Linear layers: ``Conv2d`` and ``Linear`` (modules, or ``F.conv2d`` / ``F.linear`` with a module's parameters) with
the BatchNorm after them folded in, and the standalone BatchNorm (docs/rules.md#folded-batchnorm).

:class:`LinearBlock` keeps the layer input, its bias-free output and the normalisation statistics
(:class:`LinearSaved`) and hands the pass's rule the folded layer (:class:`~isnet_kernels.lrp.rules.FoldedLayer`);
:class:`BatchNormStep` hands it the diagonal layer (:class:`~isnet_kernels.lrp.rules.BatchNormLayer`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...errors import InputError
from ..registry import REGISTRY, NodeContext
from ..rules import BatchNormLayer, FoldedLayer, RuleConfig
from ..steps import Env, Kind, Record, Step, like, pair

register = REGISTRY.register


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn(x)`` normalises with the batch's statistics (train mode, or no running statistics kept)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def batch_norm_forward(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``bn`` on ``x`` exactly as ``bn(x)`` would (running-statistics update included) and also return the
    mean and inverse standard deviation it normalised with: the batch's (biased variance) when it uses batch
    statistics, the running ones otherwise."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = uses_batch_stats(bn)
    track = not bn.training or bn.track_running_stats
    y, mean, invstd = torch.native_batch_norm(
        x, bn.weight, bn.bias, bn.running_mean if track else None, bn.running_var if track else None,
        use_batch_stats, momentum, bn.eps)
    if not use_batch_stats:
        mean, invstd = bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
    return y, mean, invstd


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The numeric, symmetric padding of a convolution (``"valid"`` is 0; ``"same"`` must be symmetric)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise InputError("asymmetric 'same' padding")
        return (total[0] // 2, total[1] // 2)
    return pair(conv.padding)


class _LinearFields(NamedTuple):
    a: Tensor  # the layer input
    x0: Tensor | None  # the layer output without its bias (None when no gradient will be asked for)
    mean: Tensor | None  # the BatchNorm's statistics of the forward (None without one)
    invstd: Tensor | None
    y: Tensor | None  # the block's output, kept as z when no gradient will be asked for (else None)
    batch: bool  # the BatchNorm normalised with the batch's statistics


class LinearSaved(Record, _LinearFields):
    """What :class:`LinearBlock`'s forward keeps, by name."""

    __slots__ = ()


class LinearBlock(Step):
    """A ``Conv2d`` or ``Linear`` with an optional BatchNorm folded into it (the ReLU after it passes relevance).

    The forward runs the layer without its bias, adds the bias, then the BatchNorm, as the modules would; it keeps
    the layer input ``a``, the bias-free output ``x0`` and the normalisation statistics (:class:`LinearSaved`),
    from which the relevance pass builds the folded layer its rule reads (:meth:`fold`), with the rule's
    pre-activation ``z`` (value = the forward's, gradient as the rule defines).
    """

    kind = Kind.LINEAR

    def __init__(self, name: str, input_name: str, layer: nn.Conv2d | nn.Linear, bn: nn.Module | None):
        self.name, self.inputs = name, [input_name]
        self.layer, self.bn = layer, bn
        self.is_conv = isinstance(layer, nn.Conv2d) or getattr(layer, "is_conv", False)
        self.first = False  # takes the Z^B rule when the config asks for it
        if self.is_conv:
            self.stride, self.dilation = pair(layer.stride), pair(layer.dilation)
            self.padding, self.groups = conv_padding(layer), layer.groups
            self.geom = ops.Geometry(False, self.stride, self.padding, self.dilation, self.groups)
        else:
            self.geom = ops.Geometry(linear=True)

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, LinearSaved]:
        a = env[self.inputs[0]]
        layer = self.layer
        if hasattr(layer, "bind"):  # F.conv2d / F.linear with parameters read from the environment
            layer.bind(env)
        if self.is_conv:
            x0 = F.conv2d(a, layer.weight, None, self.stride, self.padding, self.dilation, self.groups)
        else:
            x0 = F.linear(a, layer.weight)
        x = x0 if layer.bias is None else x0 + self._bias_view(layer.bias, x0)
        mean = invstd = None
        y = x if self.bn is None else None
        batch = False
        if self.bn is not None:
            batch = uses_batch_stats(self.bn)
            y, mean, invstd = batch_norm_forward(self.bn, x)
        if torch.is_grad_enabled():
            return y, LinearSaved(a, x0, mean, invstd, None, batch)
        return y, LinearSaved(a, None, mean, invstd, y, batch)  # no gradient will be asked for: z is y itself

    def _bias_view(self, b: Tensor, x0: Tensor) -> Tensor:
        """The bias shaped to broadcast: over the channel axis of a convolution, the last axis of a linear layer."""
        return b if not self.is_conv else b.view(-1, *([1] * (x0.dim() - 2)))

    def _statistics(self, saved: LinearSaved, cfg: RuleConfig) -> tuple[Tensor | None, Tensor | None, bool]:
        """``(mu, 1 / sigma, live)``: the BatchNorm's statistics as the rule uses them; with ``cfg.live_stats`` and
        batch statistics, recomputed from the live layer output so that they keep their gradient."""
        x0 = saved.x0
        if not (cfg.live_stats and saved.batch and x0 is not None):
            return saved.mean, saved.invstd, False
        b = like(self.layer.bias, x0)
        x = x0 if b is None else x0 + b.detach().view(-1, *([1] * (x0.dim() - 2)))
        mean, invstd = ops.batchnorm.batch_statistics(x, self.bn.eps)
        return mean, invstd, True

    def fold(self, saved: LinearSaved, cfg: RuleConfig) -> FoldedLayer:
        """The layer as its rule reads it: the rule pre-activation ``z`` and the folded weight and (detached) bias
        ``W' = W gamma / sigma``, ``b' = gamma (b - mu) / sigma + beta`` (``ops.fold_batchnorm``; ``W``, ``b``
        without a BatchNorm), with the statistics of :meth:`_statistics`."""
        a, x0, y = saved.a, saved.x0, saved.y
        stats = self._statistics(saved, cfg) if self.bn is not None else None
        w, b = like(self.layer.weight, a), like(self.layer.bias, a)
        if stats is None:
            if y is not None:
                pre = ops.Preactivation(y)
            else:  # z = x0 + b
                pre = ops.Preactivation(x0, None, None if b is None else self._bias_view(b.detach(), x0))
            return FoldedLayer(a, pre, w, None if b is None else b.detach(), self.geom, w)
        gamma, beta = like(self.bn.weight, a), like(self.bn.bias, a)
        mean, invstd, live = stats
        pre = (ops.Preactivation(y) if y is not None
               else ops.rule_preactivation(x0, b, gamma, beta, mean, invstd, live, parts=True))
        w_folded, b_folded = ops.fold_batchnorm(w, b, gamma, beta, mean, invstd, live)
        return FoldedLayer(a, pre, w_folded, b_folded, self.geom, w, gamma, invstd, live)

    def relevance(self, R: Tensor, saved: LinearSaved, cfg: RuleConfig) -> list[Tensor]:
        return [(cfg.first if self.first else cfg.hidden).linear(self.fold(saved, cfg), R, cfg)]

    def start(self, saved: LinearSaved, targets: Tensor | None, rule: str, cfg: RuleConfig) -> Tensor:
        """Relevance at this (logit-producing, linear) layer's input for the output rule ``rule``.

        ``"all"`` explains all logits together (one map, R_out = the logit vector); under the z+ rule the logits
        are those of the positive layer, ``z+ = a W'+^T + b'+``.
        """
        layer = self.fold(saved, cfg)
        if rule == "all":
            return cfg.hidden.all_logits(layer, cfg)
        if rule == "selective":
            return ops.reference_selective_output(layer.a, layer.z, layer.w, targets, cfg.eps)
        return ops.reference_logit_output(layer.a, layer.z, layer.w, targets, cfg.eps)


class _BatchNormFields(NamedTuple):
    a: Tensor  # the BatchNorm's input
    mean: Tensor  # the statistics it normalised with
    invstd: Tensor
    batch: bool  # they were the batch's


class BatchNormSaved(Record, _BatchNormFields):
    """What :class:`BatchNormStep`'s forward keeps."""

    __slots__ = ()


class BatchNormStep(Step):
    """A BatchNorm with no linear layer before it: epsilon rule with diagonal weights ``gamma / sigma``."""

    def __init__(self, name: str, input_name: str, bn: nn.Module):
        self.name, self.inputs, self.bn = name, [input_name], bn

    def forward(self, env: Env) -> tuple[Tensor, BatchNormSaved]:
        args = [env[n] for n in self.inputs]
        (a,) = args
        batch = uses_batch_stats(self.bn)
        y, mean, invstd = batch_norm_forward(self.bn, a)
        return y, BatchNormSaved(a, mean, invstd, batch)

    def relevance(self, R: Tensor, saved: BatchNormSaved, cfg: RuleConfig) -> list[Tensor]:
        a, mean, invstd, batch = saved
        live = cfg.live_stats and batch and torch.is_grad_enabled()
        if live:
            mean, invstd = ops.batchnorm.batch_statistics(a, self.bn.eps)
        layer = BatchNormLayer(a, like(self.bn.weight, a), like(self.bn.bias, a), mean, invstd, live)
        return [cfg.hidden.batchnorm(layer, R, cfg)]


def _check_conv(ctx: NodeContext, layer: nn.Conv2d) -> None:
    if layer.padding_mode != "zeros":
        raise ctx.unsupported(f"Conv2d padding_mode='{layer.padding_mode}' (only 'zeros')")
    try:
        conv_padding(layer)
    except ValueError as exc:
        raise ctx.unsupported(f"Conv2d with {exc}") from exc


@register(nn.Conv2d, nn.Linear, group="convolution, fully connected",
          description="`nn.Conv2d` (zero padding: numbers, `\"valid\"`, symmetric `\"same\"`; any stride, dilation, "
                      "groups), `nn.Linear` (on (B, F) or token tensors (B, T, F)); with or without bias: epsilon "
                      "(Z^B on the layers reading the input)")
def _linear(ctx: NodeContext):
    if isinstance(ctx.module, nn.Conv2d):
        _check_conv(ctx, ctx.module)
    return LinearBlock(ctx.name, ctx.single(), ctx.module, None)


@register(nn.modules.batchnorm._BatchNorm, group="batch normalisation",
          description="`nn.BatchNorm1d`/`2d`: folded into the `Conv2d`/`Linear` before it when that layer feeds only "
                      "it, otherwise its own diagonal epsilon layer; train and eval mode")
def _batchnorm(ctx: NodeContext):
    conv = ctx.folded_source  # the Conv2d/Linear folded into this BatchNorm, if any
    if conv is not None:
        layer = ctx.modules[conv.target]
        if isinstance(layer, nn.Conv2d):
            _check_conv(ctx, layer)
        return LinearBlock(ctx.name, conv.args[0].name, layer, ctx.module)
    return BatchNormStep(ctx.name, ctx.single(), ctx.module)


class FunctionalLayer:
    """The layer of ``F.conv2d(x, weight, bias, ...)`` / ``F.linear(x, weight, bias)`` called with parameters (or
    tensors computed from parameters alone, as a weight standardisation): what :class:`LinearBlock` reads
    of a ``Conv2d``/``Linear``, the weight and bias taken from the forward's environment (:meth:`bind`)."""

    padding_mode = "zeros"

    def __init__(self, weight: Any, bias: Any, is_conv: bool, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 groups: int = 1):
        self._weight, self._bias, self.is_conv = weight, bias, is_conv
        self.stride, self.padding, self.dilation, self.groups = pair(stride), padding, pair(dilation), groups
        if isinstance(padding, (int, tuple, list)):
            self.padding = pair(padding)
        self.env: dict[str, Any] = {}

    def bind(self, env: dict[str, Any]) -> None:
        """Take the weight and bias values of this forward (the environment itself is not kept: the forward drops
        values no later node reads, a parameter node among them, before the relevance pass reads the layer)."""
        self.env = {a.name: env[a.name] for a in (self._weight, self._bias) if isinstance(a, fx.Node)}

    def _get(self, arg: Any) -> Any:
        return self.env[arg.name] if isinstance(arg, fx.Node) else arg

    @property
    def weight(self):
        return self._get(self._weight)

    @property
    def bias(self):
        return self._get(self._bias)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.weight.shape[-2:])


@register(F.conv2d, torch.conv2d, F.linear, group="convolution, fully connected",
          description="`F.conv2d` / `F.linear` called with a module's parameters (a library's `Conv2d` subclass with "
                      "its own padding logic, a weight-standardised convolution): as `nn.Conv2d` / `nn.Linear`")
def _functional_linear(ctx: NodeContext):
    conv = ctx.node.target is not F.linear
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"] if conv else \
        ["input", "weight", "bias"]
    b = ctx.bind(names, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    ctx.constants(b)
    if not isinstance(b["weight"], fx.Node):
        raise ctx.unsupported("a weight that is not a parameter or a tensor computed from parameters")
    if conv and isinstance(b["padding"], str):
        raise ctx.unsupported("F.conv2d with string padding (give the padding as numbers)")
    padding = b["padding"] if conv else 0
    source = b["input"]
    folded = folded_pad(source) if conv and isinstance(source, fx.Node) else None
    if folded is not None:  # F.pad(x, zeros) then F.conv2d(..., padding): one zero-padded conv of x
        padding = tuple(p + q for p, q in zip(pair(padding), folded))
    layer = FunctionalLayer(b["weight"], b["bias"], conv, b["stride"], padding, b["dilation"], b["groups"])
    return LinearBlock(ctx.name, ctx.single(), layer, None)


_CONV_ARGS = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]


def folded_pad(node: fx.Node) -> tuple[int, int] | None:
    """``(pad_h, pad_w)`` when ``node`` is ``F.pad(x, [w, w, h, h])`` with zeros (constant mode, value 0) read only
    by ``F.conv2d`` calls with numeric padding as their input: the pad is then the convolution's own zero padding
    (a library's ``Conv2d`` subclass with its own padding logic), so that the convolution reads ``x`` and its rule,
    Z^B on the input included, is that of ``nn.Conv2d(padding=(h, w))``. None otherwise."""
    if node.op != "call_function" or node.target is not F.pad:
        return None
    bound = dict(zip(["input", "pad", "mode", "value"], node.args))
    bound.update(node.kwargs)
    pad, mode, value = bound.get("pad"), bound.get("mode", "constant"), bound.get("value")
    if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, (list, tuple)) or len(pad) != 4 \
            or not all(isinstance(p, int) for p in pad) or pad[0] != pad[1] or pad[2] != pad[3]:
        return None
    for user in node.users:
        if user.op != "call_function" or user.target not in (F.conv2d, torch.conv2d):
            return None
        args = dict(zip(_CONV_ARGS, user.args))
        args.update(user.kwargs)
        padding = args.get("padding", 0)
        if args.get("input") is not node or any(a is node for k, a in args.items() if k != "input") \
                or isinstance(padding, (str, fx.Node)):
            return None
    return (pad[2], pad[0])
