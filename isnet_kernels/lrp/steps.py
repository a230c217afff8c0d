"""The steps of a compiled relevance program: one per traced node that carries relevance.

Each step runs its node's forward computation (``forward``), keeps exactly what its rule needs (``saved``,
references to tensors the forward produced, never copies), and, in the relevance pass, maps the relevance at
its output, shape (B, M, ...), to relevance at its tensor inputs (``relevance``). A step whose rule the pass's
:class:`~isnet_kernels.lrp.rules.RuleConfig` chooses (linear layers, BatchNorms, residual sums) hands the chosen
rule the values it reads as a record (:class:`~isnet_kernels.lrp.rules.FoldedLayer`, ...): steps import rules,
rules never import steps.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..errors import InputError
from .rules import BatchNormLayer, FoldedLayer, RuleConfig


def like(t: Tensor | None, ref: Tensor) -> Tensor | None:
    """``t`` (a parameter read live) in ``ref``'s floating dtype: a half-precision model's weights meet the
    float32 relevance pass (differentiably)."""
    return t if t is None or t.dtype == ref.dtype else t.to(ref.dtype)


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


class Step:
    """One node of the relevance program."""

    name: str  # the fx node's name
    inputs: list[str]  # names of the tensor nodes it reads, in the order ``relevance`` returns them

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:  # pragma: no cover - interface
        """Compute the node's value from the values of earlier nodes; return it and what ``relevance`` needs."""
        raise NotImplementedError

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> Sequence[Tensor | None]:  # pragma: no cover
        raise NotImplementedError


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The numeric, symmetric padding of a convolution (``"valid"`` is 0; ``"same"`` must be symmetric)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise InputError("asymmetric 'same' padding")
        return (total[0] // 2, total[1] // 2)
    return _pair(conv.padding)


class _LinearFields(NamedTuple):
    a: Tensor  # the layer input
    x0: Tensor | None  # the layer output without its bias (None when no gradient will be asked for)
    mean: Tensor | None  # the BatchNorm's statistics of the forward (None without one)
    invstd: Tensor | None
    y: Tensor | None  # the block's output, kept as z when no gradient will be asked for (else None)
    batch: bool  # the BatchNorm normalised with the batch's statistics


class LinearSaved(_LinearFields):
    """What :class:`LinearBlock`'s forward keeps, by name. Built from its fields (``LinearSaved(a, x0, ...)``) or,
    as a tuple is, from one iterable of them (``LinearSaved(values)``), so that the engine's walks over saved state
    (``upcast``, ``_step_bytes``), which rebuild and count tuples, treat it as the tuple it is."""

    __slots__ = ()

    def __new__(cls, *fields: Any) -> LinearSaved:
        if len(fields) == 1:
            fields = tuple(fields[0])
        return super().__new__(cls, *fields)


class LinearBlock(Step):
    """A ``Conv2d`` or ``Linear`` with an optional BatchNorm folded into it (the ReLU after it passes relevance).

    The forward runs the layer without its bias, adds the bias, then the BatchNorm, as the modules would; it keeps
    the layer input ``a``, the bias-free output ``x0`` and the normalisation statistics (:class:`LinearSaved`),
    from which the relevance pass builds the folded layer its rule reads (:meth:`fold`), with the rule's
    pre-activation ``z`` (value = the forward's, gradient as the rule defines).
    """

    def __init__(self, name: str, input_name: str, layer: nn.Conv2d | nn.Linear, bn: nn.Module | None):
        self.name, self.inputs = name, [input_name]
        self.layer, self.bn = layer, bn
        self.is_conv = isinstance(layer, nn.Conv2d) or getattr(layer, "is_conv", False)
        self.first = False  # takes the Z^B rule when the config asks for it
        if self.is_conv:
            self.stride, self.dilation = _pair(layer.stride), _pair(layer.dilation)
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


class BatchNormStep(Step):
    """A BatchNorm with no linear layer before it: epsilon rule with diagonal weights ``gamma / sigma``."""

    def __init__(self, name: str, input_name: str, bn: nn.Module):
        self.name, self.inputs, self.bn = name, [input_name], bn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        (a,) = args
        batch = uses_batch_stats(self.bn)
        y, mean, invstd = batch_norm_forward(self.bn, a)
        return y, (a, mean, invstd, batch)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, mean, invstd, batch = saved
        live = cfg.live_stats and batch and torch.is_grad_enabled()
        if live:
            mean, invstd = ops.batchnorm.batch_statistics(a, self.bn.eps)
        layer = BatchNormLayer(a, like(self.bn.weight, a), like(self.bn.bias, a), mean, invstd, live)
        return [cfg.hidden.batchnorm(layer, R, cfg)]


class PassStep(Step):
    """ReLU, dropout, identity, ``contiguous``: relevance passes unchanged (docs/rules.md#relu-dropout-identity)."""

    def __init__(self, name: str, input_name: str, fn: Callable[[Tensor], Tensor]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        return self.fn(args[0]), None

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        return [R]


class ReshapeStep(Step):
    """``flatten``, ``view``, ``reshape``: the relevance takes the input's shape back.

    ``fn`` evaluates the node from the environment (its sizes may come from shape nodes such as ``x.size(0)``).
    """

    def __init__(self, name: str, input_name: str, fn: Callable[[dict[str, Any]], Tensor]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out = self.fn(env)
        if out.shape[0] != args[0].shape[0]:
            raise InputError(f"node '{self.name}' reshapes the batch axis ({tuple(args[0].shape)} -> "
                             f"{tuple(out.shape)}); relevance needs the batch axis kept first")
        return out, args[0].shape

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        return [R.reshape(*R.shape[:2], *saved[1:])]


class MaxPoolStep(Step):
    """``max_pool2d`` / ``adaptive_max_pool2d``: winner-take-all at the forward's argmax indices."""

    def __init__(self, name: str, input_name: str, fn: Callable[[Tensor], tuple[Tensor, Tensor]]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out, indices = self.fn(args[0])
        return out, (out, indices, args[0].shape[-2:])

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        out, indices, size = saved
        return [ops.maxpool(R, out, indices, size, cfg.eps, cfg.prims)]


class AvgPoolStep(Step):
    """``avg_pool2d``: epsilon rule with the exact adjoint of the pooling."""

    def __init__(self, name: str, input_name: str, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
                 count_include_pad: bool, divisor_override: int | None):
        self.name, self.inputs = name, [input_name]
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None or stride == [] or stride == () else _pair(stride)
        self.padding, self.ceil_mode = _pair(padding), ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        a = args[0]
        out = F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                           self.divisor_override)
        return out, (a, out)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, out = saved
        return [ops.avgpool(R, a, out, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override, cfg.eps, cfg.prims)]


class AdaptiveAvgPoolStep(Step):
    """``adaptive_avg_pool2d``: epsilon rule with the exact adjoint of the pooling."""

    def __init__(self, name: str, input_name: str, output_size: Any):
        self.name, self.inputs, self.output_size = name, [input_name], output_size

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out = F.adaptive_avg_pool2d(args[0], self.output_size)
        return out, (args[0], out)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        return [ops.adaptive_avgpool(R, *saved, eps=cfg.eps, prims=cfg.prims)]


class MeanStep(Step):
    """``x.mean(dims)`` over spatial axes (global average pooling written by hand): epsilon rule."""

    def __init__(self, name: str, input_name: str, dims: Sequence[int], keepdim: bool):
        self.name, self.inputs, self.dims, self.keepdim = name, [input_name], tuple(dims), keepdim

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        a = args[0]
        dims = tuple(sorted(d % a.dim() for d in self.dims))
        if 0 in dims:
            raise InputError(f"node '{self.name}' averages over the batch axis; relevance needs it kept")
        out = a.mean(dims, keepdim=self.keepdim)
        return out, (a, out, dims)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, out, dims = saved
        return [ops.mean(R, a, out, dims, cfg.eps, cfg.prims)]


class SumStep(Step):
    """``x.sum(dims)`` / ``torch.sum`` over non-batch axes (ResNeSt's sum over its radix splits): the epsilon rule
    of a linear layer with weights 1, ``R_in = x R / stab(z)`` broadcast back over the summed axes
    (docs/rules.md#sum-over-axes). ``call`` evaluates the node as the model does (its ``dtype`` argument too)."""

    def __init__(self, name: str, input_name: str, dims: Sequence[int], call: Callable[[dict[str, Any]], Tensor]):
        self.name, self.inputs, self.dims, self.call = name, [input_name], tuple(dims), call

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        a = env[self.inputs[0]]
        dims = tuple(sorted({d % a.dim() for d in self.dims}))
        if 0 in dims:
            raise InputError(f"node '{self.name}' sums over the batch axis; relevance needs it kept")
        out = self.call(env)
        return out, (a, out, dims)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, out, dims = saved
        return [ops.reduce_sum(R, a, like(out, a), dims, cfg.eps, cfg.prims)]


class AddStep(Step):
    """Residual addition ``y = x + f`` (or ``y = x - f``, the summand ``-f``): relevance split in proportion to
    the summands."""

    def __init__(self, name: str, inputs: list[str], subtract: bool = False):
        self.name, self.inputs, self.subtract = name, inputs, subtract

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        x, f = args
        if x.shape != f.shape:
            raise InputError(f"node '{self.name}' adds tensors of shapes {tuple(x.shape)} and {tuple(f.shape)}; "
                             "the residual rule needs equal shapes")
        if self.subtract:
            y = operator.sub(x, f)
            return y, (x, -f, None)
        y = operator.add(x, f)
        return y, (x, f, None)  # y = x + f is recomputed where the rule needs it (ops.residual_split), not kept

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        return cfg.hidden.residual(R, *saved, cfg)


class TupleNode:
    """A node whose value is a tuple of tensors (``x.chunk(n)``): no step of its own; each ``parts[i]`` that reads
    it becomes a step through ``part(ctx, i)``."""

    def __init__(self, name: str, part: Callable[[Any, Any], Step]):
        self.name, self.part = name, part


class CatStep(Step):
    """``torch.cat(parts, dim)``: the relevance is split back into the parts."""

    def __init__(self, name: str, inputs: list[str], dim: int):
        self.name, self.inputs, self.dim = name, inputs, dim

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out = torch.cat(args, self.dim)
        return out, [t.shape[self.dim] for t in args]

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> tuple[Tensor, ...]:
        return ops.reference_concat_split(R, saved, self.dim)
