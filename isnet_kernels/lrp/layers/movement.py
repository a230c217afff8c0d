"""Data movement: operations that only move, copy, select or pad elements, and concatenation.

``permute``, ``transpose``, ``reshape``, ``expand``, indexing, ``chunk``, ``roll``, ``pad``: the output is a linear
function of the input that only moves elements, so the relevance at the input is the op's adjoint applied to the
relevance at the output (scatter back what was gathered, sum over copies, zero where elements were dropped):
conservative by construction (docs/rules.md#rules-for-modern-layers). Each is a
:class:`~isnet_kernels.lrp.steps.CallStep` of ``Kind.MOVE`` with its adjoint as its relevance function (``*_relevance``
here); ``nn.Flatten`` keeps only the input's shape (:class:`ReshapeStep`), a part of ``chunk``/``split``/``unbind``
computes only its part (:class:`PartStep`). Every relevance tensor carries the map axis at position 1, so axes of the
activation ``d >= 1`` are axes ``d + 1`` of the relevance.
"""

from __future__ import annotations

import operator
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
from ..steps import CallSaved, CallStep, Kind, Record, Step, TupleNode, identity_relevance
from .linear import folded_pad

register = REGISTRY.register


def _axis(d: int, ndim: int) -> int:
    """Activation axis ``d`` (may be negative) as an axis of the relevance (which has the map axis at 1)."""
    d = d % ndim
    if d == 0:
        raise InputError("the batch axis must stay where it is")
    return d + 1


def _check_batch(name: str, x: Tensor, y: Tensor) -> None:
    if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise InputError(f"node '{name}' changes the batch axis ({tuple(x.shape)} -> {shape}); relevance needs the "
                         "batch axis kept first")


def reshape_relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """``view``/``reshape``/``flatten``/``unflatten``/``squeeze``/``unsqueeze``: the relevance takes the input's
    shape back (the adjoint of a reshape is the inverse reshape)."""
    return [R.reshape(*R.shape[:2], *inputs[0].shape[1:])]


def permute_relevance(dims: Sequence[int]) -> Callable:
    """``permute(dims)`` with ``dims[0] == 0``: the inverse permutation of the relevance's activation axes."""

    def relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        n = inputs[0].dim()
        perm = [d % n for d in dims]
        inverse = [0] * n
        for i, p in enumerate(perm):
            inverse[p] = i
        return [R.permute(0, 1, *[inverse[i] + 1 for i in range(1, n)])]

    return relevance


def transpose_relevance(d0: int, d1: int) -> Callable:
    def relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        n = inputs[0].dim()
        return [R.transpose(_axis(d0, n), _axis(d1, n))]

    return relevance


def expand_relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """``expand``: every copy's relevance flows back to its source element (sum over the expanded axes)."""
    x = inputs[0]
    lead = out.dim() - x.dim()
    R = R.sum(tuple(range(2, 2 + lead))) if lead else R
    axes = tuple(i + 1 for i in range(1, x.dim()) if x.shape[i] == 1 and out.shape[i + lead] != 1)
    return [R.sum(axes, keepdim=True) if axes else R]


def index_relevance(index: Any) -> Callable:
    """``x[index]`` keeping the batch axis: the relevance is scattered back into zeros of the input's shape."""

    def relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        x = inputs[0]
        full = R.new_zeros(R.shape[:2] + x.shape[1:])
        full[relevance_index(index)] = R
        return [full]

    return relevance


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


def narrow_relevance(dim: int) -> Callable:
    """One part of ``chunk``/``split``/``unbind`` along ``dim``: zeros elsewhere (the output carries its offset)."""

    def relevance(R: Tensor, inputs: list[Tensor], out: tuple[Tensor, int], cfg: RuleConfig) -> list[Tensor]:
        x = inputs[0]
        part, start = out
        axis = _axis(dim, x.dim())
        full = R.new_zeros(R.shape[:2] + x.shape[1:])
        kept = part.dim() == x.dim()  # chunk/split keep the axis; unbind removes it (a part of length 1)
        full.narrow(axis, start, part.shape[dim % x.dim()] if kept else 1).copy_(R if kept else R.unsqueeze(axis))
        return [full]

    return relevance


