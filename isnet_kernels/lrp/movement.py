"""Steps of operations that only move, copy, select or scale elements, and of element-wise non-linearities.

Data movement (``permute``, ``transpose``, ``reshape``, ``expand``, indexing, ``chunk``, ``roll``, ``pad``): the
output is a linear function of the input that only moves elements, so the relevance at the input is the op's
adjoint applied to the relevance at the output (scatter back what was gathered, sum over copies, zero where
elements were dropped): conservative by construction (docs/rules.md#rules-for-modern-layers). Every relevance
tensor carries the map axis at position 1, so axes of the activation ``d >= 1`` are axes ``d + 1`` of the
relevance.

Element-wise non-linearities take the identity rule (AttnLRP). Products of two activations take the uniform rule
or, for a gate, signal-takes-all; a scaling or shift by a constant the diagonal epsilon rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..errors import InputError
from .steps import RuleConfig, Step


def _axis(d: int, ndim: int) -> int:
    """Activation axis ``d`` (may be negative) as an axis of the relevance (which has the map axis at 1)."""
    d = d % ndim
    if d == 0:
        raise InputError("the batch axis must stay where it is")
    return d + 1


class CallStep(Step):
    """A step that evaluates its node with ``call(env)`` and keeps its relevance-carrying inputs and its output
    for ``rule(R, inputs, output, cfg) -> list of relevances`` (one per input, None for none)."""

    def __init__(self, name: str, inputs: list[str], call: Callable[[dict[str, Any]], Any],
                 rule: Callable[[Tensor, list[Tensor], Any, RuleConfig], Sequence[Tensor | None]],
                 passes_input: bool = False):
        self.name, self.inputs, self.call, self.rule = name, inputs, call, rule
        self.passes_input = passes_input  # relevance only moves: the layer after it still reads "the input"

    def forward(self, env: dict[str, Any]) -> tuple[Any, Any]:
        out = self.call(env)
        return out, ([env[n] for n in self.inputs], out)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> Sequence[Tensor | None]:
        inputs, out = saved
        return self.rule(R, inputs, out, cfg)


def _check_batch(name: str, x: Tensor, y: Tensor) -> None:
    if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise InputError(f"node '{name}' changes the batch axis ({tuple(x.shape)} -> {shape}); relevance needs the "
                         "batch axis kept first")


def reshape_rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """``view``/``reshape``/``flatten``/``unflatten``/``squeeze``/``unsqueeze``: the relevance takes the input's
    shape back (the adjoint of a reshape is the inverse reshape)."""
    return [R.reshape(*R.shape[:2], *inputs[0].shape[1:])]


def permute_rule(dims: Sequence[int]) -> Callable:
    """``permute(dims)`` with ``dims[0] == 0``: the inverse permutation of the relevance's activation axes."""

    def rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        n = inputs[0].dim()
        perm = [d % n for d in dims]
        inverse = [0] * n
        for i, p in enumerate(perm):
            inverse[p] = i
        return [R.permute(0, 1, *[inverse[i] + 1 for i in range(1, n)])]

    return rule


def transpose_rule(d0: int, d1: int) -> Callable:
    def rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        n = inputs[0].dim()
        return [R.transpose(_axis(d0, n), _axis(d1, n))]

    return rule


def expand_rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """``expand``: every copy's relevance flows back to its source element (sum over the expanded axes)."""
    x = inputs[0]
    lead = out.dim() - x.dim()
    R = R.sum(tuple(range(2, 2 + lead))) if lead else R
    axes = tuple(i + 1 for i in range(1, x.dim()) if x.shape[i] == 1 and out.shape[i + lead] != 1)
    return [R.sum(axes, keepdim=True) if axes else R]


def index_rule(index: Any) -> Callable:
    """``x[index]`` keeping the batch axis: the relevance is scattered back into zeros of the input's shape."""

    def rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        x = inputs[0]
        full = R.new_zeros(R.shape[:2] + x.shape[1:])
        full[relevance_index(index)] = R
        return [full]

    return rule


def relevance_index(index: Any) -> tuple:
    """The index of the relevance (map axis at 1) that selects what ``index`` selects of an activation."""
    items = index if isinstance(index, tuple) else (index,)
    if items and items[0] is Ellipsis:
        return items
    return (items[0], slice(None), *items[1:])


def check_index(index: Any) -> str | None:
    """Why ``x[index]`` cannot carry relevance (it selects along the batch axis or with tensors), or None."""
    items = index if isinstance(index, tuple) else (index,)
    if not items:
        return "an empty index"
    first = items[0]
    if first is not Ellipsis and first != slice(None):
        return "indexing along the batch axis (the first index must be ':' or '...')"
    if Ellipsis in items[1:] and first is not Ellipsis:
        return "an index with '...' after the batch axis"
    for item in items:
        if not (item is None or item is Ellipsis or isinstance(item, (int, slice))):
            return f"index {item!r} (only integers, slices, None and '...')"
    return None


def narrow_rule(dim: int) -> Callable:
    """One part of ``chunk``/``split``/``unbind`` along ``dim``: zeros elsewhere (the output carries its offset)."""

    def rule(R: Tensor, inputs: list[Tensor], out: tuple[Tensor, int], cfg: RuleConfig) -> list[Tensor]:
        x = inputs[0]
        part, start = out
        axis = _axis(dim, x.dim())
        full = R.new_zeros(R.shape[:2] + x.shape[1:])
        kept = part.dim() == x.dim()  # chunk/split keep the axis; unbind removes it (a part of length 1)
        full.narrow(axis, start, part.shape[dim % x.dim()] if kept else 1).copy_(R if kept else R.unsqueeze(axis))
        return [full]

    return rule


