"""Sums, products and scalings: the residual sum (relevance in proportion to the summands), the sum over axes,
a tensor times or plus a constant (the diagonal epsilon rule), the product of two activations (signal takes all for a
gate, AttnLRP's uniform rule otherwise), and torchvision's stochastic depth (docs/rules.md).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor

from ... import ops
from ...errors import InputError
from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import CallStep, Env, Record, Step, like
from .pool import ReduceSaved

register = REGISTRY.register


class _ResidualFields(NamedTuple):
    x: Tensor  # the first summand
    f: Tensor  # the second summand (``-f`` for ``x - f``)
    y: Tensor | None  # the sum, None: recomputed where the rule needs it (ops.residual_split)


class ResidualSaved(Record, _ResidualFields):
    """What :class:`AddStep`'s forward keeps."""

    __slots__ = ()


class _AffineFields(NamedTuple):
    x: Tensor  # the input
    y: Tensor  # the output
    scale: Any  # the constant factor, or None
    shift: Any  # the constant summand, or None


class AffineSaved(Record, _AffineFields):
    """What :class:`AffineStep`'s forward keeps."""

    __slots__ = ()


class _ProductFields(NamedTuple):
    a: Tensor  # the first factor
    b: Tensor  # the second factor
    y: Tensor  # the product


