"""Rules of torchvision's Swin Transformer functions (registered by dotted name; torchvision need not be imported).

torchvision wraps three functions with ``torch.fx.wrap``, so they appear as single nodes of the traced graph:

- ``shifted_window_attention`` (Swin V1, and V2 when called with ``logit_scale``): :class:`ShiftedWindowAttentionStep`
  re-implements its forward operation by operation and walks the relevance back through each: the final crop
  (adjoint: zero padding), the reverse cyclic shift (adjoint: the opposite roll), the window merge and partition
  (reshape and permute: their adjoints, the inverse permutations), the output projection and the qkv projection
  (epsilon, biases detached in the denominator), and the attention in each window under AttnLRP (Achtibat et al.,
  ICML 2024: uniform rule on ``p @ v`` and on the scores, V1's ``d^-1/2`` folded into ``q`` as for
  ``F.scaled_dot_product_attention``; the softmax rule) or CP-LRP (``attention="cp"``, Ali et
  al., ICML 2022: the attention weights held constant, all relevance to the values). The relative position bias and
  the shift mask are biases of the scores: constants that keep their share of the relevance.
  V2's cosine attention ``scores = tau * normalize(q) @ normalize(k)^T + bias`` (``tau = exp(min(logit_scale,
  log 100))``): the norms ``|q_i|``, ``|k_j|`` held constant, as LayerNorm's standard deviation is
  (docs/rules.md), so the scores are a bilinear map of ``(q, k)`` with the constant coefficients
  ``tau / (|q_i| |k_j|)``; the uniform rule on it gives ``R_q = q_hat * (S @ k_hat)`` and ``R_k = k_hat * (S^T @
  q_hat)`` with ``q_hat = tau q / |q|``, ``k_hat = k / |k|`` and ``S = R_scores / (2 stab(scores))``: no stabiliser
  of its own, conservative as ``eps -> 0`` like the product rule. In training the norms enter ``q_hat`` and
  ``k_hat`` detached; the forward's scores, softmax and output keep their full gradient (as in the rule of
  ``F.scaled_dot_product_attention``).
  Attention dropout in training mode has no rule (an error); the output dropout passes relevance, as ``nn.Dropout``.
- ``_patch_merging_pad`` (pad to even sizes, four strided slices, concatenation): data movement; relevance follows
  the adjoint (the four slices scattered back, the padding cut off).
- ``_get_relative_position_bias`` (V1 and V2; V2 feeds it the output of its ``cpb_mlp``): reads only parameters and
  buffers, so the compiler evaluates it as a constant (no step, no relevance) and needs no rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from ... import ops
from ...errors import InputError
from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import CallStep, Env, Kind, Record, Step

_SWA_ARGS = ["input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
             "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training"]
_SWA_DEFAULTS = {"attention_dropout": 0.0, "dropout": 0.0, "qkv_bias": None, "proj_bias": None, "logit_scale": None,
                 "training": True}


def shift_mask(pad_H: int, pad_W: int, window: list[int], shift: list[int], like: Tensor) -> Tensor:
    """The additive attention mask of shifted windows (nW, N, N): 0 between tokens of one region of the rolled map,
    -100 across regions; computed as ``shifted_window_attention`` does."""
    attn_mask = like.new_zeros((pad_H, pad_W))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            attn_mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    num_windows = (pad_H // window[0]) * (pad_W // window[1])
    attn_mask = attn_mask.view(pad_H // window[0], window[0], pad_W // window[1], window[1])
    attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window[0] * window[1])
    attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def _live_bias(z: Tensor, bias: Tensor | None) -> Tensor:
    """``z`` with ``bias`` (added into it) entering detached: same value, no gradient through the bias."""
    return z if bias is None or not bias.requires_grad else z - (bias - bias.detach())


class _WindowGeometryFields(NamedTuple):
    B: int  # batch size
    H: int  # the input's height, width and channels
    W: int
    C: int
    pad_H: int  # the height and width padded to whole windows
    pad_W: int
    window: list[int]  # the window size
    shift: list[int]  # the cyclic shift (0 along an axis one window covers)
    shifted: bool  # any shift at all
    nW: int  # windows per image
    N: int  # tokens per window
    heads: int
    d: int  # channels per head


class WindowGeometry(Record, _WindowGeometryFields):
    """The sizes of one ``shifted_window_attention`` call, as its forward found them."""

    __slots__ = ()


class _WindowTensorsFields(NamedTuple):
    xw: Tensor  # the windows' tokens (B * nW, N, C): the qkv projection's input
    qkv: Tensor  # the qkv projection's output
    qkv_bias: Tensor | None  # its bias (V2: the key's part zeroed)
    q: Tensor  # queries (V1: scaled by d^-1/2), keys, values (B * nW, heads, N, d)
    k: Tensor
    v: Tensor
    q_op: Tensor | None  # V1: the scaled queries of the score product; V2: None
    tau: Tensor | None  # V2: the logit scale exp(min(logit_scale, log 100)); V1: None
    rpb: Tensor  # the relative position bias
    mask: Tensor | None  # the shift mask (None without a shift)
    scores: Tensor  # the attention scores, biases included
    p: Tensor  # the attention weights
    out: Tensor  # p @ v
    o: Tensor  # the heads merged: the output projection's input
    y: Tensor  # the output projection's output


class WindowTensors(Record, _WindowTensorsFields):
    """The tensors of one ``shifted_window_attention`` call that its relevance reads."""

    __slots__ = ()


class _ShiftedWindowFields(NamedTuple):
    geometry: WindowGeometry
    tensors: WindowTensors
    arguments: dict[str, Any]  # the call's arguments by name


class ShiftedWindowSaved(Record, _ShiftedWindowFields):
    """What :class:`ShiftedWindowAttentionStep`'s forward keeps."""

    __slots__ = ()


