"""The Z^B (box) rule for the first layer, whose input lies in known bounds ``l <= x <= h``
(docs/rules.md#zb-first-layer).

With ``W+ = max(W, 0)``, ``W- = min(W, 0)``, ``b+ = max(b, 0)``, ``b- = min(b, 0)`` (BatchNorm folded first,
the bias detached) and zero padding:

    z_B  = z - (conv(l, W+) + l_b * b+) - (conv(h, W-) + h_b * b-)
    s    = R / stab(z_B)
    R_in = (x - l) * conv_transpose(s, W+) + (x - h) * conv_transpose(s, W-)

``z`` is the layer's own pre-activation from the forward pass. ``conv(l, W+)`` convolves the constant bound
image (zero padded like the input), so it is computed once at batch size 1. ``bias`` is used as given: the
engine passes it with the rule's semantics (the layer's own bias detached; a folded BatchNorm's ``b'`` keeps
the gradient of ``gamma``). The bias terms follow the authors'
reference code (``l * b+`` and ``h * b-``): the bias counts as an input in ``[l, h]``. With per-channel bounds
the bias's own bounds are ``l_b = min(l)`` and ``h_b = max(h)``, which equals the scalar rule when all channels
share their bounds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Geometry, Pair, conv2d_transpose
from .primitives import TorchPrimitives
from .stabilize import stabilize


def reference_conv_zbox(
    R: Tensor, a: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, low: Tensor, high: Tensor,
    stride: Pair = (1, 1), padding: Pair = (0, 0), dilation: Pair = (1, 1), groups: int = 1, eps: float = 1e-2,
) -> Tensor:
    """Z^B rule through a convolution.

    ``R`` (B, M, Co, Ho, Wo); ``a`` (B, Ci, H, W); ``z`` (B, Co, Ho, Wo); ``weight`` (Co, Ci/groups, kh, kw);
    ``low`` and ``high`` broadcastable to (1, Ci, H, W).
    """
    B, M = R.shape[:2]
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    low_img = low.expand(1, *a.shape[1:])
    high_img = high.expand(1, *a.shape[1:])
    z_low = F.conv2d(low_img, w_pos, None, stride, padding, dilation, groups)
    z_high = F.conv2d(high_img, w_neg, None, stride, padding, dilation, groups)
    if bias is not None:
        z_low = z_low + low.amin() * bias.clamp(min=0).view(-1, 1, 1)
        z_high = z_high + high.amax() * bias.clamp(max=0).view(-1, 1, 1)
    s = (R / stabilize(z - z_low - z_high, eps).unsqueeze(1)).flatten(0, 1)
    c_pos = conv2d_transpose(s, w_pos, a.shape[-2:], stride, padding, dilation, groups).unflatten(0, (B, M))
    c_neg = conv2d_transpose(s, w_neg, a.shape[-2:], stride, padding, dilation, groups).unflatten(0, (B, M))
    return (a - low_img).unsqueeze(1) * c_pos + (a - high_img).unsqueeze(1) * c_neg


def reference_linear_zbox(
    R: Tensor, a: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, low: Tensor, high: Tensor,
    eps: float = 1e-2,
) -> Tensor:
    """Z^B rule through a linear layer. ``R`` (B, M, K), ``a`` (B, F), ``low``/``high`` broadcastable to (1, F)."""
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    low_vec, high_vec = low.expand(1, a.shape[1]), high.expand(1, a.shape[1])
    z_low, z_high = low_vec @ w_pos.t(), high_vec @ w_neg.t()
    if bias is not None:
        z_low = z_low + low.amin() * bias.clamp(min=0)
        z_high = z_high + high.amax() * bias.clamp(max=0)
    s = R / stabilize(z - z_low - z_high, eps).unsqueeze(1)
    return (a - low_vec).unsqueeze(1) * (s @ w_pos) + (a - high_vec).unsqueeze(1) * (s @ w_neg)


class ZBoxFunction(torch.autograd.Function):
    """The Z^B rule's relevance step with a hand-written backward.

    Forward: ``s = R / stab(z_B)``, ``c+ = W+^T s``, ``c- = W-^T s``, ``R_in = A_l * c+ + A_h * c-`` with
    ``A_l = x - l``, ``A_h = x - h``. Backward, given ``G``: ``U+ = G A_l``, ``U- = G A_h``,
    ``dA_l = sum_M G c+``, ``dA_h = sum_M G c-``; ``V = W+ U+ + W- U-``; ``dW+ = weight_grad(U+, s)``,
    ``dW- = weight_grad(U-, s)``; ``dR = V / t``, ``dz_B = -sum_M V s / t``. The inputs ``z_B``, ``A_l``, ``A_h``,
    ``W+``, ``W-`` are built by autograd from the layer (cheap, batch-sized), see :func:`zbox`.
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, a_low: Tensor, a_high: Tensor, z_box: Tensor, w_pos: Tensor, w_neg: Tensor,
                geom: Geometry, eps: float, prims: TorchPrimitives) -> Tensor:
        B, M = R.shape[:2]
        R_, z_ = R.contiguous(), z_box.contiguous()
        a_low, a_high = a_low.contiguous(), a_high.contiguous()
        size = tuple(a_low.shape[2:])
        keep = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        fused = getattr(prims, "zbox_forward", None)
        if fused is not None and not geom.linear:  # one kernel: both signs, division prologue, product epilogue
            R_in, c_pos, c_neg = fused(R_, a_low, a_high, z_, w_pos, w_neg, size, geom, eps, keep)
            c_pos, c_neg = (None if c is None else c.view(B, M, -1) for c in (c_pos, c_neg))
            R_in = R_in.view(B, M, -1)
        else:
            s = prims.stab_divide(R_.view(B, M, -1), z_.view(B, -1), eps).view(B * M, *z_box.shape[1:])
            if _stackable(geom):  # one transposed convolution for both signs: W+ and W- stacked on the input axis
                c = prims.transpose(s, torch.cat([w_pos, w_neg], 1), size, geom)
                c_pos, c_neg = (part.contiguous().view(B, M, -1) for part in c.chunk(2, 1))
            else:
                c_pos = prims.transpose(s, w_pos, size, geom).view(B, M, -1)
                c_neg = prims.transpose(s, w_neg, size, geom).view(B, M, -1)
            R_in = prims.mul_activation(c_pos, a_low.view(B, -1)) + prims.mul_activation(c_neg, a_high.view(B, -1))
        ctx.save_for_backward(R_, a_low, a_high, z_, w_pos, w_neg, c_pos if keep else None, c_neg if keep else None)
        ctx.geom, ctx.eps, ctx.prims = geom, eps, prims
        return R_in.view(B, M, *a_low.shape[1:])

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, ...]:
        R, a_low, a_high, z_box, w_pos, w_neg, c_pos, c_neg = ctx.saved_tensors
        geom, eps, prims = ctx.geom, ctx.eps, ctx.prims
        B, M = R.shape[:2]
        G = G.contiguous().view(B, M, -1)
        s = prims.stab_divide(R.view(B, M, -1), z_box.view(B, -1), eps)
        U_pos, dA_low = prims.epsilon_backward_input(G, a_low.view(B, -1), c_pos)
        U_neg, dA_high = prims.epsilon_backward_input(G, a_high.view(B, -1), c_neg)
        U_pos, U_neg = U_pos.view(B * M, *a_low.shape[1:]), U_neg.view(B * M, *a_low.shape[1:])
        s4 = s.view(B * M, *z_box.shape[1:])
        if _stackable(geom):  # one convolution and one weight gradient for both signs
            U = torch.cat([U_pos, U_neg], 1)
            w = torch.cat([w_pos, w_neg], 1)
            V = prims.forward_map(U, w, geom)
            dW_pos = dW_neg = None
            if ctx.needs_input_grad[4] or ctx.needs_input_grad[5]:
                dW_pos, dW_neg = prims.weight_grad(U, s4, w, geom).chunk(2, 1)
        else:
            dW_pos = prims.weight_grad(U_pos, s4, w_pos, geom) if ctx.needs_input_grad[4] else None
            dW_neg = prims.weight_grad(U_neg, s4, w_neg, geom) if ctx.needs_input_grad[5] else None
            V = prims.forward_map(U_pos, w_pos, geom) + prims.forward_map(U_neg, w_neg, geom)
        dR, dZ = prims.epsilon_backward_stab(V.view(B, M, -1), s, z_box.view(B, -1), eps)
        return (dR.view(R.shape), None if dA_low is None else dA_low.view(a_low.shape),
                None if dA_high is None else dA_high.view(a_high.shape), dZ.view(z_box.shape), dW_pos, dW_neg,
                None, None, None)


