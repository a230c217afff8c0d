"""Epsilon rule for ``Conv2d`` and ``Linear`` (ISNET.md §2, KERNELS.md "Conv / Linear, epsilon").

With layer input ``a``, pre-activation ``z`` (read from the forward pass, BatchNorm folded) and incoming
relevance ``R`` of shape (B, M, ...), the epsilon rule is

    s = R / stab(z),    c = W^T s,    R_in = a * c,

where ``W^T`` is the adjoint of the layer's linear map: ``conv_transpose2d`` with the same stride, padding,
dilation and groups, its ``output_padding`` computed exactly from the input size, or ``s @ W`` for ``Linear``.
The map axis M is folded into the batch for the transposed convolution; ``a`` and ``z`` are broadcast over it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .stabilize import stabilize

Pair = tuple[int, int]


def _pair(v: int | tuple[int, ...]) -> Pair:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_transpose_output_padding(
    input_size: tuple[int, int], output_size: tuple[int, int], kernel_size: Pair, stride: Pair, padding: Pair,
    dilation: Pair,
) -> Pair:
    """The ``output_padding`` that makes ``conv_transpose2d`` return exactly ``input_size``.

    A convolution maps size ``n`` to ``o = floor((n + 2p - d(k-1) - 1) / s) + 1``; its transpose returns
    ``(o-1)s - 2p + d(k-1) + 1 + output_padding``, so ``output_padding`` is the remainder the floor dropped.
    """
    result = []
    for n, o, k, s, p, d in zip(input_size, output_size, kernel_size, stride, padding, dilation):
        op = n - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
        if not 0 <= op < s:
            raise ValueError(f"input size {n} cannot map to output size {o} with kernel {k}, stride {s}, "
                             f"padding {p}, dilation {d}")
        result.append(op)
    return result[0], result[1]


def conv2d_transpose(
    s: Tensor, weight: Tensor, input_size: tuple[int, int], stride: Pair = (1, 1), padding: Pair = (0, 0),
    dilation: Pair = (1, 1), groups: int = 1,
) -> Tensor:
    """The adjoint of ``F.conv2d(., weight, None, stride, padding, dilation, groups)`` applied to ``s``.

    ``s`` is (N, Co, Ho, Wo); the result is (N, Ci, *input_size).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel = (weight.shape[-2], weight.shape[-1])
    out_pad = conv_transpose_output_padding(tuple(input_size), (s.shape[-2], s.shape[-1]), kernel, stride, padding,
                                            dilation)
    return F.conv_transpose2d(s, weight, None, stride, padding, out_pad, groups, dilation)


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