class PartStep(Step):
    """``parts = x.chunk(n, dim)`` (or ``split``, ``unbind``) followed by ``parts[i]``: computed as the one part.
    Its relevance goes back into the input's slice of that part (:func:`narrow_relevance`)."""

    kind = Kind.MOVE

    def __init__(self, name: str, input_name: str, split: Callable[[dict[str, Any]], Sequence[Tensor]],
                 index: int, dim: int):
        self.name, self.inputs, self.split, self.index, self.dim = name, [input_name], split, index, dim

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        parts = self.split(env)
        part = parts[self.index]
        dim = self.dim % env[self.inputs[0]].dim()
        start = sum(p.shape[dim] if p.dim() == env[self.inputs[0]].dim() else 1 for p in parts[:self.index])
        return part, CallSaved([env[self.inputs[0]]], (part, start))

    def relevance(self, R: Tensor, saved: CallSaved, cfg: RuleConfig) -> list[Tensor]:
        return narrow_relevance(self.dim)(R, saved.inputs, saved.out, cfg)


def roll_relevance(shifts: Any, dims: Any) -> Callable:
    def relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        n = inputs[0].dim()
        s = [shifts] if isinstance(shifts, int) else list(shifts)
        d = [dims] if isinstance(dims, int) else list(dims)
        return [torch.roll(R, [-v for v in s], [_axis(a, n) for a in d])]

    return relevance


def pad_relevance(pad: Sequence[int]) -> Callable:
    """``F.pad`` (constant mode): the padded border is cut off again (its relevance belongs to a constant)."""

    def relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
        x = inputs[0]
        if len(pad) // 2 > x.dim() - 1:
            raise InputError("F.pad over the batch axis")
        return [F.pad(R, [-p for p in pad])]

    return relevance


def tokens_channels_first(x: Tensor) -> Tensor:
    """``x.transpose(1, 2)`` of a token tensor (B, N, C): the form in which the compiler runs a BatchNorm1d that a
    model applies to its tokens with the batch axis merged, ``bn(x.flatten(0, 1)).reshape_as(x)`` (timm's LeViT),
    as ``bn(tokens_channels_first(x)).transpose(1, 2)``: the same per-channel statistics over the B*N tokens, the
    batch axis kept."""
    if x.dim() != 3:
        raise InputError(f"bn(x.flatten(0, 1)).reshape_as(x) on a tensor of shape {tuple(x.shape)}: the LRP engine "
                         "explains it for token tensors (B, N, C) only")
    return x.transpose(1, 2)


class ReshapeStep(Step):
    """``nn.Flatten``: the relevance takes the input's shape back. It keeps only that shape (a ``torch.Size``), and
    the search of the logits layer looks through it (``Kind.PASS``); other reshapes are :class:`CallStep` steps of
    :func:`reshape_relevance`, which the search stops at.

    ``fn`` evaluates the node from the environment (its sizes may come from shape nodes such as ``x.size(0)``).
    """

    kind = Kind.PASS

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


class _CatFields(NamedTuple):
    sizes: list[int]  # each part's length along the axis
    dim: int  # the concatenated axis, non-negative


class CatSaved(Record, _CatFields):
    """What :class:`CatStep`'s forward keeps."""

    __slots__ = ()


class CatStep(Step):
    """``torch.cat(parts, dim)``: each relevance-carrying part gets its slice of the relevance back
    (``ops.reference_concat_split``); the slices of constant parts (a class token) are absorbed."""

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
        return out, CatSaved(sizes, dim)

    def relevance(self, R: Tensor, saved: CatSaved, cfg: RuleConfig) -> list[Tensor]:
        sizes, dim = saved
        parts = ops.reference_concat_split(R, sizes, dim)
        return [p for p, carry in zip(parts, self.carrying) if carry]


@register(torch.cat, torch.concat, torch.concatenate, group="concatenation",
          description="`torch.cat` / `torch.concat` along a non-batch axis, also with constant parts (a class "
                      "token): relevance split back into the parts")
def _cat(ctx: NodeContext):
    b = ctx.bind(["tensors", "dim"], {"dim": 0})
    parts, dim = b["tensors"], b["dim"]
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts):
        raise ctx.unsupported("torch.cat needs a list of tensors")
    if not isinstance(dim, int) or dim == 0:
        raise ctx.unsupported("concatenation along the batch axis")
    carrying = [not ctx.is_constant(p) for p in parts]
    inputs = [p.name for p, c in zip(parts, carrying) if c]  # a tensor given twice gets both slices, summed
    return CatStep(ctx.name, inputs, ctx.call(), [p.name for p in parts], carrying, dim)


@register(nn.Flatten, nn.Unflatten, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "view", "reshape",
          "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", group="shape",
          description="`nn.Flatten`, `torch.flatten`, `x.view`, `x.reshape`, `unflatten`, `squeeze`, `unsqueeze`, "
                      "keeping the batch axis; size arithmetic (`x.size(0)`, `x.shape`)")
