"""Fused epsilon rule through a convolution: an implicit-GEMM transposed convolution (KERNELS.md, Conv / Linear).

For relevance R (B, M, Co, Ho, Wo), layer input ``a`` (B, Ci, H, W), pre-activation ``z`` (B, Co, Ho, Wo) and
weight W (Co, Ci/groups, kh, kw), one launch computes

    c = conv_transpose2d(R / stab(z), W)        (same stride, padding, dilation, groups; output size H, W)
    R_in = a * c

with the division by ``stab(z)`` as the GEMM's prologue (applied to each loaded tile of R) and the product with
``a`` as its epilogue; ``c`` itself is stored too when the backward needs it. The M maps are folded into the
batch: image ``n`` of the B*M reads ``a`` and ``z`` at ``b = n // M``, so they are never repeated M times.

Gather formulation: output pixel (n, ci, h, w), with ci in group g, is

    c[n, ci, h, w] = sum_{co in group g} sum_{i, j} s[n, co, ho, wo] * W[co, ci - g*Ci_g, i, j],
    ho = (h + pad_h - i*dil_h) / stride_h,  wo = (w + pad_w - j*dil_w) / stride_w,

over the taps (i, j) for which both divisions are exact and land inside (Ho, Wo). A program owns a tile of
BLOCK_P output pixels (flattened over n, h, w) by BLOCK_CI input channels of one group and loops over the
reduction K = (Co/groups) * kh * kw: output channels outside, in blocks of BLOCK_K, taps inside. Each step is a
(BLOCK_P x BLOCK_K) @ (BLOCK_K x BLOCK_CI) product on tensor cores (``tl.dot``), or, where a group has fewer than
8 input or output channels (depthwise convolutions), a broadcast multiply-add on CUDA cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops.conv import conv_transpose_output_padding
from ..ops.primitives import Geometry, new_output
from .utils import check_floating, compute_dtype, eps_parts, interpreting, rebuild_eps, stabilize

#: Groups with at least this many input and output channels use ``tl.dot``; smaller ones the FMA path.
MIN_DOT_CHANNELS = 8


@triton.jit
def _conv_epsilon_forward_kernel(
    R_ptr, R_n_stride, R_c_stride, R_h_stride, R_w_stride,
    Z_ptr, Z_b_stride, Z_c_stride, Z_h_stride, Z_w_stride,
    A_ptr, A_b_stride, A_c_stride, A_h_stride, A_w_stride,
    W_ptr, W_o_stride, W_i_stride, W_h_stride, W_w_stride,
    OUT_ptr, C_ptr, OUT_n_stride, OUT_c_stride, OUT_h_stride, OUT_w_stride,
    M, H, W, Ho, Wo, Ci_g, Co_g, n_pixels, eps_hi, eps_lo,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, PAD_H: tl.constexpr,
    PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
    KEEP_C: tl.constexpr, USE_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``OUT = a * conv_transpose2d(R / stab(z), W)`` and, when ``KEEP_C``, ``C = conv_transpose2d(R / stab(z), W)``.

    Grid: (pixel blocks of the B*M*H*W output pixels, groups * channel blocks of Ci/groups). The weight is read
    through its four strides, so the launcher may pass it with the input channel innermost. Per-image offsets
    are int32; image offsets (n * stride) are int64.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_ci_blocks = tl.cdiv(Ci_g, BLOCK_CI)
    g = pid_c // n_ci_blocks
    ci = (pid_c % n_ci_blocks) * BLOCK_CI + tl.arange(0, BLOCK_CI)  # input channel within the group
    ci_mask = ci < Ci_g
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < n_pixels
    w = p % W
    h = (p // W) % H
    n = p // (H * W)
    n64 = n.to(tl.int64)
    b64 = (n // M).to(tl.int64)
    eps = rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE)

    R_rows = R_ptr + n64 * R_n_stride + g * Co_g * R_c_stride  # [BLOCK_P] pointers to channel g*Co_g of image n
    Z_rows = Z_ptr + b64 * Z_b_stride + g * Co_g * Z_c_stride
    W_cols = W_ptr + (g * Co_g) * W_o_stride + ci * W_i_stride  # [BLOCK_CI]
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_P, BLOCK_CI], dtype=COMPUTE_DTYPE)
    for k0 in range(0, Co_g, BLOCK_K):  # output channels of the group, BLOCK_K at a time
        co = k0 + offs_k
        k_mask = co < Co_g
        R_tile = R_rows[:, None] + (co * R_c_stride)[None, :]  # [BLOCK_P, BLOCK_K], pixel (0, 0)
        Z_tile = Z_rows[:, None] + (co * Z_c_stride)[None, :]
        W_tile = W_cols[None, :] + (co * W_o_stride)[:, None]  # [BLOCK_K, BLOCK_CI], tap (0, 0)
        w_mask = k_mask[:, None] & ci_mask[None, :]
        for i in range(KH):  # kernel taps: the output pixel (ho, wo) each one reads, if any
            h_num = h + PAD_H - i * DIL_H
            ho = h_num // STRIDE_H
            valid_h = p_mask & (h_num >= 0) & (h_num - ho * STRIDE_H == 0) & (ho < Ho)
            for j in range(KW):
                w_num = w + PAD_W - j * DIL_W
                wo = w_num // STRIDE_W
                valid = valid_h & (w_num >= 0) & (w_num - wo * STRIDE_W == 0) & (wo < Wo)
                rz_mask = valid[:, None] & k_mask[None, :]
                r = tl.load(R_tile + (ho * R_h_stride + wo * R_w_stride)[:, None], mask=rz_mask, other=0.0)
                z = tl.load(Z_tile + (ho * Z_h_stride + wo * Z_w_stride)[:, None], mask=rz_mask, other=1.0)
                s = r.to(COMPUTE_DTYPE) / stabilize(z.to(COMPUTE_DTYPE), eps)  # prologue: [BLOCK_P, BLOCK_K]
                wt = tl.load(W_tile + (i * W_h_stride + j * W_w_stride), mask=w_mask, other=0.0)
                if USE_DOT:
                    acc = tl.dot(s.to(wt.dtype), wt, acc, input_precision=INPUT_PRECISION, out_dtype=COMPUTE_DTYPE)
                else:
                    acc += tl.sum(s[:, :, None] * wt.to(COMPUTE_DTYPE)[None, :, :], axis=1)

    # epilogue: multiply by the layer input a[b, ci, h, w]
    ci_abs = g * Ci_g + ci
    out_mask = p_mask[:, None] & ci_mask[None, :]
    a_off = (b64 * A_b_stride + h * A_h_stride + w * A_w_stride)[:, None] + ci_abs[None, :] * A_c_stride
    a = tl.load(A_ptr + a_off, mask=out_mask, other=0.0).to(COMPUTE_DTYPE)
    out_off = (n64 * OUT_n_stride + h * OUT_h_stride + w * OUT_w_stride)[:, None] + ci_abs[None, :] * OUT_c_stride
    tl.store(OUT_ptr + out_off, (a * acc).to(OUT_ptr.dtype.element_ty), mask=out_mask)
    if KEEP_C:
        tl.store(C_ptr + out_off, acc.to(C_ptr.dtype.element_ty), mask=out_mask)


def _dot_configs() -> list[triton.Config]:
    """Tile configurations for the tensor-core path: Ampere- and Hopper-sized tiles, or one small tile under the
    interpreter (which would otherwise benchmark every configuration on the CPU)."""
    if interpreting():
        return [triton.Config({"BLOCK_P": 128, "BLOCK_CI": 16, "BLOCK_K": 16}, num_warps=4, num_stages=1)]
    shapes = [  # (BLOCK_P, BLOCK_CI, BLOCK_K, num_warps, num_stages)
        (128, 128, 32, 8, 3), (256, 64, 32, 8, 3), (64, 256, 32, 8, 3),  # Hopper / large Ampere tiles
        (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 64, 4, 3),  # Ampere tiles
        (128, 32, 32, 4, 4), (128, 16, 32, 4, 4), (32, 32, 32, 2, 5), (16, 16, 16, 1, 2),  # narrow groups, fp64
    ]
    return [triton.Config({"BLOCK_P": p, "BLOCK_CI": c, "BLOCK_K": k}, num_warps=nw, num_stages=ns)
            for p, c, k, nw, ns in shapes]


def _prune_dot_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop tiles wider than the group's channels (beyond the 16-wide minimum of ``tl.dot``), tiles taller than
    the pixel count, and, for float64 (no tensor cores for it), tiles over 64 x 64 outputs."""
    ci_cap = max(16, triton.next_power_of_2(named_args["Ci_g"]))
    k_cap = max(16, triton.next_power_of_2(named_args["Co_g"]))
    p_cap = max(16, triton.next_power_of_2(named_args["n_pixels"]))
    is_fp64 = named_args["R_ptr"].dtype == torch.float64
    kept = [c for c in configs if c.kwargs["BLOCK_CI"] <= ci_cap and c.kwargs["BLOCK_K"] <= k_cap
            and c.kwargs["BLOCK_P"] <= p_cap and (not is_fp64 or c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_CI"] <= 4096)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_CI"] * c.kwargs["BLOCK_K"])]


