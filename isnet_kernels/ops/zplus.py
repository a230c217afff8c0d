"""The z+ rule (used by the dual ISNet): only positive weights and positive bias carry relevance.

    z+ = W+ a + b+,    s = R / stab(z+),    R_in = a * (W+)^T s,

with ``W+ = max(W, 0)``, ``b+ = max(b, 0)`` (``b`` used as given: callers pass it with the rule's detach
semantics, as :mod:`isnet_kernels.ops.zbox` describes). Meant for layers whose
input ``a`` is non-negative (after a ReLU). ``z+`` is not a forward quantity, so it is computed here.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .geometry import Pair, conv2d_transpose
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