def _reshape(ctx: NodeContext):
    source = ctx.tensor_inputs()[0].name if ctx.tensor_inputs() else ctx.single()
    if ctx.module is not None and isinstance(ctx.module, nn.Flatten):
        mod = ctx.module
        return ReshapeStep(ctx.name, source, lambda env: mod(env[source]))
    call = ctx.call()
    if len(ctx.tensor_inputs()) != 1:
        raise ctx.unsupported("a reshape whose target shape is computed from another tensor")
    return CallStep(ctx.name, [source], _batch_kept(ctx.name, source, call), reshape_relevance, kind=Kind.MOVE)


def _batch_kept(name: str, source: str, call):
    def run(env: dict[str, Any]):
        out = call(env)
        _check_batch(name, env[source], out)
        return out

    return run


@register(torch.permute, "permute", torch.transpose, torch.swapaxes, torch.swapdims, "transpose", "swapaxes",
          "swapdims", group="data movement",
          description="`permute`, `transpose`, `swapaxes` (batch axis kept), `expand`, indexing and slicing "
                      "(`x[:, 0]`, `x[..., :k]`), `chunk`/`split`/`unbind` with `parts[i]`, `torch.roll`, `F.pad`: "
                      "relevance follows the op's adjoint (conserved)")
def _permute(ctx: NodeContext):
    node = ctx.node
    source = ctx.single()
    if node.target in (torch.permute, "permute"):
        dims = node.args[1:] if node.op == "call_method" else node.args[1]
        if node.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        dims = list(node.kwargs.get("dims", dims))
        if not all(isinstance(d, int) for d in dims):
            raise ctx.unsupported("a permutation with computed axes")
        if dims[0] % len(dims) != 0:
            if _selected_along_first(node, dims):  # qkv.permute(2, 0, 3, 1, 4) then q, k, v = qkv.unbind(0)
                return TupleNode(ctx.name, _select_part(source, [d % len(dims) for d in dims]))
            raise ctx.unsupported("a permutation that moves the batch axis (other than to axis 1 with the new "
                                  "axis 0 then taken apart by unbind(0) or [i], as attention's q, k, v)")
        return CallStep(ctx.name, [source], ctx.call(), permute_relevance(dims), kind=Kind.MOVE)
    b = ctx.bind(["input", "dim0", "dim1"])
    d0, d1 = b["dim0"], b["dim1"]
    if not (isinstance(d0, int) and isinstance(d1, int)) or d0 == 0 or d1 == 0:
        raise ctx.unsupported("a transpose of the batch axis")
    return CallStep(ctx.name, [source], ctx.call(), transpose_relevance(d0, d1), kind=Kind.MOVE)


def _selected_along_first(node: fx.Node, dims: list[int]) -> bool:
    """Whether ``x.permute(dims)`` puts the batch axis at 1 and its result is only taken apart along the new axis
    0, by ``[i]`` or ``unbind(0)`` (the q, k, v split of attention as timm and many ViTs write it)."""
    if len(dims) < 3 or dims[1] % len(dims) != 0 or not node.users:
        return False
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            continue
        if user.target in ("unbind", torch.unbind) and user.args[0] is node:
            dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
            if dim == 0:
                continue
        return False
    return True


def _select_part(source: str, dims: list[int]):
    """The parts ``x.permute(dims)[i]`` of :func:`_selected_along_first`: ``x.select(s, i).permute(rest)`` with
    ``s = dims[0]``, each a data-movement step (relevance permuted back and put in slice ``i`` of axis ``s``)."""
    s = dims[0]
    rest = [d - 1 if d > s else d for d in dims[1:]]

    def part(item_ctx: NodeContext, index: Any):
        if not isinstance(index, int):
            raise item_ctx.unsupported("a slice of the parts of a permuted tensor (take them one by one)")

        def call(env: dict[str, Any]):
            return env[source].select(s, index).permute(rest)

        def relevance(R, inputs, out, cfg):
            x = inputs[0]
            inverse = [0] * len(rest)
            for j, p in enumerate(rest):
                inverse[p] = j
            back = R.permute(0, 1, *[inverse[j] + 1 for j in range(1, len(rest))])
            full = R.new_zeros(R.shape[:2] + x.shape[1:])
            full.select(s + 1, index).copy_(back)
            return [full]

        return CallStep(item_ctx.name, [source], call, relevance, kind=Kind.MOVE)

    return part


