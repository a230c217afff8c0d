"""The Z^B (box) rule for the first layer, whose input lies in known bounds ``l <= x <= h`` (ISNET.md §2).

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

import torch.nn.functional as F
from torch import Tensor

from .conv import Pair, conv2d_transpose
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
