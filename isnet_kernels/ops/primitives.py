"""The kernel set a fused backend provides, and its plain-PyTorch implementation.

The autograd Functions of the relevance ops (hand-written backwards, docs/kernels.md#primitives) are written once, in
terms of these primitives; :class:`TorchPrimitives` is the ``torch`` backend, and a compiled backend (``cpp``,
``cuda``, ``triton``) supplies faster versions of some or all of them (the fused ops' table,
:mod:`isnet_kernels.ops.fused`). Shapes are flattened so that every primitive is a simple loop nest:

- a *map* tensor has shape (B, M, N): relevance-like, with M maps per image and N = C*H*W (or C*L) elements;
- an *activation* tensor has shape (B, N): shared by the M maps, indexed ``b = n // M`` inside kernels, never
  repeated M times in memory.

All inputs are contiguous and of one floating dtype; reductions over M accumulate in at least float32.
``t = stab(z) = z + eps * sign(z)`` with ``sign(0) = +1``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Geometry, conv2d_transpose
from .records import CallOperator, Operator, elementwise, fused
from .stabilize import stabilize


def poisoning() -> bool:
    """Whether kernels fill their outputs with NaN before writing them (``ISNET_KERNELS_POISON=1``, for tests):
    an element a kernel forgets to write then shows as NaN instead of stale memory."""
    return os.environ.get("ISNET_KERNELS_POISON") == "1"


def new_output(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised output buffer, or a NaN-filled one when :func:`poisoning` is on."""
    if poisoning():
        return torch.full(shape, float("nan"), dtype=dtype or like.dtype, device=like.device)
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device)


