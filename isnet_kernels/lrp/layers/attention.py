"""Rules of attention (docs/rules.md#rules-for-modern-layers): ``nn.MultiheadAttention``,
``F.scaled_dot_product_attention``, and attention written out with matrix products and a softmax.

AttnLRP (Achtibat et al., ICML 2024) by default: the uniform epsilon rule on each product of two activations
(``q k^T`` and ``p v``) and its softmax rule; ``LRP(attention="cp")`` holds the attention weights constant
(CP-LRP, Ali et al., ICML 2022): all relevance to the values.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...errors import InputError
from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import Env, Record, Step
from .arithmetic import ProductSaved


def _linear_epsilon(R: Tensor, a: Tensor, z: Tensor, weight: Tensor, cfg: RuleConfig) -> Tensor:
    """Epsilon through ``z = a W^T + b`` on token tensors: ``R_a = a * ((R / stab(z)) @ W)``."""
    return ops.epsilon(R, a, z, weight, ops.Geometry(linear=True), cfg.eps, cfg.prims)


class _MultiheadAttentionFields(NamedTuple):
    inputs: tuple[Tensor, Tensor, Tensor]  # the query, key and value inputs (B, L, E)
    projections: tuple[Tensor, Tensor, Tensor]  # q, k, v after the in-projection
    heads: list[Tensor]  # q, k, v split into heads (B, H, L, E / H)
    attention: tuple  # what ops.sdpa_forward returned: the heads' output, the attention weights, the scores
    o: Tensor  # the heads merged: the out-projection's input
    out: Tensor  # the out-projection's output


class MultiheadAttentionSaved(Record, _MultiheadAttentionFields):
    """What :class:`MultiheadAttentionStep`'s forward keeps."""

    __slots__ = ()


class _SDPAFields(NamedTuple):
    q: Tensor
    k: Tensor
    v: Tensor
    mask: Any  # the attention mask (a tensor, or None)
    attention: tuple  # what ops.sdpa_forward returned


class SDPASaved(Record, _SDPAFields):
    """What :class:`SDPAStep`'s forward keeps."""

    __slots__ = ()


class _SoftmaxFields(NamedTuple):
    x: Tensor  # the input
    s: Tensor  # the softmax


class SoftmaxSaved(Record, _SoftmaxFields):
    """What :class:`SoftmaxStep`'s forward keeps."""

    __slots__ = ()


