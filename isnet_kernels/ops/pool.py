"""Pooling rules (ISNET.md §2, KERNELS.md "Max-pool" and "Avg-pool").

Max-pool, winner-take-all: ``R_in = scatter_add_idx(R * z / stab(z))`` at the forward's argmax indices, where
``z`` is the pool output (the winner's value). Inputs that win several overlapping windows collect the sum.

Average pooling is linear with weights ``1 / (kh * kw)`` (or the divisor the layer uses), so it takes the
epsilon rule ``R_in = a * P^T (R / stab(z))`` with ``P^T`` the exact adjoint of the forward pooling. For
adaptive pooling that adjoint covers the uneven windows PyTorch uses when the input size is not a multiple of
the output size; where it is (global pooling included) this equals a pool with ``stride = in // out`` and
``kernel = in - (out - 1) * stride``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .stabilize import stabilize


def reference_maxpool(R: Tensor, z: Tensor, indices: Tensor, input_size: Sequence[int], eps: float = 1e-2) -> Tensor:
    """Winner-take-all through a max-pool.

    ``R`` (B, M, C, Ho, Wo); ``z`` (B, C, Ho, Wo) the pool output; ``indices`` (B, C, Ho, Wo), each the flat
    position in the (H, W) plane of the window's winner (as ``max_pool2d(return_indices=True)`` gives them);
    ``input_size`` is (H, W). Returns (B, M, C, H, W).
    """
    B, M, C = R.shape[:3]
    H, W = input_size
    v = (R * (z / stabilize(z, eps)).unsqueeze(1)).flatten(3)
    idx = indices.flatten(2).unsqueeze(1).expand(B, M, C, v.shape[-1])
    return v.new_zeros(B, M, C, H * W).scatter_add(3, idx, v).unflatten(3, (H, W))


def _shape_like(a: Tensor, n: int) -> Tensor:
    """A storage-free tensor of shape (n, *a.shape[1:]): only its size is read by the pooling adjoints."""
    return a.new_zeros(()).expand(n, *a.shape[1:])


def reference_avgpool(
    R: Tensor, a: Tensor, z: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
    ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
    eps: float = 1e-2,
) -> Tensor:
    """Epsilon rule through ``avg_pool2d``. ``R`` (B, M, C, Ho, Wo), ``a`` (B, C, H, W), ``z`` the pool output."""
    B, M = R.shape[:2]
    s = (R / stabilize(z, eps).unsqueeze(1)).flatten(0, 1)
    c = torch.ops.aten.avg_pool2d_backward(s, _shape_like(a, B * M), list(kernel_size), list(stride),
                                           list(padding), ceil_mode, count_include_pad, divisor_override)
    return a.unsqueeze(1) * c.unflatten(0, (B, M))


def reference_adaptive_avgpool(R: Tensor, a: Tensor, z: Tensor, eps: float = 1e-2) -> Tensor:
    """Epsilon rule through ``adaptive_avg_pool2d``, with its exact adjoint."""
    B, M = R.shape[:2]
    s = (R / stabilize(z, eps).unsqueeze(1)).flatten(0, 1)
    c = torch.ops.aten._adaptive_avg_pool2d_backward(s, _shape_like(a, B * M))
    return a.unsqueeze(1) * c.unflatten(0, (B, M))


def reference_mean(R: Tensor, a: Tensor, z: Tensor, dims: Sequence[int], eps: float = 1e-2) -> Tensor:
    """Epsilon rule through a mean over ``dims`` of ``a`` (non-negative dims of ``a``; ``z`` keeps them as size 1
    or drops them). ``R`` has the shape of ``z`` with the map axis after the batch."""
    B, M = R.shape[:2]
    s = R / stabilize(z, eps).unsqueeze(1)
    keep = [1 if d in dims else n for d, n in enumerate(a.shape)]
    s = s.reshape(B, M, *keep[1:])
    count = 1
    for d in dims:
        count *= a.shape[d]
    return a.unsqueeze(1) * (s / count)
