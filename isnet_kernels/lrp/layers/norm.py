"""Rules of the normalisations: LayerNorm and GroupNorm with the standard deviation held constant
(docs/rules.md#rules-for-modern-layers), and BatchNorm called as a function with a module's parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import Env, Record, Step


class _NormFields(NamedTuple):
    x: Tensor  # the input
    y: Tensor  # the output
    mean: Tensor  # the statistics it normalised with
    invstd: Tensor
    gamma: Tensor | None  # the affine parameters (None without)
    beta: Tensor | None


class NormSaved(Record, _NormFields):
    """What :class:`NormStep`'s forward keeps."""

    __slots__ = ()


class _FunctionalBatchNormFields(NamedTuple):
    a: Tensor  # the input
    mean: Tensor  # the statistics it normalised with
    invstd: Tensor
    batch: bool  # they were the batch's
    gamma: Tensor | None  # the affine parameters (None without)
    beta: Tensor | None


class FunctionalBatchNormSaved(Record, _FunctionalBatchNormFields):
    """What :class:`FunctionalBatchNormStep`'s forward keeps."""

    __slots__ = ()


class NormStep(Step):
    """A LayerNorm or GroupNorm: the epsilon rule through the linear map it is with ``sigma`` constant."""

    def __init__(self, name: str, input_name: str, layout: ops.NormLayout,
                 run: Callable[[Tensor, Env], tuple[Tensor, Tensor, Tensor]],
                 affine: Callable[[Env], tuple[Tensor | None, Tensor | None]]):
        self.name, self.inputs, self.layout, self.run, self.affine = name, [input_name], layout, run, affine

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        x = env[self.inputs[0]]
        y, mean, invstd = self.run(x, env)
        gamma, beta = self.affine(env)
        return y, NormSaved(x, y, mean, invstd, gamma, beta)

    def relevance(self, R: Tensor, saved: NormSaved, cfg: RuleConfig) -> list[Tensor]:
        x, y, mean, invstd, gamma, beta = saved
        z = ops.rule_norm_preactivation(x, gamma, beta, mean, invstd, self.layout) if torch.is_grad_enabled() else y
        return [ops.norm_epsilon(R, x, z, gamma, invstd, self.layout, cfg.eps, cfg.prims)]


def _value(arg: Any) -> Callable[[Env], Any]:
    if isinstance(arg, fx.Node):
        return lambda env: env[arg.name]
    return lambda env: arg


@REGISTRY.register(nn.LayerNorm, F.layer_norm, nn.GroupNorm, F.group_norm, group="layer and group normalisation",
                   description="`nn.LayerNorm` / `F.layer_norm` over the last axes (ViT, ConvNeXt; channels-first "
                               "`LayerNorm2d` written as permute, layer_norm, permute), `nn.GroupNorm` / "
                               "`F.group_norm`: epsilon with the standard deviation held constant, the scale trained "
                               "through the heatmap")
def _norm(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, nn.LayerNorm):
        shape, m = tuple(mod.normalized_shape), mod
        return NormStep(ctx.name, ctx.single(), ops.NormLayout.layer_norm(len(shape)),
                        lambda x, env: ops.layer_norm_forward(x, shape, m.weight, m.bias, m.eps),
                        lambda env: (m.weight, m.bias))
    if isinstance(mod, nn.GroupNorm):
        m = mod
        return NormStep(ctx.name, ctx.single(), ops.NormLayout.group_norm(m.num_groups),
                        lambda x, env: ops.group_norm_forward(x, m.num_groups, m.weight, m.bias, m.eps),
                        lambda env: (m.weight, m.bias))
    if target is F.layer_norm:
        b = ctx.bind(["input", "normalized_shape", "weight", "bias", "eps"], {"weight": None, "bias": None,
                                                                              "eps": 1e-5})
        ctx.constants(b)
        shape, eps = b["normalized_shape"], b["eps"]
        if isinstance(shape, int):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)):
            raise ctx.unsupported("a normalized_shape computed in the forward as a whole (give its sizes, e.g. "
                                  "(x.shape[-1],))")
        sizes = [_value(s) for s in shape]  # numbers, or sizes read from the input (x.shape[1])
        weight, bias = _value(b["weight"]), _value(b["bias"])
        return NormStep(ctx.name, ctx.single(), ops.NormLayout.layer_norm(len(shape)),
                        lambda x, env: ops.layer_norm_forward(x, [int(s(env)) for s in sizes], weight(env),
                                                              bias(env), eps),
                        lambda env: (weight(env), bias(env)))
    b = ctx.bind(["input", "num_groups", "weight", "bias", "eps"], {"weight": None, "bias": None, "eps": 1e-5})
    ctx.constants(b)
    groups, eps = b["num_groups"], b["eps"]
    weight, bias = _value(b["weight"]), _value(b["bias"])
    return NormStep(ctx.name, ctx.single(), ops.NormLayout.group_norm(groups),
                    lambda x, env: ops.group_norm_forward(x, groups, weight(env), bias(env), eps),
                    lambda env: (weight(env), bias(env)))


class FunctionalBatchNormStep(Step):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)`` (a library's
    BatchNorm-and-activation module, say): the standalone BatchNorm's diagonal epsilon rule, with the statistics
    the call normalised with (the batch's in training, the running ones otherwise)."""

    def __init__(self, name: str, input_name: str, call: Callable[[Env], Tensor], bound: dict[str, Any]):
        self.name, self.inputs, self.call = name, [input_name], call
        self.training, self.bn_eps = bool(bound["training"]), float(bound["eps"])
        self.mean, self.var = _value(bound["running_mean"]), _value(bound["running_var"])
        self.weight, self.bias = _value(bound["weight"]), _value(bound["bias"])

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        a = env[self.inputs[0]]
        y = self.call(env)
        mean, var = self.mean(env), self.var(env)
        batch = self.training or mean is None
        if batch:
            mean, invstd = ops.batch_statistics(a.detach(), self.bn_eps)
        else:
            invstd = torch.rsqrt(var + self.bn_eps)
        return y, FunctionalBatchNormSaved(a, mean, invstd, batch, self.weight(env), self.bias(env))

    def relevance(self, R: Tensor, saved: FunctionalBatchNormSaved, cfg: RuleConfig) -> list[Tensor]:
        a, mean, invstd, batch, gamma, beta = saved
        live = cfg.live_stats and batch and torch.is_grad_enabled()
        if live:
            mean, invstd = ops.batch_statistics(a, self.bn_eps)
        z = ops.rule_preactivation(a, None, gamma, beta, mean, invstd, live)
        return [ops.batchnorm_epsilon(R, a, z, gamma, invstd, cfg.eps, cfg.prims, live)]


@REGISTRY.register(F.batch_norm, group="batch normalisation", description="`F.batch_norm` called with a module's "
                   "parameters (a library's BatchNorm subclass with its own forward): its own diagonal epsilon layer")
def _functional_batchnorm(ctx: NodeContext):
    b = ctx.bind(["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"],
                 {"running_mean": None, "running_var": None, "weight": None, "bias": None, "training": False,
                  "momentum": 0.1, "eps": 1e-5})
    ctx.constants(b)
    if isinstance(b["training"], fx.Node):
        raise ctx.unsupported("F.batch_norm with a training flag computed in the forward")
    return FunctionalBatchNormStep(ctx.name, ctx.single(), ctx.call(), b)
