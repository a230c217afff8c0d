"""Layer geometry: a convolution's parameters, and the exact adjoint (transposed convolution) of a conv."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

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
            raise InputError(f"input size {n} cannot map to output size {o} with kernel {k}, stride {s}, "
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


@dataclass(frozen=True)
class Geometry:
    """How a linear layer maps its input: a 2-d convolution's parameters, or ``linear`` for ``nn.Linear``."""

    linear: bool = False
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