class MultiheadAttentionStep(Step):
    """``nn.MultiheadAttention(q, k, v)`` (packed in-projection, no masks, no dropout in training): the in- and
    out-projections under epsilon, the attention under AttnLRP or CP-LRP. The first output is the layer's output;
    the averaged weights (``need_weights=True``) carry no relevance."""

    def __init__(self, name: str, inputs: list[str], module: nn.MultiheadAttention, arg_names: list[str]):
        self.name, self.inputs, self.module, self.arg_names = name, inputs, module, arg_names

    def forward(self, env: Env) -> tuple[Any, Any]:
        m = self.module
        if m.training and m.dropout > 0:
            raise InputError(f"node '{self.name}': nn.MultiheadAttention with attention dropout in training mode has "
                             "no relevance rule; set its dropout to 0 or explain in eval mode")
        q_in, k_in, v_in = (env[n] for n in self.arg_names)
        if not m.batch_first:
            q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
        E, H = m.embed_dim, m.num_heads
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None, None, None) if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
        q, k, v = F.linear(q_in, w_q, b_q), F.linear(k_in, w_k, b_k), F.linear(v_in, w_v, b_v)
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
        heads = [t.view(B, -1, H, E // H).transpose(1, 2) for t in (q, k, v)]
        out_h, p, scores = ops.sdpa_forward(*heads)
        o = out_h.transpose(1, 2).reshape(B, L, E)
        out = m.out_proj(o)
        result = out if m.batch_first else out.transpose(0, 1)
        del S
        return (result, None), MultiheadAttentionSaved((q_in, k_in, v_in), (q, k, v), heads, (out_h, p, scores), o,
                                                       out)

    def relevance(self, R: Tensor, saved: MultiheadAttentionSaved, cfg: RuleConfig) -> list[Tensor | None]:
        m = self.module
        (q_in, k_in, v_in), (q, k, v), heads, sdpa_saved, o, out = saved
        if not m.batch_first:
            R = R.transpose(2, 3)
        z_out = out if m.out_proj.bias is None else out - (m.out_proj.bias - m.out_proj.bias.detach())
        R_o = _linear_epsilon(R, o, z_out, m.out_proj.weight, cfg)
        B, M, L, E = R_o.shape
        H = m.num_heads
        R_h = R_o.view(B, M, L, H, E // H).transpose(2, 3)
        R_q, R_k, R_v = ops.reference_sdpa_relevance(R_h, *heads, rule=cfg.attention, eps=cfg.eps,
                                                     saved=sdpa_saved)
        w = m.in_proj_weight.chunk(3)
        b = (None, None, None) if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
        parts = []
        for R_x, x_in, z, weight, bias in zip((R_q, R_k, R_v), (q_in, k_in, v_in), (q, k, v), w, b):
            if R_x is None:
                parts.append(None)
                continue
            R_x = R_x.transpose(2, 3).reshape(B, M, -1, E)
            zz = z if bias is None else z - (bias - bias.detach())
            part = _linear_epsilon(R_x, x_in, zz, weight, cfg)
            parts.append(part if m.batch_first else part.transpose(2, 3))
        by_name: dict[str, Tensor | None] = {}
        for name, part in zip(self.arg_names, parts):
            if part is not None:
                by_name[name] = part if by_name.get(name) is None else by_name[name] + part
        return [by_name.get(n) for n in self.inputs]


def _tuple_first(step_name: str):
    def part(ctx: NodeContext, index: Any):
        if index not in (0, 1):
            raise ctx.unsupported("nn.MultiheadAttention returns two outputs")
        return _TupleOutput(ctx.name, step_name, index)

    return part


class _TupleOutput(Step):
    """``out[i]`` of a layer that returns ``(output, extra)``: the output (index 0) passes its relevance back
    unchanged; the extra output (the averaged attention weights) carries none."""

    def __init__(self, name: str, source: str, index: int):
        self.name, self.inputs, self.index = name, [source], index

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        return env[self.inputs[0]][self.index], None

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor | None]:
        return [R if self.index == 0 else None]


@REGISTRY.register(nn.MultiheadAttention, F.scaled_dot_product_attention, group="attention",
                   description="`nn.MultiheadAttention` (self- and cross-attention, packed projections, no masks), "
                               "`F.scaled_dot_product_attention`: AttnLRP (softmax and matrix-product rules; "
                               "`attention=\"cp\"` holds the attention weights constant, CP-LRP)")
def _attention(ctx: NodeContext):
    node, mod = ctx.node, ctx.module
    if isinstance(mod, nn.MultiheadAttention):
        b = ctx.bind(["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                      "average_attn_weights", "is_causal"], {"key_padding_mask": None, "attn_mask": None,
                                                             "is_causal": False})
        if b["key_padding_mask"] is not None or b["attn_mask"] is not None or b["is_causal"]:
            raise ctx.unsupported("nn.MultiheadAttention with masks")
        if not mod.batch_first:
            raise ctx.unsupported("nn.MultiheadAttention(batch_first=False) reads (L, B, E) tensors, but relevance "
                                  "needs the batch axis first; build it with batch_first=True (as torchvision's "
                                  "ViT does) and feed it (B, L, E)")
        if not mod._qkv_same_embed_dim:
            raise ctx.unsupported("nn.MultiheadAttention with separate kdim/vdim projections")
        if mod.bias_k is not None or mod.add_zero_attn:
            raise ctx.unsupported("nn.MultiheadAttention with add_bias_kv or add_zero_attn")
        names = [b[k].name for k in ("query", "key", "value")]
        step = MultiheadAttentionStep(ctx.name, list(dict.fromkeys(names)), mod, names)
        ctx.producers[ctx.name] = _tuple_first(ctx.name)
        return step
    b = ctx.bind(["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"],
                 {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None})
    if b["dropout_p"] not in (0, 0.0) or node.kwargs.get("enable_gqa"):
        raise ctx.unsupported("scaled_dot_product_attention with dropout or grouped-query attention")
    ctx.constants(b, skip=("query", "key", "value", "attn_mask"))
    names = [b[k].name for k in ("query", "key", "value")]
    mask = b["attn_mask"]
    return SDPAStep(ctx.name, names, mask.name if isinstance(mask, fx.Node) else mask, b["is_causal"], b["scale"])


class SDPAStep(Step):
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)``: the AttnLRP (or CP-LRP) relevance
    of q, k and v; the mask is a bias (it gets none)."""

    def __init__(self, name: str, names: list[str], mask: Any, is_causal: bool, scale: float | None):
        self.name, self.names, self.mask, self.is_causal, self.scale = name, names, mask, is_causal, scale
        self.inputs = list(dict.fromkeys(names))

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        q, k, v = (env[n] for n in self.names)
        mask = env[self.mask] if isinstance(self.mask, str) else self.mask
        saved = ops.sdpa_forward(q, k, v, mask, self.scale, self.is_causal)
        return saved[0], SDPASaved(q, k, v, mask, saved)

    def relevance(self, R: Tensor, saved: SDPASaved, cfg: RuleConfig) -> list[Tensor | None]:
        q, k, v, mask, sdpa_saved = saved
        parts = ops.reference_sdpa_relevance(R, q, k, v, mask, self.scale, cfg.attention, cfg.eps,
                                             is_causal=self.is_causal, saved=sdpa_saved)
        by_name: dict[str, Tensor | None] = {}
        for name, part in zip(self.names, parts):
            if part is not None:
                by_name[name] = part if by_name.get(name) is None else by_name[name] + part
        return [by_name.get(n) for n in self.inputs]


class MatmulStep(Step):
    """``y = A @ B``: of two activations, AttnLRP's uniform rule (CP-LRP with ``attention="cp"`` when ``A`` is a
    softmax); with a constant operand, the epsilon rule of the linear map it is."""

    def __init__(self, name: str, inputs: list[str], operands: list[Any], softmax_a: bool):
        self.name, self.inputs, self.operands, self.softmax_a = name, inputs, operands, softmax_a

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        A, B = (env[o] if isinstance(o, str) else o for o in self.operands)
        y = A @ B
        return y, ProductSaved(A, B, y)

    def relevance(self, R: Tensor, saved: ProductSaved, cfg: RuleConfig) -> list[Tensor | None]:
        A, B, y = saved
        carrying = [isinstance(o, str) and o in self.inputs for o in self.operands]
        if all(carrying):
            if self.softmax_a and cfg.attention == "cp":
                R_A, R_B = ops.reference_matmul_cp(R, A, B, y, cfg.eps)
            else:
                R_A, R_B = ops.reference_matmul_uniform(R, A, B, y, cfg.eps)
            parts = [R_A, R_B]
        else:  # one operand constant: the whole relevance to the other (twice the uniform rule's share)
            R_A, R_B = ops.reference_matmul_uniform(R, A, B, y, cfg.eps)
            parts = [2 * R_A if carrying[0] else None, 2 * R_B if carrying[1] else None]
        by_name: dict[str, Tensor | None] = {}
        for operand, part in zip(self.operands, parts):
            if part is not None:
                by_name[operand] = part if by_name.get(operand) is None else by_name[operand] + part
        return [by_name.get(n) for n in self.inputs]


@REGISTRY.register(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", "__matmul__", group="attention",
                   description="`a @ b`, `torch.matmul`, `torch.bmm`: of two activations the uniform epsilon rule "
                               "(attention written out), with a constant the epsilon rule")
def _matmul(ctx: NodeContext):
    args = ctx.node.args
    if len(args) != 2:
        raise ctx.unsupported("matmul with other than two operands")
    operands = [a.name if isinstance(a, fx.Node) else a for a in args]
    carrying = [n.name for n in ctx.tensor_inputs()]
    if not carrying:
        raise ctx.unsupported("no operand carries relevance")
    return MatmulStep(ctx.name, carrying, operands, isinstance(args[0], fx.Node) and args[0].name in ctx.softmax)


class SoftmaxStep(Step):
    """``softmax(x, dim)``: the AttnLRP softmax rule ``R_x = x (R - s sum_dim R)`` (not conservative)."""

    def __init__(self, name: str, input_name: str, dim: int):
        self.name, self.inputs, self.dim = name, [input_name], dim

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        x = env[self.inputs[0]]
        s = torch.softmax(x, self.dim)
        return s, SoftmaxSaved(x, s)

    def relevance(self, R: Tensor, saved: SoftmaxSaved, cfg: RuleConfig) -> list[Tensor]:
        x, s = saved
        return [ops.reference_softmax(R, x, s, self.dim)]


@REGISTRY.register(nn.Softmax, F.softmax, torch.softmax, "softmax", group="attention",
                   description="`nn.Softmax`, `F.softmax`, `x.softmax(dim)`: the AttnLRP softmax rule")
def _softmax(ctx: NodeContext):
    if isinstance(ctx.module, nn.Softmax):
        dim = ctx.module.dim
    else:
        b = ctx.bind(["input", "dim"], {"dim": None})
        dim = b["dim"]
    if not isinstance(dim, int):
        raise ctx.unsupported("softmax needs an explicit integer dim")
    if ctx.node.kwargs.get("dtype") is not None:
        raise ctx.unsupported("softmax with a dtype argument")
    return SoftmaxStep(ctx.name, ctx.single(), dim)