def _epsilon_backward_input_cpp(call: CallOperator, prims: TorchPrimitives, G: Tensor, a: Tensor,
                                c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if c is None:  # U = G * a alone
        return prims.mul_activation(G, a), None
    return call("epsilon_backward_input", G, a, c)


def _pool_planes(R: Tensor) -> None:
    torch._check(R.dim() == 4, lambda: f"R must have shape (B, M, C, Lo), got {tuple(R.shape)}")


def _maxpool_forward_fake(R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
    _pool_planes(R)
    return R.new_empty((R.shape[0], R.shape[1], R.shape[2], length))


def _maxpool_backward_fake(G: Tensor, R: Tensor, z: Tensor, indices: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    _pool_planes(R)
    return R.new_empty(R.shape), R.new_empty((R.shape[0], R.shape[2], R.shape[3]))


class TorchPrimitives:
    """Plain-PyTorch primitives: the specification every backend's kernels are tested against.

    The fused ones carry their record (:mod:`~isnet_kernels.ops.records`): the C++ operators and the Triton
    launcher that implement them.
    """

    name = "torch"

    # --- elementwise, memory-bound -----------------------------------------------------------------------------
    @elementwise(inputs="ma", outputs="m")
    def stab_divide(self, R: Tensor, z: Tensor, eps: float) -> Tensor:
        """``s = R / stab(z)``: R (B, M, N), z (B, N) -> (B, M, N)."""
        return R / stabilize(z, eps).unsqueeze(1)

    @elementwise(inputs="ma", outputs="m")
    def mul_activation(self, c: Tensor, a: Tensor) -> Tensor:
        """``a * c``: c (B, M, N), a (B, N) -> (B, M, N)."""
        return c * a.unsqueeze(1)

    @elementwise(inputs="mam", outputs="ms", cpp=_epsilon_backward_input_cpp)
    def epsilon_backward_input(self, G: Tensor, a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``U = G * a`` (B, M, N) and ``dA = sum_M G * c`` (B, N) (None when ``c`` is None)."""
        U = G * a.unsqueeze(1)
        return U, None if c is None else (G * c).sum(1)

    @elementwise(inputs="mma", outputs="ms")
    def epsilon_backward_stab(self, V: Tensor, s: Tensor, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """``dR = V / t`` (B, M, N) and ``dZ = -sum_M V * s / t`` (B, N)."""
        t = stabilize(z, eps).unsqueeze(1)
        dR = V / t
        return dR, -(dR * s).sum(1)

    @elementwise(inputs="maaa", outputs="mm")
    def residual_forward(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """``T = R / stab(y)``; ``R_x = x * T``, ``R_f = f * T``: R (B, M, N); x, f, y (B, N)."""
        T = R / stabilize(y, eps).unsqueeze(1)
        return x.unsqueeze(1) * T, f.unsqueeze(1) * T

    @elementwise(inputs="mmmaaa", outputs="msss")
    def residual_backward(self, Gx: Tensor, Gf: Tensor, R: Tensor, x: Tensor, f: Tensor, y: Tensor,
                          eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """With ``Q = Gx x + Gf f`` and ``T = R / t``: ``dR = Q / t``, ``dx = sum_M Gx T``, ``df = sum_M Gf T``,
        ``dy = -sum_M Q T / t`` (y enters separately: it is the forward's sum, with its own graph)."""
        t = stabilize(y, eps).unsqueeze(1)
        T = R / t
        Q = Gx * x.unsqueeze(1) + Gf * f.unsqueeze(1)
        dR = Q / t
        return dR, (Gx * T).sum(1), (Gf * T).sum(1), -(dR * T).sum(1)

    @fused(Operator("maxpool_forward", _maxpool_forward_fake), triton="pool.maxpool_forward")
    def maxpool_forward(self, R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
        """Winner-take-all: R (B, M, C, Lo), z and indices (B, C, Lo) -> (B, M, C, length), summing collisions."""
        B, M, C, Lo = R.shape
        v = R * (z / stabilize(z, eps)).unsqueeze(1)
        idx = indices.unsqueeze(1).expand(B, M, C, Lo)
        return v.new_zeros(B, M, C, length).scatter_add_(3, idx, v)

    @fused(Operator("maxpool_backward", _maxpool_backward_fake), triton="pool.maxpool_backward")
    def maxpool_backward(self, G: Tensor, R: Tensor, z: Tensor, indices: Tensor,
                         eps: float) -> tuple[Tensor, Tensor]:
        """``g = G[idx]``; ``dR = g z / t`` (B, M, C, Lo); ``dz = sum_M g R eps sign(z) / t^2`` (B, C, Lo)."""
        B, M, C, Lo = R.shape
        g = G.gather(3, indices.unsqueeze(1).expand(B, M, C, Lo))
        t = stabilize(z, eps)
        dR = g * (z / t).unsqueeze(1)
        dz = (g * R).sum(1) * (torch.where(z >= 0, z.new_tensor(eps), z.new_tensor(-eps)) / (t * t))
        return dR, dz

    # --- contractions ------------------------------------------------------------------------------------------
    def transpose(self, s: Tensor, weight: Tensor, input_size: tuple[int, ...], geom: Geometry) -> Tensor:
        """``W^T s``: s (N', Co, Ho, Wo) -> (N', Ci, H, W), or (N', K) -> (N', F) for linear."""
        if geom.linear:
            return s @ weight
        return conv2d_transpose(s, weight, input_size, geom.stride, geom.padding, geom.dilation, geom.groups)

    def forward_map(self, U: Tensor, weight: Tensor, geom: Geometry) -> Tensor:
        """``W U`` without bias: the layer's own linear map (the adjoint of :meth:`transpose`)."""
        if geom.linear:
            return U @ weight.t()
        return F.conv2d(U, weight, None, geom.stride, geom.padding, geom.dilation, geom.groups)

    def weight_grad(self, U: Tensor, s: Tensor, weight: Tensor, geom: Geometry) -> Tensor:
        """``d <U, W^T s> / dW``, summed over N': the weight gradient of ``forward_map`` with input U, grad s."""
        if geom.linear:  # (N', K) and (N', F), or token tensors (N', T, K) and (N', T, F)
            return s.reshape(-1, s.shape[-1]).t() @ U.reshape(-1, U.shape[-1])
        return torch.ops.aten.convolution_backward(
            s, U, weight, None, list(geom.stride), list(geom.padding), list(geom.dilation), False, [0, 0],
            geom.groups, [False, True, False])[1]
