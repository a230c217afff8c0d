"""The z+ rule (used by the dual ISNet): only positive weights and positive bias carry relevance.

    z+ = W+ a + b+,    s = R / stab(z+),    R_in = a * (W+)^T s,

with ``W+ = max(W, 0)``, ``b+ = max(b, 0)`` (``b`` used as given: callers pass it with the rule's detach
semantics, as :mod:`isnet_kernels.ops.zbox` describes). Meant for layers whose
input ``a`` is non-negative (after a ReLU). ``z+`` is not a forward quantity, so it is computed here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .conv import epsilon
from .geometry import Geometry, Pair, conv2d_transpose
from .output import all_logits_output
from .primitives import TorchPrimitives
from .residual import residual_split
from .stabilize import stabilize


def reference_conv_zplus(
    R: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair = (1, 1), padding: Pair = (0, 0),
    dilation: Pair = (1, 1), groups: int = 1, eps: float = 1e-2,
) -> Tensor:
    """z+ rule through a convolution. Shapes as in :func:`reference_conv_epsilon`."""
    B, M = R.shape[:2]
    w_pos = weight.clamp(min=0)
    b_pos = None if bias is None else bias.clamp(min=0)
    z = F.conv2d(a, w_pos, b_pos, stride, padding, dilation, groups)
    s = R / stabilize(z, eps).unsqueeze(1)
    c = conv2d_transpose(s.flatten(0, 1), w_pos, a.shape[-2:], stride, padding, dilation, groups)
    return a.unsqueeze(1) * c.unflatten(0, (B, M))


def reference_linear_zplus(R: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-2) -> Tensor:
    """z+ rule through a linear layer. ``R`` (B, M, K), ``a`` (B, F), ``weight`` (K, F)."""
    w_pos = weight.clamp(min=0)
    z = a @ w_pos.t()
    if bias is not None:
        z = z + bias.clamp(min=0)
    s = R / stabilize(z, eps).unsqueeze(1)
    return a.unsqueeze(1) * (s @ w_pos)


def zplus(R: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None, geom: Geometry, eps: float = 1e-2,
          prims: TorchPrimitives | None = None) -> Tensor:
    """z+ rule through a conv or linear layer, on a backend's primitives or (``prims`` None) the reference.

    It is the epsilon rule of the layer ``(W+, b+)``: ``z+`` is computed by autograd (it is not a forward
    quantity), then :class:`~isnet_kernels.ops.conv.EpsilonFunction` propagates with ``W+``.
    """
    if prims is None:
        if geom.linear:
            return reference_linear_zplus(R, a, weight, bias, eps)
        return reference_conv_zplus(R, a, weight, bias, geom.stride, geom.padding, geom.dilation, geom.groups, eps)
    w_pos = weight.clamp(min=0)
    b_pos = None if bias is None else bias.clamp(min=0)
    z = prims.forward_map(a, w_pos, geom)
    if b_pos is not None:
        z = z + b_pos.view(-1, *([1] * (z.dim() - 2)))
    return epsilon(R, a, z, w_pos, geom, eps, prims)


def zplus_residual_split(R: Tensor, x: Tensor, f: Tensor, eps: float = 1e-2,
                         prims: TorchPrimitives | None = None) -> tuple[Tensor, Tensor]:
    """z+ through a residual sum ``y = x + f``: ``R_x = x+ R / stab(x+ + f+)``, ``R_f = f+ R / stab(x+ + f+)`` with
    ``x+ = max(x, 0)``, ``f+ = max(f, 0)`` (:func:`~isnet_kernels.ops.residual.residual_split` of the positive
    parts)."""
    x, f = x.clamp(min=0), f.clamp(min=0)
    return residual_split(R, x, f, x + f, eps=eps, prims=prims)


def zplus_all_logits(a: Tensor, weight: Tensor, bias: Tensor | None, eps: float = 1e-2) -> Tensor:
    """All logits of the positive last layer explained together: ``R_out = z+ = W+ a + b+``, then epsilon through
    ``W+`` (:func:`~isnet_kernels.ops.output.all_logits_output`)."""
    w = weight.clamp(min=0)
    z = F.linear(a, w, None if bias is None else bias.clamp(min=0))
    return all_logits_output(a, z, w, eps)