def _stackable(geom: Geometry) -> bool:
    """Whether W+ and W- can be stacked into one layer along the input axis (not across conv groups)."""
    return geom.linear or geom.groups == 1


def zbox(R: Tensor, a: Tensor, z: Tensor, weight: Tensor, bias: Tensor | None, low: Tensor, high: Tensor,
         geom: Geometry, eps: float, prims: TorchPrimitives | None = None) -> Tensor:
    """Z^B rule through a conv or linear layer, on a backend's primitives or (``prims`` None) the reference."""
    if prims is None:
        if geom.linear:
            return reference_linear_zbox(R, a, z, weight, bias, low, high, eps)
        return reference_conv_zbox(R, a, z, weight, bias, low, high, geom.stride, geom.padding, geom.dilation,
                                   geom.groups, eps)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    low_in, high_in = low.expand(1, *a.shape[1:]), high.expand(1, *a.shape[1:])
    if geom.linear:
        z_low, z_high = low_in @ w_pos.t(), high_in @ w_neg.t()
    else:
        z_low = F.conv2d(low_in, w_pos, None, geom.stride, geom.padding, geom.dilation, geom.groups)
        z_high = F.conv2d(high_in, w_neg, None, geom.stride, geom.padding, geom.dilation, geom.groups)
    if bias is not None:
        shape = (-1,) + (1,) * (z.dim() - 2)
        z_low = z_low + low.amin() * bias.clamp(min=0).view(shape)
        z_high = z_high + high.amax() * bias.clamp(max=0).view(shape)
    return ZBoxFunction.apply(R, a - low_in, a - high_in, z - z_low - z_high, w_pos, w_neg, geom, eps, prims)