_conv_epsilon_forward_dot = triton.autotune(
    configs=_dot_configs(),
    key=["n_pixels", "Ci_g", "Co_g", "Ho", "Wo", "KH", "KW", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W", "KEEP_C"],
    prune_configs_by={"early_config_prune": _prune_dot_configs},
)(_conv_epsilon_forward_kernel)


def _fma_tiles(Ci_g: int, Co_g: int) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_CI, BLOCK_K, num_warps) for the CUDA-core path, keeping the P x K x CI product tile at
    8192 elements at most."""
    block_ci = min(triton.next_power_of_2(Ci_g), 16)
    block_p = 128
    block_k = max(1, min(triton.next_power_of_2(Co_g), 8192 // (block_p * block_ci), 16))
    return block_p, block_ci, block_k, 4


def _input_precision(dtype: torch.dtype) -> str:
    """float32 products use TF32 tensor cores only where PyTorch's matmul precision allows it; exact otherwise."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest" and not interpreting():
        return "tf32"
    return "ieee"


def conv_epsilon_forward(
    R: Tensor, a: Tensor, z: Tensor, weight: Tensor, input_size: tuple[int, int], geom: Geometry, eps: float,
    keep_c: bool,
) -> tuple[Tensor, Tensor | None]:
    """Fused epsilon rule through a 2-d convolution: ``R_in = a * conv_transpose2d(R / stab(z), W)``.

    Parameters
    ----------
    R : (B, M, Co, Ho, Wo) relevance at the layer's output.
    a : (B, Ci, H, W) the layer's input; ``input_size`` must equal (H, W).
    z : (B, Co, Ho, Wo) the layer's pre-activation.
    weight : (Co, Ci / groups, kh, kw).
    geom : stride, padding, dilation and groups of the convolution (not ``linear``).
    keep_c : also return ``c = conv_transpose2d(R / stab(z), W)`` (B, M, Ci, H, W), which the backward needs.

    Returns
    -------
    (R_in, c) with R_in (B, M, Ci, H, W) and c None unless ``keep_c``.
    """
    if geom.linear:
        raise ValueError("conv_epsilon_forward takes a convolution geometry; linear layers use the matmul path")
    if R.dim() != 5 or a.dim() != 4 or z.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"expected R (B, M, Co, Ho, Wo), a (B, Ci, H, W), z (B, Co, Ho, Wo), weight (Co, Ci/g, kh, "
                         f"kw); got {tuple(R.shape)}, {tuple(a.shape)}, {tuple(z.shape)}, {tuple(weight.shape)}")
    B, M, Co, Ho, Wo = R.shape
    _, Ci, H, W = a.shape
    groups = geom.groups
    KH, KW = weight.shape[-2:]
    if (tuple(z.shape) != (B, Co, Ho, Wo) or a.shape[0] != B or tuple(input_size) != (H, W) or weight.shape[0] != Co
            or Co % groups or Ci % groups or weight.shape[1] != Ci // groups):
        raise ValueError(f"inconsistent shapes: R {tuple(R.shape)}, a {tuple(a.shape)}, z {tuple(z.shape)}, "
                         f"weight {tuple(weight.shape)}, input_size {tuple(input_size)}, groups {groups}")
    check_floating(R, a, z, weight)
    # the sizes must be those of a convolution of a with these parameters (raises otherwise)
    conv_transpose_output_padding((H, W), (Ho, Wo), (KH, KW), geom.stride, geom.padding, geom.dilation)
    n_pixels = B * M * H * W
    if max(n_pixels, Co * Ho * Wo, Ci * H * W) >= 2**31:
        raise ValueError("conv_epsilon_forward indexes pixels with int32: split the batch")

    R, a, z = R.contiguous(), a.contiguous(), z.contiguous()
    Wt = weight.permute(2, 3, 0, 1).contiguous()  # (kh, kw, Co, Ci/g): input channels innermost for the tile loads
    out = new_output((B, M, Ci, H, W), R)
    c = new_output((B, M, Ci, H, W), R) if keep_c else None
    if n_pixels == 0 or Ci == 0:
        return out, c
    Ci_g, Co_g = Ci // groups, Co // groups
    args = (
        R, R.stride(1), R.stride(2), R.stride(3), R.stride(4),
        z, z.stride(0), z.stride(1), z.stride(2), z.stride(3),
        a, a.stride(0), a.stride(1), a.stride(2), a.stride(3),
        Wt, Wt.stride(2), Wt.stride(3), Wt.stride(0), Wt.stride(1),
        out, out if c is None else c, out.stride(1), out.stride(2), out.stride(3), out.stride(4),
        M, H, W, Ho, Wo, Ci_g, Co_g, n_pixels, *eps_parts(eps),
    )
    meta = dict(
        KH=KH, KW=KW, STRIDE_H=geom.stride[0], STRIDE_W=geom.stride[1], PAD_H=geom.padding[0],
        PAD_W=geom.padding[1], DIL_H=geom.dilation[0], DIL_W=geom.dilation[1], KEEP_C=keep_c,
        INPUT_PRECISION=_input_precision(R.dtype), COMPUTE_DTYPE=compute_dtype(R.dtype),
    )
    if Ci_g >= MIN_DOT_CHANNELS and Co_g >= MIN_DOT_CHANNELS:

        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(n_pixels, meta["BLOCK_P"]), groups * triton.cdiv(Ci_g, meta["BLOCK_CI"])

        _conv_epsilon_forward_dot[grid](*args, USE_DOT=True, **meta)
    else:
        BLOCK_P, BLOCK_CI, BLOCK_K, num_warps = _fma_tiles(Ci_g, Co_g)
        grid = (triton.cdiv(n_pixels, BLOCK_P), groups * triton.cdiv(Ci_g, BLOCK_CI))
        _conv_epsilon_forward_kernel[grid](*args, USE_DOT=False, BLOCK_P=BLOCK_P, BLOCK_CI=BLOCK_CI,
                                           BLOCK_K=BLOCK_K, num_warps=num_warps, **meta)
    return out, c


__all__ = ["conv_epsilon_forward"]
