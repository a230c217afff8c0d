"""Max-pool winner-take-all kernels (KERNELS.md, "Max-pool"): a scatter forward and a gather backward.

Shapes follow :meth:`isnet_kernels.ops.primitives.TorchPrimitives.maxpool_forward`: relevance R (B, M, C, Lo),
the pool output ``z`` and the forward's argmax ``indices`` (B, C, Lo), each index the flat position of the
window's winner in its channel's plane of ``length`` elements. Inside the kernels a (B, M, C, Lo) tensor is B*M
rows of N = C*Lo elements; element ``n`` of a row lies in channel ``n // Lo`` and its winner at
``(n // Lo) * length + indices[b, n]`` of the (B, M, C, length) input-side row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops.primitives import new_output
from .utils import calculate_settings, check_floating, compute_dtype, eps_parts, rebuild_eps, stabilize


@triton.jit
def _maxpool_forward_kernel(
    R_ptr, Z_ptr, IDX_ptr, OUT_ptr, OUT_row_stride, M, N, Lo, length, n_col_blocks, eps_hi, eps_lo,
    COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Winner-take-all: ``OUT[b, m, c, IDX[b, c, o]] += R[b, m, c, o] * z[b, c, o] / stab(z[b, c, o])``.

    At a window's winner the input equals the output ``z``, so this is the epsilon rule ``a * R / stab(z)``.
    Windows that share a winner collide: the sum is taken with ``tl.atomic_add`` into a zeroed ``OUT``.
    One program per (row ``b*M + m``, column block); all tensors contiguous.
    """
    pid = tl.program_id(0)
    row = (pid // n_col_blocks).to(tl.int64)
    col = (pid % n_col_blocks) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = col < N
    act = (row // M) * N + col
    r = tl.load(R_ptr + row * N + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    z = tl.load(Z_ptr + act, mask=mask, other=1.0).to(COMPUTE_DTYPE)
    idx = tl.load(IDX_ptr + act, mask=mask, other=0).to(tl.int64)
    v = r * (z / stabilize(z, rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE)))
    dst = OUT_ptr + row * OUT_row_stride + (col // Lo) * length + idx
    tl.atomic_add(dst, v.to(OUT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _maxpool_backward_kernel(
    G_ptr, G_row_stride, R_ptr, Z_ptr, IDX_ptr, DR_ptr, DZ_ptr, M, N, Lo, length, n_col_blocks, eps_hi, eps_lo,
    COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Backward of :func:`_maxpool_forward_kernel` with ``G = dL/dR_in`` (B, M, C, length):

    ``g = G[b, m, c, IDX[b, c, o]]``; ``DR = g z / t`` (B, M, C, Lo); ``DZ = sum_m g R eps sign(z) / t^2``
    (B, C, Lo), since ``d(z / stab(z))/dz = eps sign(z) / t^2``. One program per (b, column block), looping
    over the M maps.
    """
    pid = tl.program_id(0)
    b = (pid // n_col_blocks).to(tl.int64)
    col = (pid % n_col_blocks) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = col < N
    act = b * N + col
    z = tl.load(Z_ptr + act, mask=mask, other=1.0).to(COMPUTE_DTYPE)
    idx = tl.load(IDX_ptr + act, mask=mask, other=0).to(tl.int64)
    eps = rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE)
    t = stabilize(z, eps)
    ratio = z / t
    src = (col // Lo) * length + idx
    acc = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    for m in range(0, M):
        row = b * M + m
        g = tl.load(G_ptr + row * G_row_stride + src, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        r = tl.load(R_ptr + row * N + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        tl.store(DR_ptr + row * N + col, (g * ratio).to(DR_ptr.dtype.element_ty), mask=mask)
        acc += g * r
    dz = acc * (tl.where(z >= 0, eps, -eps) / (t * t))
    tl.store(DZ_ptr + act, dz.to(DZ_ptr.dtype.element_ty), mask=mask)


def _check(R: Tensor, z: Tensor, indices: Tensor) -> tuple[int, int, int, int]:
    if R.dim() != 4 or tuple(z.shape) != (R.shape[0], *R.shape[2:]) or indices.shape != z.shape:
        raise ValueError(f"expected R (B, M, C, Lo) and z, indices (B, C, Lo), got {tuple(R.shape)}, "
                         f"{tuple(z.shape)}, {tuple(indices.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be int64 or int32, got {indices.dtype}")
    check_floating(R, z)
    B, M, C, Lo = R.shape
    return B, M, C, Lo


def maxpool_forward(R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
    """Winner-take-all: R (B, M, C, Lo), z and indices (B, C, Lo) -> (B, M, C, length), summing collisions.

    See :func:`_maxpool_forward_kernel`. float16 and bfloat16 sum collisions in a float32 buffer, rounded once at
    the end (half-precision atomics would round after every add; bfloat16 ones also need Hopper).
    """
    B, M, C, Lo = _check(R, z, indices)
    R, z, indices = R.contiguous(), z.contiguous(), indices.contiguous()
    acc_dtype = torch.float32 if R.dtype in (torch.float16, torch.bfloat16) else R.dtype
    out = torch.zeros((B, M, C, length), dtype=acc_dtype, device=R.device)  # zeros, not new_output: a scatter
    N = C * Lo
    if N == 0 or B * M == 0:
        return out.to(R.dtype)
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    _maxpool_forward_kernel[(B * M * n_col_blocks,)](
        R, z, indices, out, C * length, M, N, Lo, length, n_col_blocks, *eps_parts(eps),
        COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
    )
    return out.to(R.dtype)


def maxpool_backward(G: Tensor, R: Tensor, z: Tensor, indices: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``g = G[idx]``; ``dR = g z / t`` (B, M, C, Lo); ``dz = sum_M g R eps sign(z) / t^2`` (B, C, Lo).

    See :func:`_maxpool_backward_kernel`.
    """
    B, M, C, Lo = _check(R, z, indices)
    if G.dim() != 4 or tuple(G.shape[:3]) != (B, M, C):
        raise ValueError(f"expected G (B, M, C, length) with (B, M, C) = {(B, M, C)}, got {tuple(G.shape)}")
    check_floating(G, R)
    G, R, z, indices = G.contiguous(), R.contiguous(), z.contiguous(), indices.contiguous()
    dR = new_output((B, M, C, Lo), R)
    dz = new_output((B, C, Lo), R)
    N = C * Lo
    if N == 0 or B == 0:
        return dR, dz.zero_()
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    _maxpool_backward_kernel[(B * n_col_blocks,)](
        G, C * G.shape[-1], R, z, indices, dR, dz, M, N, Lo, G.shape[-1], n_col_blocks, *eps_parts(eps),
        COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
    )
    return dR, dz


__all__ = ["maxpool_backward", "maxpool_forward"]