@register(getattr, group="data movement", description="")
def _attribute(ctx: NodeContext):
    """``x.mT`` (the transpose of the last two axes); other attributes of an activation have no rule."""
    name = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if name != "mT":
        raise ctx.unsupported(f"the attribute {name!r} of an activation (x.mT, sizes, x.device and x.dtype have "
                             "rules)")
    return CallStep(ctx.name, [ctx.single()], ctx.call(), transpose_relevance(-2, -1), kind=Kind.MOVE)


@register(tokens_channels_first, group="batch normalisation",
          description="`bn(x.flatten(0, 1)).reshape_as(x)` on tokens (B, N, C), a BatchNorm1d with the batch axis "
                      "merged (timm's LeViT): run as `bn(x.transpose(1, 2)).transpose(1, 2)`, the standalone rule")
def _tokens_channels_first(ctx: NodeContext):
    return CallStep(ctx.name, [ctx.single()], ctx.call(), transpose_relevance(1, 2), kind=Kind.MOVE)


@register("expand", "expand_as", group="data movement", description="")
def _expand(ctx: NodeContext):
    return CallStep(ctx.name, [ctx.single()], _batch_kept(ctx.name, ctx.single(), ctx.call()), expand_relevance,
                       kind=Kind.MOVE)


@register(torch.roll, "roll", group="data movement", description="")
def _roll(ctx: NodeContext):
    b = ctx.bind(["input", "shifts", "dims"], {"dims": None})
    ctx.constants(b)
    if b["dims"] is None:
        raise ctx.unsupported("roll of the flattened tensor (give dims)")
    dims = [b["dims"]] if isinstance(b["dims"], int) else list(b["dims"])
    if any(d == 0 for d in dims):
        raise ctx.unsupported("roll along the batch axis")
    return CallStep(ctx.name, [ctx.single()], ctx.call(), roll_relevance(b["shifts"], b["dims"]), kind=Kind.MOVE)


@register(F.pad, group="data movement", description="")
def _pad(ctx: NodeContext):
    b = ctx.bind(["input", "pad", "mode", "value"], {"mode": "constant", "value": None})
    ctx.constants(b)
    if b["mode"] != "constant":
        raise ctx.unsupported(f"F.pad mode {b['mode']!r} (only 'constant')")
    if folded_pad(ctx.node) is not None:  # the convolutions reading it pad x themselves: its value is x
        source = ctx.single()
        return CallStep(ctx.name, [source], lambda env: env[source], identity_relevance, kind=Kind.MOVE)
    return CallStep(ctx.name, [ctx.single()], ctx.call(), pad_relevance(list(b["pad"])), kind=Kind.MOVE)


@register(operator.getitem, group="data movement", description="")
def _getitem(ctx: NodeContext):
    node = ctx.node
    src, index = node.args
    producer = ctx.producers.get(src.name) if isinstance(src, fx.Node) else None
    if producer is not None:  # a part of chunk/split/unbind, or the first output of a tuple-valued layer
        return producer(ctx, index)
    if isinstance(index, fx.Node) or (isinstance(index, tuple) and any(isinstance(i, fx.Node) for i in index)):
        raise ctx.unsupported("indexing with a computed index")
    why = check_index(index)
    if why is not None:
        raise ctx.unsupported(why)
    return CallStep(ctx.name, [ctx.single()], ctx.call(), index_relevance(index), kind=Kind.MOVE)


@register(torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind", group="data movement",
          description="")
def _split(ctx: NodeContext):
    node = ctx.node
    if node.target in (torch.unbind, "unbind"):
        b = ctx.bind(["input", "dim"], {"dim": 0})
    elif node.target in (torch.chunk, "chunk"):
        b = ctx.bind(["input", "chunks", "dim"], {"dim": 0})
    else:
        b = ctx.bind(["input", "split_size_or_sections", "dim"], {"dim": 0})
    ctx.constants(b, skip=("input", "tensor"))
    src = b.get("input", b.get("tensor"))
    producer = ctx.producers.get(src.name) if isinstance(src, fx.Node) else None
    if producer is not None and b["dim"] == 0 and node.target in (torch.unbind, "unbind"):
        return TupleNode(ctx.name, producer)  # the parts of a permutation that moved the batch axis to 1
    if b["dim"] == 0:
        raise ctx.unsupported("splitting the batch axis")
    source, call, dim = ctx.single(), ctx.call(), b["dim"]

    def part(item_ctx: NodeContext, index: Any):
        if not isinstance(index, int):
            raise item_ctx.unsupported("a slice of the parts of a split (take them one by one)")
        return PartStep(item_ctx.name, source, call, index, dim)

    return TupleNode(ctx.name, part)
