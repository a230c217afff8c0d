"""Pooling kernels: max-pool winner-take-all (docs/kernels.md#max-pool), a scatter forward and a gather backward;
and the epsilon rule through average pooling (docs/kernels.md#average-pooling), a gather forward and a two-launch
backward
(see :func:`avgpool_forward`, :func:`avgpool_backward`).

Max-pool shapes follow :meth:`isnet_kernels.ops.primitives.TorchPrimitives.maxpool_forward`: relevance R (B, M, C, Lo),
the pool output ``z`` and the forward's argmax ``indices`` (B, C, Lo), each index the flat position of the
window's winner in its channel's plane of ``length`` elements. Inside the kernels a (B, M, C, Lo) tensor is B*M
rows of N = C*Lo elements; element ``n`` of a row lies in channel ``n // Lo`` and its winner at
``(n // Lo) * length + indices[b, n]`` of the (B, M, C, length) input-side row.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...errors import InputError, InputTypeError
from ...ops.pool import AvgPoolWindows
from ...ops.primitives import new_output
from .utils import (
    calculate_settings,
    check_floating,
    compute_dtype,
    device_guard,
    eps_parts,
    interpreting,
    rebuild_eps,
    row_tile,
    stabilize,
)


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
    row, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
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
    b, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
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
        raise InputError(f"expected R (B, M, C, Lo) and z, indices (B, C, Lo), got {tuple(R.shape)}, "
                         f"{tuple(z.shape)}, {tuple(indices.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise InputTypeError(f"indices must be int64 or int32, got {indices.dtype}")
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
    with device_guard(R.device):
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
        raise InputError(f"expected G (B, M, C, length) with (B, M, C) = {(B, M, C)}, got {tuple(G.shape)}")
    check_floating(G, R)
    G, R, z, indices = G.contiguous(), R.contiguous(), z.contiguous(), indices.contiguous()
    dR = new_output((B, M, C, Lo), R)
    dz = new_output((B, C, Lo), R)
    N = C * Lo
    if N == 0 or B == 0:
        return dR, dz.zero_()
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(G.device):
        _maxpool_backward_kernel[(B * n_col_blocks,)](
            G, C * G.shape[-1], R, z, indices, dR, dz, M, N, Lo, G.shape[-1], n_col_blocks, *eps_parts(eps),
            COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )
    return dR, dz


# ----------------------------------------------------------------------------------------------------------------
# average pooling (avg_pool2d with every option, adaptive_avg_pool2d), epsilon rule
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _covering(i, n_in, n_out, K, S, P, ADAPTIVE: tl.constexpr):
    """``[lo, hi)``: the windows along one axis that contain input position ``i`` (a contiguous range).

    avg_pool2d: window ``o`` starts at ``o*S - P`` and holds K positions, so ``o*S`` lies in ``[i+P-K+1, i+P]``.
    Adaptive: window ``o`` is ``[floor(o*n_in/n_out), ceil((o+1)*n_in/n_out))``.
    """
    if ADAPTIVE:
        lo = (i * n_out) // n_in
        hi = ((i + 1) * n_out + n_in - 1) // n_in
    else:
        num = i + P - K + 1
        lo = tl.where(num > 0, (num + S - 1) // S, 0)  # the negative case's quotient is discarded
        hi = tl.minimum((i + P) // S + 1, n_out)
    return lo, hi


@triton.jit
def _window(o, n_in, n_out, K, S, P, ADAPTIVE: tl.constexpr):
    """``(start, end, size)`` of window ``o`` along one axis: ``[start, end)`` clipped to the input, ``size``
    before clipping to the input (ATen's ``pool_size``, which counts the padding)."""
    if ADAPTIVE:
        start = (o * n_in) // n_out
        end = ((o + 1) * n_in + n_out - 1) // n_out
        size = end - start
    else:
        start = o * S - P
        end = tl.minimum(start + K, n_in + P)
        size = end - start
        start = tl.maximum(start, 0)
        end = tl.minimum(end, n_in)
    return start, end, size


@triton.jit
def _divisor(start_h, end_h, size_h, start_w, end_w, size_w, DIVISOR, COUNT_PAD: tl.constexpr,
             COMPUTE_DTYPE: tl.constexpr):
    """The window's divisor as ATen's avg_pool2d takes it: ``divisor_override`` (DIVISOR > 0), else the padded
    size (``count_include_pad``), else the number of input positions; 0 for an empty window."""
    inside = (end_h - start_h) * (end_w - start_w)
    if COUNT_PAD:
        count = size_h * size_w
    else:
        count = inside
    count = tl.where(DIVISOR > 0, DIVISOR, count)
    return tl.where(inside > 0, count, 0).to(COMPUTE_DTYPE)


@triton.jit
def _avgpool_adjoint_kernel(
    R_ptr, Z_ptr, A_ptr, G_ptr, OUT_ptr, M, C, H, W, Ho, Wo, n_elements, maps_per_program,
    KH, KW, SH, SW, PH, PW, DIVISOR, NCOV_H, NCOV_W, eps_hi, eps_lo,
    ADAPTIVE: tl.constexpr, COUNT_PAD: tl.constexpr, GRAD_A: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """At each input pixel, ``c = P^T (R / stab(z))``, gathered from the (at most NCOV_H x NCOV_W) windows
    holding it, each term divided by its window's divisor. Then

    - ``GRAD_A`` False: ``OUT = a * c`` (B, M, C, H, W), the relevance; one map per program row;
    - ``GRAD_A`` True: ``OUT = sum_m G * c`` (B, C, H, W), the gradient w.r.t. a; the M maps loop inside.

    Elements are flattened over (rows, C, H, W) with rows B*M (``maps_per_program`` 1) or B (``maps_per_program``
    M); all tensors contiguous.
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    hw = offs % (H * W)
    w = (hw % W).to(tl.int32)
    h = (hw // W).to(tl.int32)
    plane = offs // (H * W)  # row * C + c
    c = plane % C
    row = plane // C
    eps = rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE)
    lo_h, hi_h = _covering(h, H, Ho, KH, SH, PH, ADAPTIVE)
    lo_w, hi_w = _covering(w, W, Wo, KW, SW, PW, ADAPTIVE)
    acc = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    for mm in range(0, maps_per_program):
        n = row * maps_per_program + mm
        b = n // M
        R_plane = R_ptr + (n * C + c) * (Ho * Wo)
        Z_plane = Z_ptr + (b * C + c) * (Ho * Wo)
        cs = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
        for th in range(0, NCOV_H):
            oh = lo_h + th
            valid_h = mask & (oh < hi_h)
            start_h, end_h, size_h = _window(oh, H, Ho, KH, SH, PH, ADAPTIVE)
            for tw in range(0, NCOV_W):
                ow = lo_w + tw
                valid = valid_h & (ow < hi_w)
                start_w, end_w, size_w = _window(ow, W, Wo, KW, SW, PW, ADAPTIVE)
                div = _divisor(start_h, end_h, size_h, start_w, end_w, size_w, DIVISOR, COUNT_PAD, COMPUTE_DTYPE)
                r = tl.load(R_plane + oh * Wo + ow, mask=valid, other=0.0).to(COMPUTE_DTYPE)
                z = tl.load(Z_plane + oh * Wo + ow, mask=valid, other=1.0).to(COMPUTE_DTYPE)
                s = r / stabilize(z, eps)
                cs += tl.where(valid, s / tl.where(valid, div, 1.0), 0.0)
        if GRAD_A:
            g = tl.load(G_ptr + (n * C + c) * (H * W) + hw, mask=mask, other=0.0).to(COMPUTE_DTYPE)
            acc += g * cs
        else:
            a = tl.load(A_ptr + (b * C + c) * (H * W) + hw, mask=mask, other=0.0).to(COMPUTE_DTYPE)
            tl.store(OUT_ptr + (n * C + c) * (H * W) + hw, (a * cs).to(OUT_ptr.dtype.element_ty), mask=mask)
    if GRAD_A:
        tl.store(OUT_ptr + offs, acc.to(OUT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _avgpool_backward_kernel(
    G_ptr, A_ptr, R_ptr, Z_ptr, DR_ptr, DZ_ptr, M, C, H, W, Ho, Wo, n_windows,
    KH, KW, SH, SW, PH, PW, DIVISOR, NMEM_H, NMEM_W, eps_hi, eps_lo,
    ADAPTIVE: tl.constexpr, COUNT_PAD: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_J: tl.constexpr,
):
    """Output side of the backward, per window (b, c, oh, ow) with the M maps inside: ``V = P (G a)`` (the
    window's mean of ``G * a``), ``DR = V / t`` (B, M, C, Ho, Wo) and ``DZ = -sum_m DR * R / t`` (B, C, Ho, Wo),
    ``t = stab(z)``. A program owns BLOCK_O windows and reads their members BLOCK_J at a time (a window of a
    global pooling is one contiguous plane, so its loads coalesce).
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    mask = offs < n_windows
    ohw = offs % (Ho * Wo)
    ow = (ohw % Wo).to(tl.int32)
    oh = (ohw // Wo).to(tl.int32)
    plane = offs // (Ho * Wo)  # b * C + c
    c = plane % C
    b = plane // C
    start_h, end_h, size_h = _window(oh, H, Ho, KH, SH, PH, ADAPTIVE)
    start_w, end_w, size_w = _window(ow, W, Wo, KW, SW, PW, ADAPTIVE)
    div = _divisor(start_h, end_h, size_h, start_w, end_w, size_w, DIVISOR, COUNT_PAD, COMPUTE_DTYPE)
    inv = tl.where(div > 0, 1.0 / tl.where(div > 0, div, 1.0), 0.0)
    t = stabilize(tl.load(Z_ptr + offs, mask=mask, other=1.0).to(COMPUTE_DTYPE),
                  rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    n_members = NMEM_H * NMEM_W
    offs_j = tl.arange(0, BLOCK_J)
    A_planes = A_ptr + plane * (H * W)
    dz = tl.zeros([BLOCK_O], dtype=COMPUTE_DTYPE)
    for m in range(0, M):
        n = b * M + m
        G_planes = G_ptr + (n * C + c) * (H * W)
        v = tl.zeros([BLOCK_O], dtype=COMPUTE_DTYPE)
        for j0 in range(0, n_members, BLOCK_J):
            j = j0 + offs_j
            h = start_h[:, None] + (j // NMEM_W)[None, :]
            w = start_w[:, None] + (j % NMEM_W)[None, :]
            valid = mask[:, None] & (j < n_members)[None, :] & (h < end_h[:, None]) & (w < end_w[:, None])
            pix = h * W + w
            g = tl.load(G_planes[:, None] + pix, mask=valid, other=0.0).to(COMPUTE_DTYPE)
            a = tl.load(A_planes[:, None] + pix, mask=valid, other=0.0).to(COMPUTE_DTYPE)
            v += tl.sum(g * a, axis=1)
        dr = (v * inv) / t
        out = (n * C + c) * (Ho * Wo) + ohw
        tl.store(DR_ptr + out, dr.to(DR_ptr.dtype.element_ty), mask=mask)
        r = tl.load(R_ptr + out, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        dz += dr * (r / t)
    tl.store(DZ_ptr + offs, (-dz).to(DZ_ptr.dtype.element_ty), mask=mask)


def _pool_output_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """avg_pool2d's output size along one axis (ATen's ``pooling_output_shape``, dilation 1)."""
    o = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


@functools.lru_cache(maxsize=256)
def _adaptive_extents(n_in: int, n_out: int) -> tuple[int, int]:
    """(most windows holding one input, most inputs in one window) of an adaptive pooling along one axis."""
    members = max(-(-(o + 1) * n_in // n_out) - o * n_in // n_out for o in range(n_out))
    cover = max(-(-(i + 1) * n_out // n_in) - i * n_out // n_in for i in range(n_in))
    return cover, members


def _pool_plan(R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None) -> dict:
    """Shape checks, and the window parameters the kernels take: geometry, divisor, and the loop extents (windows
    per input NCOV_*, inputs per window NMEM_*)."""
    if R.dim() != 5 or a.dim() != 4 or z.dim() != 4:
        raise InputError(f"expected R (B, M, C, Ho, Wo), a (B, C, H, W), z (B, C, Ho, Wo); got {tuple(R.shape)}, "
                         f"{tuple(a.shape)}, {tuple(z.shape)}")
    B, M, C, Ho, Wo = R.shape
    H, W = a.shape[-2:]
    if tuple(z.shape) != (B, C, Ho, Wo) or tuple(a.shape[:2]) != (B, C):
        raise InputError(f"inconsistent shapes: R {tuple(R.shape)}, a {tuple(a.shape)}, z {tuple(z.shape)}")
    check_floating(R, a, z)
    if windows is None:
        if min(H, W, Ho, Wo) <= 0:
            raise InputError(f"adaptive pooling of {(H, W)} to {(Ho, Wo)}: sizes must be positive")
        (cov_h, mem_h), (cov_w, mem_w) = _adaptive_extents(H, Ho), _adaptive_extents(W, Wo)
        return dict(KH=0, KW=0, SH=1, SW=1, PH=0, PW=0, DIVISOR=0, NCOV_H=cov_h, NCOV_W=cov_w, NMEM_H=mem_h,
                    NMEM_W=mem_w, ADAPTIVE=True, COUNT_PAD=True)
    (kh, kw), (sh, sw), (ph, pw) = windows.kernel_size, windows.stride, windows.padding
    ceil = windows.ceil_mode
    expected = (_pool_output_size(H, kh, sh, ph, ceil), _pool_output_size(W, kw, sw, pw, ceil))
    if (Ho, Wo) != expected or min(kh, kw, sh, sw) <= 0 or ph > kh // 2 or pw > kw // 2:
        raise InputError(f"avg_pool2d with {windows} maps {(H, W)} to {expected}, not to {(Ho, Wo)} (or invalid "
                         "windows: padding must be at most half the kernel)")
    divisor = windows.divisor_override or 0
    if divisor < 0:
        raise InputError(f"divisor_override must be positive, got {divisor}")
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DIVISOR=divisor, NCOV_H=triton.cdiv(kh, sh),
                NCOV_W=triton.cdiv(kw, sw), NMEM_H=kh, NMEM_W=kw, ADAPTIVE=False, COUNT_PAD=windows.count_include_pad)


def _adjoint_launch(R: Tensor, z: Tensor, a: Tensor, G: Tensor | None, out: Tensor, plan: dict, eps: float) -> None:
    B, M, C, Ho, Wo = R.shape
    H, W = a.shape[-2:]
    grad_a = G is not None
    n_elements = out.numel()
    if n_elements == 0:
        return
    # one program per 1024 elements under the interpreter (numpy vectorises a block; programs run one at a time)
    # 512 elements per program; 256 in float64, whose adaptive gather spills at 512 on sm_90
    BLOCK_SIZE, num_warps = (min(triton.next_power_of_2(n_elements), 1024), 1) if interpreting() else (
        256 if R.dtype == torch.float64 else 512, 4)
    with device_guard(R.device):
        _avgpool_adjoint_kernel[(triton.cdiv(n_elements, BLOCK_SIZE),)](
            R, z, a, G if grad_a else R, out, M, C, H, W, Ho, Wo, n_elements, M if grad_a else 1,
            plan["KH"], plan["KW"], plan["SH"], plan["SW"], plan["PH"], plan["PW"], plan["DIVISOR"], plan["NCOV_H"],
            plan["NCOV_W"], *eps_parts(eps), ADAPTIVE=plan["ADAPTIVE"], COUNT_PAD=plan["COUNT_PAD"], GRAD_A=grad_a,
            COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )


def avgpool_forward(R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float) -> Tensor:
    """Epsilon rule through an average pooling in one launch: ``R_in = a * P^T (R / stab(z))``.

    R (B, M, C, Ho, Wo), a (B, C, H, W), z (B, C, Ho, Wo) the pool's output -> (B, M, C, H, W). ``windows`` are
    avg_pool2d's (any ceil_mode, count_include_pad, divisor_override), or None for adaptive_avg_pool2d to
    (Ho, Wo). See :func:`_avgpool_adjoint_kernel`.
    """
    plan = _pool_plan(R, a, z, windows)
    R, a, z = R.contiguous(), a.contiguous(), z.contiguous()
    B, M, C = R.shape[:3]
    out = new_output((B, M, C, *a.shape[-2:]), R)
    _adjoint_launch(R, z, a, None, out, plan, eps)
    return out


def avgpool_backward(G: Tensor, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float,
                     compute_da: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """Backward of :func:`avgpool_forward` given ``G = dL/dR_in`` (B, M, C, H, W), in two launches:

    ``V = P (G a)``, ``dR = V / t`` (B, M, C, Ho, Wo), ``dz = -sum_M V s / t`` (B, C, Ho, Wo) with ``s = R / t``
    (:func:`_avgpool_backward_kernel`); and, when ``compute_da``, ``da = sum_M G * P^T s`` (B, C, H, W), ``P^T s``
    recomputed rather than stored (:func:`_avgpool_adjoint_kernel`). Returns ``(dR, dz, da or None)``.
    """
    plan = _pool_plan(R, a, z, windows)
    B, M, C, Ho, Wo = R.shape
    H, W = a.shape[-2:]
    if tuple(G.shape) != (B, M, C, H, W):
        raise InputError(f"expected G of shape {(B, M, C, H, W)}, got {tuple(G.shape)}")
    check_floating(G, R)
    G, R, a, z = G.contiguous(), R.contiguous(), a.contiguous(), z.contiguous()
    dR = new_output((B, M, C, Ho, Wo), R)
    dz = new_output((B, C, Ho, Wo), R)
    n_windows = B * C * Ho * Wo
    if n_windows:
        n_members = plan["NMEM_H"] * plan["NMEM_W"]
        BLOCK_J = max(1, min(triton.next_power_of_2(n_members), 256 if interpreting() else 128))
        # at most 1024 (window, member) pairs per program, 512 in float64, over 8 warps, and no software pipelining
        # of the member loop: more spill on sm_80 or sm_90 (benchmarks/results/aot/)
        pairs = 4096 if interpreting() else 512 if R.dtype == torch.float64 else 1024
        BLOCK_O = max(16, min(triton.next_power_of_2(n_windows), pairs // BLOCK_J))
        with device_guard(G.device):
            _avgpool_backward_kernel[(triton.cdiv(n_windows, BLOCK_O),)](
                G, a, R, z, dR, dz, M, C, H, W, Ho, Wo, n_windows, plan["KH"], plan["KW"], plan["SH"], plan["SW"],
                plan["PH"], plan["PW"], plan["DIVISOR"], plan["NMEM_H"], plan["NMEM_W"], *eps_parts(eps),
                ADAPTIVE=plan["ADAPTIVE"], COUNT_PAD=plan["COUNT_PAD"], COMPUTE_DTYPE=compute_dtype(R.dtype),
                BLOCK_O=BLOCK_O, BLOCK_J=BLOCK_J, num_warps=8, num_stages=1,
            )
    da = None
    if compute_da:
        da = new_output((B, C, H, W), R)
        _adjoint_launch(R, z, a, G, da, plan, eps)
    return dR, dz, da


__all__ = ["avgpool_backward", "avgpool_forward", "maxpool_backward", "maxpool_forward"]
