"""Pooling rules (docs/rules.md#max-pool, docs/kernels.md#max-pool and docs/kernels.md#average-pooling).

Max-pool, winner-take-all: ``R_in = scatter_add_idx(R * z / stab(z))`` at the forward's argmax indices, where
``z`` is the pool output (the winner's value). Inputs that win several overlapping windows collect the sum.

Average pooling is linear with weights ``1 / (kh * kw)`` (or the divisor the layer uses), so it takes the
epsilon rule ``R_in = a * P^T (R / stab(z))`` with ``P^T`` the exact adjoint of the forward pooling. For
adaptive pooling that adjoint covers the uneven windows PyTorch uses when the input size is not a multiple of
the output size; where it is (global pooling included) this equals a pool with ``stride = in // out`` and
``kernel = in - (out - 1) * stride``.

Backends whose primitives have ``avgpool_forward`` and ``avgpool_backward`` (``cpp``, ``cuda``) run average
pooling, adaptive pooling and a spatial mean through :class:`AvgPoolFunction`: one fused kernel each way. The others
run :class:`LinearPoolFunction`: ATen's pooling (or its adjoint) between two fused elementwise passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .primitives import TorchPrimitives
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


def reference_sum(R: Tensor, a: Tensor, z: Tensor, dims: Sequence[int], eps: float = 1e-2) -> Tensor:
    """Epsilon rule through a sum over ``dims`` of ``a`` (non-negative dims of ``a``, never 0; ``z`` keeps them as
    size 1 or drops them): ``z = sum_i a_i`` is a linear layer with weights 1, so
    ``R_in_i = a_i R / stab(z)``, the output's relevance broadcast back over the summed axes. ``R`` has the shape
    of ``z`` with the map axis after the batch. Conservation: ``sum_i R_in_i = z R / stab(z)``."""
    B, M = R.shape[:2]
    s = R / stabilize(z, eps).unsqueeze(1)
    keep = [1 if d in dims else n for d, n in enumerate(a.shape)]
    return a.unsqueeze(1) * s.reshape(B, M, *keep[1:])


class MaxPoolFunction(torch.autograd.Function):
    """Winner-take-all through a max-pool with a hand-written backward.

    Forward: ``R_in = scatter_add_idx(R * z / t)``. Backward, given ``G``: ``g = gather_idx(G)``,
    ``dR = g * z / t``, ``dz = sum_M g * R * eps * sign(z) / t^2`` (``z`` is the pool output; its gradient reaches
    the winners through the pool's own backward).
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, z: Tensor, indices: Tensor, input_size: tuple[int, int], eps: float,
                prims: TorchPrimitives) -> Tensor:
        B, M, C = R.shape[:3]
        R_, z_, idx = R.contiguous().view(B, M, C, -1), z.contiguous().view(B, C, -1), indices.contiguous()
        idx = idx.view(B, C, -1)
        out = prims.maxpool_forward(R_, z_, idx, input_size[0] * input_size[1], eps)
        ctx.save_for_backward(R_, z_, idx)
        ctx.shapes, ctx.eps, ctx.prims = (R.shape, z.shape), eps, prims
        return out.view(B, M, C, *input_size)

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, ...]:
        R, z, idx = ctx.saved_tensors
        B, M, C = R.shape[:3]
        dR, dz = ctx.prims.maxpool_backward(G.contiguous().view(B, M, C, -1), R, z, idx, ctx.eps)
        return dR.view(ctx.shapes[0]), dz.view(ctx.shapes[1]), None, None, None, None


def maxpool(R: Tensor, z: Tensor, indices: Tensor, input_size: tuple[int, int], eps: float,
            prims: TorchPrimitives | None = None) -> Tensor:
    """Winner-take-all through a max-pool, on a backend's primitives or (``prims`` None) the reference."""
    if prims is None:
        return reference_maxpool(R, z, indices, input_size, eps)
    return MaxPoolFunction.apply(R, z, indices, tuple(input_size), eps, prims)


