"""Pooling: max pooling (winner takes all at the forward's argmax) and average pooling, adaptive and by hand
(``x.mean(dims)``), under the epsilon rule with the exact adjoint of the pooling (docs/rules.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...errors import InputError
from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import Record, Step, pair

register = REGISTRY.register


_MAXPOOL_ARGS = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]


_AVGPOOL_ARGS = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]


class _MaxPoolFields(NamedTuple):
    out: Tensor  # the pooled output
    indices: Tensor  # the argmax of each window
    size: Any  # the input's spatial size (H, W)


class MaxPoolSaved(Record, _MaxPoolFields):
    """What :class:`MaxPoolStep`'s forward keeps."""

    __slots__ = ()


class _PoolFields(NamedTuple):
    a: Tensor  # the input
    out: Tensor  # the output


class PoolSaved(Record, _PoolFields):
    """What an average pooling's forward keeps: its input and output."""

    __slots__ = ()


class _ReduceFields(NamedTuple):
    a: Tensor  # the input
    out: Tensor  # the mean or sum
    dims: tuple[int, ...]  # the reduced axes, sorted, non-negative


class ReduceSaved(Record, _ReduceFields):
    """What a mean or sum over axes keeps: its input, its output and the axes."""

    __slots__ = ()


class MaxPoolStep(Step):
    """``max_pool2d`` / ``adaptive_max_pool2d``: winner-take-all at the forward's argmax indices."""

    def __init__(self, name: str, input_name: str, fn: Callable[[Tensor], tuple[Tensor, Tensor]]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out, indices = self.fn(args[0])
        return out, MaxPoolSaved(out, indices, args[0].shape[-2:])

    def relevance(self, R: Tensor, saved: MaxPoolSaved, cfg: RuleConfig) -> list[Tensor]:
        out, indices, size = saved
        return [ops.maxpool(R, out, indices, size, cfg.eps, cfg.prims)]


class AvgPoolStep(Step):
    """``avg_pool2d``: epsilon rule with the exact adjoint of the pooling."""

    def __init__(self, name: str, input_name: str, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
                 count_include_pad: bool, divisor_override: int | None):
        self.name, self.inputs = name, [input_name]
        self.kernel_size = pair(kernel_size)
        self.stride = self.kernel_size if stride is None or stride == [] or stride == () else pair(stride)
        self.padding, self.ceil_mode = pair(padding), ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        a = args[0]
        out = F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                           self.divisor_override)
        return out, PoolSaved(a, out)

    def relevance(self, R: Tensor, saved: PoolSaved, cfg: RuleConfig) -> list[Tensor]:
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
        return out, PoolSaved(args[0], out)

    def relevance(self, R: Tensor, saved: PoolSaved, cfg: RuleConfig) -> list[Tensor]:
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
        return out, ReduceSaved(a, out, dims)

    def relevance(self, R: Tensor, saved: ReduceSaved, cfg: RuleConfig) -> list[Tensor]:
        a, out, dims = saved
        return [ops.mean(R, a, out, dims, cfg.eps, cfg.prims)]


@register(nn.MaxPool2d, nn.AdaptiveMaxPool2d, F.max_pool2d, F.adaptive_max_pool2d, group="max pooling",
          description="`nn.MaxPool2d`, `F.max_pool2d` (any kernel, stride, padding, dilation, `ceil_mode`), "
                      "`nn.AdaptiveMaxPool2d`, `F.adaptive_max_pool2d`: winner takes all")
def _maxpool(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise ctx.unsupported("MaxPool2d(return_indices=True) returns a tuple")
        return MaxPoolStep(ctx.name, ctx.single(), lambda x, m=mod: F.max_pool2d(
            x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode, return_indices=True))
    if isinstance(mod, nn.AdaptiveMaxPool2d):
        return MaxPoolStep(ctx.name, ctx.single(), lambda x, m=mod: F.adaptive_max_pool2d(x, m.output_size, True))
    if target is F.max_pool2d:
        b = ctx.bind(_MAXPOOL_ARGS, {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                                     "return_indices": False})
        if b["return_indices"]:
            raise ctx.unsupported("max_pool2d(return_indices=True) returns a tuple")
        ctx.constants(b)
        return MaxPoolStep(ctx.name, ctx.single(), lambda x: F.max_pool2d(
            x, b["kernel_size"], b["stride"], b["padding"], b["dilation"], ceil_mode=b["ceil_mode"],
            return_indices=True))
    b = ctx.bind(["input", "output_size"])
    ctx.constants(b)
    return MaxPoolStep(ctx.name, ctx.single(), lambda x: F.adaptive_max_pool2d(x, b["output_size"], True))


@register(nn.AvgPool2d, nn.AdaptiveAvgPool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, "mean",
          group="average pooling",
          description="`nn.AvgPool2d`, `F.avg_pool2d` (all options), `nn.AdaptiveAvgPool2d`, "
                      "`F.adaptive_avg_pool2d`, `x.mean(dims)` / `torch.mean` over non-batch axes: epsilon with the "
                      "exact adjoint")
def _avgpool(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, nn.AvgPool2d):
        return AvgPoolStep(ctx.name, ctx.single(), mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                             mod.count_include_pad, mod.divisor_override)
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return AdaptiveAvgPoolStep(ctx.name, ctx.single(), mod.output_size)
    if target is F.avg_pool2d:
        b = ctx.bind(_AVGPOOL_ARGS, {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                                     "divisor_override": None})
        ctx.constants(b)
        return AvgPoolStep(ctx.name, ctx.single(), b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"],
                             b["count_include_pad"], b["divisor_override"])
    if target is F.adaptive_avg_pool2d:
        b = ctx.bind(["input", "output_size"])
        ctx.constants(b)
        return AdaptiveAvgPoolStep(ctx.name, ctx.single(), b["output_size"])
    args, kwargs = ctx.node.args[1:], ctx.node.kwargs
    dims = args[0] if args else kwargs.get("dim")
    keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
    if dims is None or isinstance(dims, fx.Node):
        raise ctx.unsupported("mean over all axes (or computed axes); average over non-batch axes only")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if any(d == 0 for d in dims):
        raise ctx.unsupported("mean over the batch axis")
    return MeanStep(ctx.name, ctx.single(), dims, bool(keepdim))