class ShiftedWindowAttentionStep(Step):
    """``torchvision.models.swin_transformer.shifted_window_attention`` (module docstring).

    Relevance tensors are (B, M, ...); inside the step the windows are an axis of their own, (B, nW, ...), never
    folded into the batch axis, so every product rule sees the batch axis first.
    """

    def __init__(self, name: str, input_name: str, arguments: Callable[[Env], dict[str, Any]]):
        self.name, self.inputs, self.arguments = name, [input_name], arguments  # env -> the call's arguments by name

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        a = self.arguments(env)
        window, heads, training = list(a["window_size"]), a["num_heads"], a["training"]
        if training and a["attention_dropout"] > 0:
            raise InputError(f"node '{self.name}': shifted_window_attention with attention dropout "
                             f"({a['attention_dropout']}) in training mode has no relevance rule; build the model with "
                             "attention_dropout=0 or explain it in eval mode")
        inp = a["input"]
        B, H, W, C = inp.shape
        pad_r = (window[1] - W % window[1]) % window[1]
        pad_b = (window[0] - H % window[0]) % window[0]
        x = F.pad(inp, (0, 0, 0, pad_r, 0, pad_b))
        _, pad_H, pad_W, _ = x.shape
        shift = list(a["shift_size"])
        if window[0] >= pad_H:
            shift[0] = 0
        if window[1] >= pad_W:
            shift[1] = 0
        shifted = sum(shift) > 0
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        nW = (pad_H // window[0]) * (pad_W // window[1])
        x = x.view(B, pad_H // window[0], window[0], pad_W // window[1], window[1], C)
        xw = x.permute(0, 1, 3, 2, 4, 5).reshape(B * nW, window[0] * window[1], C)
        qkv_bias, logit_scale = a["qkv_bias"], a["logit_scale"]
        if logit_scale is not None and qkv_bias is not None:
            qkv_bias = qkv_bias.clone()
            length = qkv_bias.numel() // 3
            qkv_bias[length:2 * length].zero_()
        qkv = F.linear(xw, a["qkv_weight"], qkv_bias)
        N, d = xw.size(1), C // heads
        qkv5 = qkv.reshape(xw.size(0), N, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv5[0], qkv5[1], qkv5[2]
        if logit_scale is not None:
            attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            tau = torch.clamp(logit_scale, max=math.log(100.0)).exp()
            attn = attn * tau
            q_op = None
        else:
            tau = None
            q_op = q = q * d ** -0.5
            attn = q.matmul(k.transpose(-2, -1))
        rpb = a["relative_position_bias"]
        attn = attn + rpb
        mask = None
        if shifted:
            mask = shift_mask(pad_H, pad_W, window, shift, xw)
            attn = attn.view(xw.size(0) // nW, nW, heads, N, N)
            attn = attn + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, N, N)
        p = F.softmax(attn, dim=-1)
        p = F.dropout(p, p=a["attention_dropout"], training=training)
        out = p.matmul(v)
        o = out.transpose(1, 2).reshape(xw.size(0), N, C)
        y = F.linear(o, a["proj_weight"], a["proj_bias"])
        yd = F.dropout(y, p=a["dropout"], training=training)
        r = yd.view(B, pad_H // window[0], pad_W // window[1], window[0], window[1], C)
        r = r.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
        if shifted:
            r = torch.roll(r, shifts=(shift[0], shift[1]), dims=(1, 2))
        result = r[:, :H, :W, :].contiguous()
        geometry = WindowGeometry(B, H, W, C, pad_H, pad_W, window, shift, shifted, nW, N, heads, d)
        tensors = WindowTensors(xw, qkv, qkv_bias, q, k, v, q_op, tau, rpb, mask, attn, p, out, o, y)
        return result, ShiftedWindowSaved(geometry, tensors, a)

    def relevance(self, R: Tensor, saved: ShiftedWindowSaved, cfg: RuleConfig) -> list[Tensor]:
        (B, H, W, C, pad_H, pad_W, window, shift, shifted, nW, N, heads, d), tensors, a = saved
        xw, qkv, qkv_bias, q, k, v, q_op, tau, rpb, mask, scores, p, out, o, y = tensors
        M = R.shape[1]
        nh, nw = pad_H // window[0], pad_W // window[1]
        # the crop, the reverse shift and the window merge, walked back
        R = F.pad(R, (0, 0, 0, pad_W - W, 0, pad_H - H))
        if shifted:
            R = torch.roll(R, shifts=(-shift[0], -shift[1]), dims=(2, 3))
        R = R.view(B, M, nh, window[0], nw, window[1], C).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, M, nW * N, C)
        # output projection (its dropout passes relevance)
        z_proj = _live_bias(y, a["proj_bias"]).view(B, nW * N, C)
        R = ops.epsilon(R, o.view(B, nW * N, C), z_proj, a["proj_weight"], ops.Geometry(linear=True), cfg.eps,
                        cfg.prims)
        R_out = R.view(B, M, nW, N, heads, d).transpose(3, 4)  # (B, M, nW, heads, N, d)

        def windows(t: Tensor) -> Tensor:  # (B * nW, ...) -> (B, nW, ...)
            return t.view(B, nW, *t.shape[1:])

        p5, v5, out5 = windows(p), windows(v), windows(out)
        if cfg.attention == "cp":
            R_v = ops.reference_matmul_cp(R_out, p5, v5, out5, cfg.eps)[1]
            R_q = R_k = torch.zeros_like(R_v)
        else:
            R_p, R_v = ops.reference_matmul_uniform(R_out, p5, v5, out5, cfg.eps)
            R_s = ops.reference_softmax(R_p, windows(scores), p5, -1)
            bias = rpb if mask is None else rpb.view(1, 1, heads, N, N) + mask.view(1, nW, 1, N, N)  # broadcasts
            if tau is None:  # V1: scores = (q d^-1/2) @ k^T + bias
                A_op, B_op = windows(q_op), windows(k).transpose(-2, -1)
                z = _live_bias(windows(scores), bias)
            else:  # V2: the norms held constant (module docstring)
                norm_q = q.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach()
                norm_k = k.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach()
                A_op, B_op = windows(q / norm_q * tau), windows(k / norm_k).transpose(-2, -1)
                z = _live_bias(windows(scores), bias)
            R_q, R_kt = ops.reference_matmul_uniform(R_s, A_op, B_op, z, cfg.eps)
            R_k = R_kt.transpose(-2, -1)
        # q, k, v back into the qkv projection's output, then its epsilon rule
        R_qkv = torch.stack([R_q, R_k, R_v], 2)  # (B, M, 3, nW, heads, N, d)
        R_qkv = R_qkv.permute(0, 1, 3, 5, 2, 4, 6).reshape(B, M, nW * N, 3 * C)
        z_qkv = _live_bias(qkv, qkv_bias).view(B, nW * N, 3 * C)
        R = ops.epsilon(R_qkv, xw.view(B, nW * N, C), z_qkv, a["qkv_weight"], ops.Geometry(linear=True), cfg.eps,
                        cfg.prims)
        # window partition, cyclic shift and padding, walked back
        R = R.view(B, M, nh, nw, window[0], window[1], C).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, M, pad_H, pad_W, C)
        if shifted:
            R = torch.roll(R, shifts=(shift[0], shift[1]), dims=(2, 3))
        return [R[:, :, :H, :W, :]]


@REGISTRY.register("torchvision.models.swin_transformer.shifted_window_attention", group="attention",
                   description="torchvision's `shifted_window_attention` (Swin V1, and V2's cosine attention with "
                               "the norms held constant): the window partition, shift and crop by their adjoints, "
                               "the projections by epsilon, the attention by AttnLRP (or CP-LRP) with the relative "
                               "position bias and the shift mask as biases")
def _shifted_window_attention(ctx: NodeContext):
    b = ctx.bind(_SWA_ARGS, _SWA_DEFAULTS)
    if "shift_size" not in b:
        raise ctx.unsupported("shifted_window_attention without shift_size")
    ctx.constants(b)
    for key in ("window_size", "num_heads", "shift_size", "attention_dropout", "dropout", "training"):
        if isinstance(b[key], fx.Node):
            raise ctx.unsupported(f"argument '{key}' must be fixed when the model is traced")

    def arguments(env: Env) -> dict[str, Any]:
        return {k: env[v.name] if isinstance(v, fx.Node) else v for k, v in b.items()}

    return ShiftedWindowAttentionStep(ctx.name, ctx.single(), arguments)


def patch_merging_pad_relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """Adjoint of ``_patch_merging_pad``: ``x`` (..., H, W, C) padded to even H, W, the four slices ``x[0::2,
    0::2]``, ``x[1::2, 0::2]``, ``x[0::2, 1::2]``, ``x[1::2, 1::2]`` concatenated along the channels; the
    relevance's four channel blocks are scattered back to those positions and the padding is cut off."""
    x = inputs[0]
    H, W, C = x.shape[-3:]
    full = R.new_zeros(*R.shape[:-3], H + H % 2, W + W % 2, C)
    parts = R.split(C, -1)
    for part, (i, j) in zip(parts, ((0, 0), (1, 0), (0, 1), (1, 1))):
        full[..., i::2, j::2, :] = part
    return [full[..., :H, :W, :]]


@REGISTRY.register("torchvision.models.swin_transformer._patch_merging_pad", group="data movement",
                   description="torchvision's `_patch_merging_pad` (Swin's patch merging): its adjoint")
def _patch_merging_pad(ctx: NodeContext):
    return CallStep(ctx.name, [ctx.single()], ctx.call(), patch_merging_pad_relevance, kind=Kind.MOVE)