class LinearPoolFunction(torch.autograd.Function):
    """Epsilon rule through a fixed linear map ``P`` (average pooling, a mean, a diagonal BatchNorm scale).

    Forward: ``R_in = a * P^T (R / t)``. Backward: ``U = G a``, ``dA = sum_M G c``; ``V = P U``; ``dR = V / t``,
    ``dz = -sum_M V s / t``. ``adjoint`` applies ``P^T`` to (B*M, ...) tensors, ``apply`` applies ``P``; both
    are ATen's pooling kernels and their backwards (exact, any option), or the identity.
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, a: Tensor, z: Tensor, adjoint: Callable[[Tensor], Tensor],
                apply: Callable[[Tensor], Tensor], eps: float, prims: TorchPrimitives) -> Tensor:
        B, M = R.shape[:2]
        R_, a_, z_ = R.contiguous(), a.contiguous(), z.contiguous()
        s = prims.stab_divide(R_.view(B, M, -1), z_.view(B, -1), eps)
        c = adjoint(s.view(B * M, *z.shape[1:])).contiguous().view(B, M, -1)
        R_in = prims.mul_activation(c, a_.view(B, -1))
        ctx.save_for_backward(R_, a_, z_, c if ctx.needs_input_grad[1] else None)
        ctx.pool_fn, ctx.eps, ctx.prims = apply, eps, prims
        return R_in.view(B, M, *a.shape[1:])

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, ...]:
        R, a, z, c = ctx.saved_tensors
        B, M = R.shape[:2]
        prims, eps = ctx.prims, ctx.eps
        U, dA = prims.epsilon_backward_input(G.contiguous().view(B, M, -1), a.view(B, -1), c)
        V = ctx.pool_fn(U.view(B * M, *a.shape[1:])).contiguous().view(B, M, -1)
        s = prims.stab_divide(R.view(B, M, -1), z.view(B, -1), eps)
        dR, dZ = prims.epsilon_backward_stab(V, s, z.view(B, -1), eps)
        return dR.view(R.shape), None if dA is None else dA.view(a.shape), dZ.view(z.shape), None, None, None, None


class AvgPoolWindows(NamedTuple):
    """The windows of ``avg_pool2d`` (two-element kernel size, stride and padding, as ATen's kernels use them);
    ``None`` in their place means ``adaptive_avg_pool2d`` to the output's size."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    @classmethod
    def of(cls, kernel_size: Sequence[int] | int, stride: Sequence[int] | int | None, padding: Sequence[int] | int,
           ceil_mode: bool = False, count_include_pad: bool = True,
           divisor_override: int | None = None) -> AvgPoolWindows:
        """``avg_pool2d``'s arguments as it reads them: one value for both axes, an empty or None stride the
        kernel size."""
        def pair(x: Sequence[int] | int) -> tuple[int, int]:
            x = (x,) if isinstance(x, int) else tuple(x)
            return (int(x[0]), int(x[0])) if len(x) == 1 else (int(x[0]), int(x[1]))

        kernel = pair(kernel_size)
        step = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else pair(stride)
        return cls(kernel, step, pair(padding), bool(ceil_mode), bool(count_include_pad), divisor_override)


class AvgPoolFunction(torch.autograd.Function):
    """Epsilon rule through an average pooling in one fused kernel each way (``prims.avgpool_forward`` and
    ``prims.avgpool_backward``), with :class:`LinearPoolFunction`'s maths and gradients.

    ``R`` (B, M, C, Ho, Wo), ``a`` (B, C, H, W), ``z`` (B, C, Ho, Wo) the pool's output; ``windows`` an
    :class:`AvgPoolWindows`, or None for adaptive pooling to (Ho, Wo). Forward: ``R_in = a * P^T (R / t)``.
    Backward, given ``G``: ``V = P (G a)``; ``dR = V / t``, ``dz = -sum_M V s / t``, ``da = sum_M G c`` with
    ``c = P^T s`` recomputed in the kernel rather than stored (no M-fold activation-sized tensor is saved).
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float,
                prims: TorchPrimitives) -> Tensor:
        R_, a_, z_ = R.contiguous(), a.contiguous(), z.contiguous()
        ctx.save_for_backward(R_, a_, z_)
        ctx.windows, ctx.eps, ctx.prims = windows, eps, prims
        return prims.avgpool_forward(R_, a_, z_, windows, eps)

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, ...]:
        R, a, z = ctx.saved_tensors
        need_da = ctx.needs_input_grad[1]
        dR, dz, da = ctx.prims.avgpool_backward(G.contiguous(), R, a, z, ctx.windows, ctx.eps, need_da)
        return dR, da if need_da else None, dz, None, None, None


def _fused_avgpool(prims: TorchPrimitives) -> bool:
    """Whether ``prims`` has the single-pass average-pooling kernels."""
    return hasattr(prims, "avgpool_forward") and hasattr(prims, "avgpool_backward")


def avgpool(R: Tensor, a: Tensor, z: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
            padding: Sequence[int], ceil_mode: bool = False, count_include_pad: bool = True,
            divisor_override: int | None = None, eps: float = 1e-2, prims: TorchPrimitives | None = None) -> Tensor:
    """Epsilon rule through ``avg_pool2d``, on a backend's primitives or (``prims`` None) the reference."""
    if prims is None:
        return reference_avgpool(R, a, z, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                 divisor_override, eps)
    if _fused_avgpool(prims) and a.dim() == 4:
        windows = AvgPoolWindows.of(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        return AvgPoolFunction.apply(R, a, z, windows, eps, prims)
    n = R.shape[0] * R.shape[1]
    args = (list(kernel_size), list(stride), list(padding), ceil_mode, count_include_pad, divisor_override)
    return LinearPoolFunction.apply(
        R, a, z, lambda s: torch.ops.aten.avg_pool2d_backward(s, _shape_like(a, n), *args),
        lambda u: torch.nn.functional.avg_pool2d(u, *args), eps, prims)


def adaptive_avgpool(R: Tensor, a: Tensor, z: Tensor, eps: float = 1e-2,
                     prims: TorchPrimitives | None = None) -> Tensor:
    """Epsilon rule through ``adaptive_avg_pool2d``, on a backend's primitives or the reference."""
    if prims is None:
        return reference_adaptive_avgpool(R, a, z, eps)
    if _fused_avgpool(prims) and a.dim() == 4:
        return AvgPoolFunction.apply(R, a, z, None, eps, prims)
    n, out = R.shape[0] * R.shape[1], tuple(z.shape[-2:])
    return LinearPoolFunction.apply(
        R, a, z, lambda s: torch.ops.aten._adaptive_avg_pool2d_backward(s, _shape_like(a, n)),
        lambda u: torch.nn.functional.adaptive_avg_pool2d(u, out), eps, prims)


def mean(R: Tensor, a: Tensor, z: Tensor, dims: Sequence[int], eps: float = 1e-2,
         prims: TorchPrimitives | None = None) -> Tensor:
    """Epsilon rule through a mean over ``dims``, on a backend's primitives or the reference."""
    if prims is None:
        return reference_mean(R, a, z, dims, eps)
    B, M = R.shape[:2]
    first = min(dims, default=0)
    P, Q = math.prod(a.shape[1:first]), math.prod(a.shape[first:])
    if _fused_avgpool(prims) and first >= 1 and sorted(dims) == list(range(first, a.dim())) and Q > 0:
        # a mean over trailing axes: a global adaptive pool of a viewed as (B, P, 1, Q)
        R_in = AvgPoolFunction.apply(R.reshape(B, M, P, 1, 1), a.reshape(B, P, 1, Q), z.reshape(B, P, 1, 1), None,
                                     eps, prims)
        return R_in.view(B, M, *a.shape[1:])
    return _reduction(R, a, z, dims, math.prod(a.shape[d] for d in dims), eps, prims)


def reduce_sum(R: Tensor, a: Tensor, z: Tensor, dims: Sequence[int], eps: float = 1e-2,
               prims: TorchPrimitives | None = None) -> Tensor:
    """Epsilon rule through a sum over ``dims`` (:func:`reference_sum`), on a backend's primitives (through
    :class:`LinearPoolFunction`: the adjoint broadcasts back, the map itself sums) or the reference."""
    if prims is None:
        return reference_sum(R, a, z, dims, eps)
    return _reduction(R, a, z, dims, 1, eps, prims)


def _reduction(R: Tensor, a: Tensor, z: Tensor, dims: Sequence[int], count: int, eps: float,
               prims: TorchPrimitives) -> Tensor:
    """:class:`LinearPoolFunction` for ``z = sum over dims of a / count`` (a mean: the count of the summed
    elements; a sum: 1)."""
    keep = [1 if d in dims else size for d, size in enumerate(a.shape)][1:]
    shifted = list(dims)  # the axes of a (B, ...) tensor are those of the (B*M, ...) ones too

    def adjoint(s: Tensor) -> Tensor:
        s = s.reshape(s.shape[0], *keep)
        return (s / count if count != 1 else s).expand(s.shape[0], *a.shape[1:])

    def apply(u: Tensor) -> Tensor:
        u = u.sum(shifted, keepdim=True)
        return (u / count if count != 1 else u).reshape(u.shape[0], *z.shape[1:])

    return LinearPoolFunction.apply(R, a, z, adjoint, apply, eps, prims)