class PartStep(Step):
    """``parts = x.chunk(n, dim)`` (or ``split``, ``unbind``) followed by ``parts[i]``: computed as the one part.
    Its relevance goes back into the input's slice of that part (:func:`narrow_rule`)."""

    def __init__(self, name: str, input_name: str, split: Callable[[dict[str, Any]], Sequence[Tensor]],
                 index: int, dim: int):
        self.name, self.inputs, self.split, self.index, self.dim = name, [input_name], split, index, dim
        self.passes_input = True

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        parts = self.split(env)
        part = parts[self.index]
        dim = self.dim % env[self.inputs[0]].dim()
        start = sum(p.shape[dim] if p.dim() == env[self.inputs[0]].dim() else 1 for p in parts[:self.index])
        return part, ([env[self.inputs[0]]], (part, start))

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        inputs, out = saved
        return narrow_rule(self.dim)(R, inputs, out, cfg)


def roll_rule(shifts: Any, dims: Any) -> Callable:
    def rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        n = inputs[0].dim()
        s = [shifts] if isinstance(shifts, int) else list(shifts)
        d = [dims] if isinstance(dims, int) else list(dims)
        return [torch.roll(R, [-v for v in s], [_axis(a, n) for a in d])]

    return rule


def pad_rule(pad: Sequence[int]) -> Callable:
    """``F.pad`` (constant mode): the padded border is cut off again (its relevance belongs to a constant)."""

    def rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        x = inputs[0]
        if len(pad) // 2 > x.dim() - 1:
            raise InputError("F.pad over the batch axis")
        return [F.pad(R, [-p for p in pad])]

    return rule


def tokens_channels_first(x: Tensor) -> Tensor:
    """``x.transpose(1, 2)`` of a token tensor (B, N, C): the form in which the compiler runs a BatchNorm1d that a
    model applies to its tokens with the batch axis merged, ``bn(x.flatten(0, 1)).reshape_as(x)`` (timm's LeViT),
    as ``bn(tokens_channels_first(x)).transpose(1, 2)``: the same per-channel statistics over the B*N tokens, the
    batch axis kept."""
    if x.dim() != 3:
        raise InputError(f"bn(x.flatten(0, 1)).reshape_as(x) on a tensor of shape {tuple(x.shape)}: the LRP engine "
                         "explains it for token tensors (B, N, C) only")
    return x.transpose(1, 2)


def identity_rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """Element-wise non-linearity ``y = f(x)``: the identity rule ``R_x = R_y`` (AttnLRP)."""
    return [R]


def ratio_rule(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """``y = c * x`` with ``c`` a constant of the forward (stochastic depth's random mask and rescaling): the
    diagonal epsilon rule ``R_x = x c R / stab(c x) = R y / stab(y)`` (zero where the path was dropped). When the
    op returned its input itself (stochastic depth in eval mode, or ``p = 0``: the identity), ``R_x = R``."""
    if out is inputs[0]:
        return [R]
    return [R * (out / ops.stabilize(out, cfg.eps)).unsqueeze(1)]


Env = dict[str, Any]


class AffineStep(Step):
    """``y = scale * x + shift`` with constants (numbers, parameters such as a layer scale, buffers): the diagonal
    epsilon rule ``R_x = x scale R / stab(y)`` (the shift absorbs its share; the scale trains through the map).
    ``scale`` and ``shift`` are functions of the environment giving the constant, or None."""

    def __init__(self, name: str, input_name: str, call: Callable[[Env], Tensor],
                 scale: Callable[[Env], Any] | None = None, shift: Callable[[Env], Any] | None = None):
        self.name, self.inputs, self.call, self.scale, self.shift = name, [input_name], call, scale, shift

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        y = self.call(env)
        return y, (env[self.inputs[0]], y, None if self.scale is None else self.scale(env),
                   None if self.shift is None else self.shift(env))

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        x, y, c, d = saved
        if d is None and (c is None or not isinstance(c, Tensor) or not c.requires_grad):
            # a pure constant scaling: R_x = R * y / stab(y) (equal to the diagonal rule, one pass)
            return ratio_rule(R, [x], y, cfg)
        return [ops.reference_affine_constant(R, x, y, c, d, cfg.eps)]


class ProductStep(Step):
    """``y = a * b`` of two activations: signal takes all for a gate (``b`` the output of a sigmoid-like gate,
    squeeze-excitation), AttnLRP's uniform rule otherwise or with ``cfg.product == "uniform"``."""

    def __init__(self, name: str, inputs: list[str], gate_index: int | None):
        self.name, self.inputs, self.gate_index = name, inputs, gate_index

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        a, b = (env[n] for n in self.inputs)
        y = a * b
        return y, (a, b, y)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> Sequence[Tensor | None]:
        a, b, y = saved
        if self.gate_index is not None and cfg.product == "gate":
            return ops.reference_product_gate(R, a, b, y, self.gate_index)
        return ops.reference_product_uniform(R, a, b, y)


class CatParts(Step):
    """``torch.cat(parts, dim)``: each relevance-carrying part gets its slice of the relevance back; the slices
    of constant parts (a class token) are absorbed."""

    def __init__(self, name: str, inputs: list[str], call: Callable[[dict[str, Any]], Tensor],
                 part_nodes: list[str], carrying: list[bool], dim: int):
        self.name, self.inputs, self.call = name, inputs, call
        self.part_nodes, self.carrying, self.dim = part_nodes, carrying, dim

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        out = self.call(env)
        dim = self.dim % out.dim()
        if dim == 0:
            raise InputError(f"node '{self.name}' concatenates along the batch axis")
        sizes = [env[n].shape[dim] for n in self.part_nodes]
        return out, (sizes, dim)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        sizes, dim = saved
        parts = torch.split(R, sizes, dim + 1)
        return [p for p, carry in zip(parts, self.carrying) if carry]
