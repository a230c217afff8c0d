"""Epsilon rule for ``Conv2d`` and ``Linear`` (docs/rules.md#epsilon-conv-and-linear,
docs/kernels.md#epsilon-conv-and-linear).

With layer input ``a``, pre-activation ``z`` (read from the forward pass, BatchNorm folded) and incoming
relevance ``R`` of shape (B, M, ...), the epsilon rule is

    s = R / stab(z),    c = W^T s,    R_in = a * c,

where ``W^T`` is the adjoint of the layer's linear map: ``conv_transpose2d`` with the same stride, padding,
dilation and groups, its ``output_padding`` computed exactly from the input size, or ``s @ W`` for ``Linear``.
The map axis M is folded into the batch for the transposed convolution; ``a`` and ``z`` are broadcast over it.

``z`` may be given by its parts, :class:`Preactivation` ``z = x0 * scale + shift`` (a BatchNorm folded, or a bias
added, per channel): the op then keeps ``x0``, which the forward pass keeps anyway, and the two (C,) vectors, and
rebuilds ``z`` in its backward (one elementwise pass) instead of keeping an activation-sized ``z`` of its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .geometry import Geometry, Pair, conv2d_transpose, conv_transpose_output_padding
from .preactivation import Preactivation, affine, affine_backward
from .primitives import TorchPrimitives
from .stabilize import stabilize

__all__ = ["EpsilonFunction", "conv2d_transpose", "conv_transpose_output_padding", "epsilon",
           "reference_conv_epsilon", "reference_linear_epsilon"]

def reference_conv_epsilon(
    R: Tensor, a: Tensor, z: Tensor, weight: Tensor, stride: Pair = (1, 1), padding: Pair = (0, 0),
    dilation: Pair = (1, 1), groups: int = 1, eps: float = 1e-2,
) -> Tensor:
    """Epsilon rule through a convolution: ``R_in = a * conv_transpose2d(R / stab(z), W)``.

    Parameters
    ----------
    R : (B, M, Co, Ho, Wo) relevance at the layer's output.
    a : (B, Ci, H, W) the layer's input activation.
    z : (B, Co, Ho, Wo) the layer's pre-activation (bias included, BatchNorm folded).
    weight : (Co, Ci / groups, kh, kw), BatchNorm folded.
    """
    B, M = R.shape[:2]
    s = R / stabilize(z, eps).unsqueeze(1)
    c = conv2d_transpose(s.flatten(0, 1), weight, a.shape[-2:], stride, padding, dilation, groups)
    return a.unsqueeze(1) * c.unflatten(0, (B, M))


def reference_linear_epsilon(R: Tensor, a: Tensor, z: Tensor, weight: Tensor, eps: float = 1e-2) -> Tensor:
    """Epsilon rule through a linear layer: ``R_in = a * ((R / stab(z)) @ W)``.

    ``R`` is (B, M, K), ``a`` (B, F), ``z`` (B, K), ``weight`` (K, F).
    """
    s = R / stabilize(z, eps).unsqueeze(1)
    return a.unsqueeze(1) * (s @ weight)


class EpsilonFunction(torch.autograd.Function):
    """Epsilon rule through a conv or linear layer with a hand-written backward (docs/kernels.md).

    Forward: ``s = R / t``, ``c = W^T s``, ``R_in = a * c`` with ``t = stab(z)``. Backward, given
    ``G = dL/dR_in``: ``U = G * a``, ``dL/da = sum_M G * c``; ``V = W U``; ``dL/dW = weight_grad(U, s)``;
    ``dL/dR = V / t``, ``dL/dz = -sum_M V * s / t``. Every elementwise step is one primitive of the backend
    (one pass over memory); the contractions are the backend's (ATen for ``cpp``). ``s`` is recomputed in the
    backward from ``R`` and ``z`` (one cheap pass) instead of being stored. The third argument is ``x0`` and
    ``z = x0 * scale + shift`` (:class:`Preactivation`; ``z = x0`` without ``scale`` and ``shift``), rebuilt in the
    backward too; ``dL/dx0``, ``dL/dscale``, ``dL/dshift`` follow from ``dL/dz``.
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, a: Tensor, x0: Tensor, weight: Tensor, geom: Geometry, eps: float,
                prims: TorchPrimitives, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        B, M = R.shape[:2]
        need_c = ctx.needs_input_grad[1]
        x0 = x0.contiguous()
        R_, a_ = R.contiguous(), a.contiguous()
        z = affine(x0, scale, shift).contiguous()  # x0 itself without scale and shift
        fused = getattr(prims, "conv_epsilon_forward", None)
        if fused is not None and not geom.linear:
            R_in, c = fused(R_, a_, z, weight, tuple(a.shape[-2:]), geom, eps, need_c)
        else:
            s = prims.stab_divide(R_.view(B, M, -1), z.view(B, -1), eps)
            c = prims.transpose(s.view(B * M, *z.shape[1:]), weight, tuple(a.shape[2:]), geom)
            R_in = prims.mul_activation(c.view(B, M, -1), a_.view(B, -1)).view(B, M, *a.shape[1:])
        ctx.save_for_backward(R_, a_, x0, weight, c if need_c else None, scale, shift)
        ctx.geom, ctx.eps, ctx.prims = geom, eps, prims
        return R_in

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, ...]:
        R, a, x0, weight, c, scale, shift = ctx.saved_tensors
        geom, eps, prims = ctx.geom, ctx.eps, ctx.prims
        z = affine(x0, scale, shift).contiguous()
        B, M = R.shape[:2]
        s = prims.stab_divide(R.view(B, M, -1), z.view(B, -1), eps)
        U, dA = prims.epsilon_backward_input(G.contiguous().view(B, M, -1), a.view(B, -1),
                                             None if c is None else c.view(B, M, -1))
        U = U.view(B * M, *a.shape[1:])
        dW = prims.weight_grad(U, s.view(B * M, *z.shape[1:]), weight, geom) if ctx.needs_input_grad[3] else None
        dR = dZ = None
        needs = (ctx.needs_input_grad[2], ctx.needs_input_grad[7], ctx.needs_input_grad[8])
        if ctx.needs_input_grad[0] or any(needs):
            fused = getattr(prims, "conv_epsilon_backward", None)
            if fused is not None and not geom.linear:  # V = W U with dR, dZ in the convolution's epilogue
                dR, dZ = fused(U.view(B, M, *a.shape[1:]), weight, s.view(R.shape), z, geom, eps)
            else:
                V = prims.forward_map(U, weight, geom)
                dR, dZ = prims.epsilon_backward_stab(V.view(B, M, -1), s, z.view(B, -1), eps)
                dR, dZ = dR.view(R.shape), dZ.view(z.shape)
        dA = None if dA is None else dA.view(a.shape)
        dx0, dscale, dshift = (None, None, None) if dZ is None else affine_backward(dZ, x0, scale, shift, needs)
        return dR, dA, dx0, dW, None, None, None, dscale, dshift


def epsilon(R: Tensor, a: Tensor, z: Tensor | Preactivation, weight: Tensor, geom: Geometry, eps: float,
            prims: TorchPrimitives | None = None) -> Tensor:
    """Epsilon rule through a conv (``geom.linear`` False) or linear layer, on a backend's primitives
    (``prims``), or on the autograd reference when ``prims`` is None. ``z`` given by its parts
    (:class:`Preactivation`) is rebuilt in the backend op's backward instead of kept."""
    if prims is not None:
        pre = z if isinstance(z, Preactivation) else Preactivation(z)
        return EpsilonFunction.apply(R, a, pre.x0, weight, geom, eps, prims, pre.scale, pre.shift)
    if isinstance(z, Preactivation):
        z = z.value()
    if geom.linear:
        return reference_linear_epsilon(R, a, z, weight, eps)
    return reference_conv_epsilon(R, a, z, weight, geom.stride, geom.padding, geom.dilation, geom.groups, eps)