class ProductSaved(Record, _ProductFields):
    """What a product of two operands keeps (:class:`ProductStep`, and ``MatmulStep`` of attention)."""

    __slots__ = ()


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
            return y, ResidualSaved(x, -f, None)
        y = operator.add(x, f)
        return y, ResidualSaved(x, f, None)  # y = x + f is not kept: recomputed where needed (ops.residual_split)

    def relevance(self, R: Tensor, saved: ResidualSaved, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        return cfg.hidden.residual(R, *saved, cfg)


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
        return out, ReduceSaved(a, out, dims)

    def relevance(self, R: Tensor, saved: ReduceSaved, cfg: RuleConfig) -> list[Tensor]:
        a, out, dims = saved
        return [ops.reduce_sum(R, a, like(out, a), dims, cfg.eps, cfg.prims)]


def ratio_relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """``y = c * x`` with ``c`` a constant of the forward (stochastic depth's random mask and rescaling): the
    diagonal epsilon rule ``R_x = x c R / stab(c x) = R y / stab(y)`` (zero where the path was dropped). When the
    op returned its input itself (stochastic depth in eval mode, or ``p = 0``: the identity), ``R_x = R``."""
    if out is inputs[0]:
        return [R]
    return [R * (out / ops.stabilize(out, cfg.eps)).unsqueeze(1)]


class AffineStep(Step):
    """``y = scale * x + shift`` with constants (numbers, parameters such as a layer scale, buffers): the diagonal
    epsilon rule ``R_x = x scale R / stab(y)`` (the shift absorbs its share; the scale trains through the map).
    ``scale`` and ``shift`` are functions of the environment giving the constant, or None."""

    def __init__(self, name: str, input_name: str, call: Callable[[Env], Tensor],
                 scale: Callable[[Env], Any] | None = None, shift: Callable[[Env], Any] | None = None):
        self.name, self.inputs, self.call, self.scale, self.shift = name, [input_name], call, scale, shift

    def forward(self, env: Env) -> tuple[Tensor, AffineSaved]:
        y = self.call(env)
        return y, AffineSaved(env[self.inputs[0]], y, None if self.scale is None else self.scale(env),
                              None if self.shift is None else self.shift(env))

    def relevance(self, R: Tensor, saved: AffineSaved, cfg: RuleConfig) -> list[Tensor]:
        x, y, c, d = saved
        if d is None and (c is None or not isinstance(c, Tensor) or not c.requires_grad):
            # a pure constant scaling: R_x = R * y / stab(y) (equal to the diagonal rule, one pass)
            return ratio_relevance(R, [x], y, cfg)
        return [ops.reference_affine_constant(R, x, y, c, d, cfg.eps)]


class ProductStep(Step):
    """``y = a * b`` of two activations: signal takes all for a gate (``b`` the output of a sigmoid-like gate,
    squeeze-excitation), AttnLRP's uniform rule otherwise or with ``cfg.product == "uniform"``."""

    def __init__(self, name: str, inputs: list[str], gate_index: int | None):
        self.name, self.inputs, self.gate_index = name, inputs, gate_index

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        a, b = (env[n] for n in self.inputs)
        y = a * b
        return y, ProductSaved(a, b, y)

    def relevance(self, R: Tensor, saved: ProductSaved, cfg: RuleConfig) -> Sequence[Tensor | None]:
        a, b, y = saved
        if self.gate_index is not None and cfg.product == "gate":
            return ops.reference_product_gate(R, a, b, y, self.gate_index)
        return ops.reference_product_uniform(R, a, b, y)


def _scalar_or_const(ctx: NodeContext, arg: Any):
    """A function of the environment giving ``arg``'s value (a literal, a parameter or a constant tensor)."""
    if isinstance(arg, fx.Node):
        return lambda env: env[arg.name]
    return lambda env: arg


@register(operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__", "__radd__",
          operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__", group="sums",
          description="`a + b`, `a += b`, `torch.add`, `a - b` of two tensors: the residual split (relevance in "
                      "proportion to the summands); a tensor plus or minus a constant (a position embedding, "
                      "GoogLeNet's input transform): the shift absorbs its share")
def _add(ctx: NodeContext):
    node = ctx.node
    alpha = node.kwargs.get("alpha", 1)
    tensors = ctx.tensor_inputs()
    subtract = node.target in (operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__")
    if alpha != 1:
        raise ctx.unsupported("add/sub with alpha != 1")
    if len(tensors) == 2 and len(node.args) == 2:
        return AddStep(ctx.name, [t.name for t in tensors], subtract=subtract)
    if len(tensors) == 1 and len(node.args) == 2:
        x_first = node.args[0] is tensors[0]
        if subtract and not x_first:
            raise ctx.unsupported("a constant minus a tensor")
        const = node.args[1] if x_first else node.args[0]
        value = _scalar_or_const(ctx, const)
        shift = (lambda env: -value(env)) if subtract else value
        return AffineStep(ctx.name, tensors[0].name, ctx.call(), shift=shift)
    raise ctx.unsupported("only the sum of two tensors, or of a tensor and a constant, has a rule")


@register(torch.sum, "sum", group="sums",
          description="`x.sum(dims)` / `torch.sum` over non-batch axes (ResNeSt's radix splits): epsilon with "
                      "weights 1, relevance in proportion to the summands")
def _sum(ctx: NodeContext):
    b = ctx.bind(["input", "dim", "keepdim"], {"dim": None, "keepdim": False})
    ctx.constants(b)
    dims = b["dim"]
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        raise ctx.unsupported("a sum over all axes (the batch axis too); sum over non-batch axes only")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        raise ctx.unsupported("a sum over named or computed axes; give the axes as integers")
    if 0 in dims:
        raise ctx.unsupported("a sum over the batch axis")
    return SumStep(ctx.name, ctx.single(), dims, ctx.call())


@register(operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__", operator.truediv,
          torch.div, "div", "div_", "__truediv__", group="products",
          description="`a * b` of two activations: signal takes all for a gate (`x * sigmoid(...)`, squeeze-"
                      "excitation; `x * softmax(...)`, split attention; also through reshapes of the gate; "
                      "`product=\"uniform\"` for AttnLRP's uniform rule), the uniform rule otherwise; a "
                      "tensor times or divided by a constant (layer scale, GoogLeNet's input transform): diagonal "
                      "epsilon")
def _mul(ctx: NodeContext):
    node = ctx.node
    tensors = ctx.tensor_inputs()
    divide = node.target in (operator.truediv, torch.div, "div", "div_", "__truediv__")
    if node.kwargs.get("rounding_mode") is not None or len(node.args) != 2:
        raise ctx.unsupported("only the product or quotient of two operands has a rule")
    if len(tensors) == 2:
        if divide:
            raise ctx.unsupported("the quotient of two activations")
        a, b = tensors
        gate = 1 if b.name in ctx.gates else 0 if a.name in ctx.gates else None
        return ProductStep(ctx.name, [a.name, b.name], gate)
    if len(tensors) == 1:
        x_first = node.args[0] is tensors[0]
        if divide and not x_first:
            raise ctx.unsupported("a constant divided by a tensor")
        value = _scalar_or_const(ctx, node.args[1] if x_first else node.args[0])
        scale = (lambda env: 1.0 / value(env)) if divide else value
        return AffineStep(ctx.name, tensors[0].name, ctx.call(), scale=scale)
    raise ctx.unsupported("no operand carries relevance")


def _stochastic_depth(ctx: NodeContext):
    return CallStep(ctx.name, [ctx.single()], ctx.call(), ratio_relevance)


register("torchvision.ops.stochastic_depth.stochastic_depth", "torchvision.ops.stochastic_depth.StochasticDepth",
         group="stochastic depth", description="torchvision's `stochastic_depth` / `StochasticDepth`: the diagonal "
         "epsilon rule of its scaling (zero for a dropped path)")(_stochastic_depth)
