"""Implicit-GEMM convolution kernels with the relevance rules' elementwise work fused in (docs/kernels.md).

Three products share the structures below:

- :func:`conv_epsilon_forward`, the epsilon rule's forward (docs/kernels.md#epsilon-conv-and-linear)::

      c = conv_transpose2d(R / stab(z), W)        (same stride, padding, dilation, groups; output size H, W)
      R_in = a * c

- :func:`zbox_forward`, the Z^B rule's forward (docs/kernels.md#zb-first-layer): the same transposed convolution
  with two weights and two accumulators, sharing every load of ``s = R / stab(z_B)``::

      R_in = A_l * conv_transpose2d(s, W+) + A_h * conv_transpose2d(s, W-),    A_l = a - l, A_h = a - h

- :func:`conv_epsilon_backward`, the epsilon rule's backward on the output side: a forward convolution
  ``V = conv2d(U, W)`` (no bias) whose epilogue writes ``dR = V / stab(z)`` and ``dZ = -sum_M V * s / stab(z)``.

The division by ``stab(z)`` is the transposed convolution's prologue (applied to each loaded tile of R), the
product with ``a`` its epilogue; ``c`` itself is stored too when the backward needs it. The M maps are folded
into the batch: image ``n`` of the B*M reads ``a`` and ``z`` at ``b = n // M``, never repeated M times.

Transposed convolution, gather formulation: output pixel (n, ci, h, w), with ci in group g, is

    c[n, ci, h, w] = sum_{co in group g} sum_{i, j} s[n, co, ho, wo] * W[co, ci - g*Ci_g, i, j],
    ho = (h + pad_h - i*dil_h) / stride_h,  wo = (w + pad_w - j*dil_w) / stride_w,

over the taps (i, j) for which both divisions are exact and land inside (Ho, Wo). A program owns a tile of
BLOCK_P output pixels (flattened over n, h, w) by BLOCK_CI input channels of one group and loops over the
reduction K = (Co/groups) * kh * kw in one flat loop: output channels in blocks of BLOCK_K, taps inside.

Forward convolution: output pixel (n, co, ho, wo) sums ``U[n, ci, ho*stride - pad + i*dil, ...] * W[co, ci, i, j]``
over the group's input channels (blocks of BLOCK_K) and the taps inside the input. A program owns BLOCK_P
pixels of one image's batch index b (flattened over b, ho, wo) by BLOCK_CO output channels, and loops over the
M maps of b, so the sum over M of the epilogue stays in registers (no atomics, deterministic).

Each reduction step is a (BLOCK_P x BLOCK_K) @ (BLOCK_K x BLOCK_N) product (``tl.dot``, BLOCK_K >= 16: tensor
cores for bf16, fp16 and TF32, FMAs for IEEE fp32, DMMA for fp64) or, where a group has fewer than 8 input or
output channels (depthwise convolutions, RGB and grayscale first layers), a rank-1 update on CUDA cores: one
reduced channel per step, ``acc += s[:, None] * w[None, :]`` with no reduction, so that Triton cannot rewrite it
into a ``tl.dot`` with K < 16 (which counts each product 2x or 8x on the GPU; tests/triton/test_aot.py checks the
compiled IR). The ``tl.dot`` tiles are autotuned (keys: shapes, the pixel count's power-of-two bucket, the input
precision) over tile sets chosen from the ahead-of-time compile figures; under the interpreter a single small
tile is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...errors import InputError
from ...ops.conv import conv_transpose_output_padding
from ...ops.primitives import Geometry, new_output
from .utils import (
    check_floating,
    compute_dtype,
    device_guard,
    eps_parts,
    input_precision,
    interpreting,
    pixel_bucket,
    rebuild_eps,
    stabilize,
)

#: Groups with at least this many input and output channels use ``tl.dot``; smaller ones the FMA path.
MIN_DOT_CHANNELS = 8

# Integer arguments (sizes, strides, the convolution's geometry) are not specialised on their value (1, multiples
# of 16): the loads gather along pixels (p % W), so nothing vectorises on them, and one compiled variant serves
# every layer shape. The geometry is a runtime argument too: the taps are one flat loop whose tap indices are
# uniform scalars, so only the transposed convolution's per-pixel division by the stride costs anything.
_GEOMETRY_INTS = ["KH", "KW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H", "DIL_W"]
_TRANSPOSE_INTS = ["R_n_stride", "R_c_stride", "R_h_stride", "R_w_stride", "Z_b_stride", "Z_c_stride", "Z_h_stride",
                   "Z_w_stride", "A_b_stride", "A_c_stride", "A_h_stride", "A_w_stride", "W_o_stride", "W_i_stride",
                   "W_h_stride", "W_w_stride", "OUT_n_stride", "OUT_c_stride", "OUT_h_stride", "OUT_w_stride", "M",
                   "H", "W", "Ho", "Wo", "Ci_g", "Co_g", "n_pixels", "P_BUCKET", *_GEOMETRY_INTS]
_BACKWARD_INTS = ["U_n_stride", "U_c_stride", "U_h_stride", "U_w_stride", "W_o_stride", "W_i_stride", "W_h_stride",
                  "W_w_stride", "S_n_stride", "S_c_stride", "S_h_stride", "S_w_stride", "Z_b_stride", "Z_c_stride",
                  "Z_h_stride", "Z_w_stride", "M", "H", "W", "Ho", "Wo", "Ci_g", "Co_g", "n_pixels", "P_BUCKET",
                  "M_BUCKET", *_GEOMETRY_INTS]


# ----------------------------------------------------------------------------------------------------------------
# transposed convolution: epsilon and Z^B forwards
# ----------------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_TRANSPOSE_INTS)
def _conv_transpose_kernel(
    R_ptr, R_n_stride, R_c_stride, R_h_stride, R_w_stride,
    Z_ptr, Z_b_stride, Z_c_stride, Z_h_stride, Z_w_stride,
    A_ptr, A2_ptr, A_b_stride, A_c_stride, A_h_stride, A_w_stride,
    W_ptr, W2_ptr, W_o_stride, W_i_stride, W_h_stride, W_w_stride,
    OUT_ptr, C_ptr, C2_ptr, OUT_n_stride, OUT_c_stride, OUT_h_stride, OUT_w_stride,
    M, H, W, Ho, Wo, Ci_g, Co_g, n_pixels, P_BUCKET, eps_hi, eps_lo,
    KH, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    KEEP_C: tl.constexpr, TWO_SIGNS: tl.constexpr, USE_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """With ``s = R / stab(z)`` and ``ct = conv_transpose2d``:

    - ``TWO_SIGNS`` False (epsilon): ``OUT = A * ct(s, W)``; ``C = ct(s, W)`` when ``KEEP_C``;
    - ``TWO_SIGNS`` True (Z^B): ``OUT = A * ct(s, W) + A2 * ct(s, W2)``; ``C``, ``C2`` the two transposed
      convolutions when ``KEEP_C``. Each loaded tile of s feeds both products (two accumulators).

    Grid: (pixel blocks of the B*M*H*W output pixels, groups * channel blocks of Ci/groups). ``A2`` shares the
    strides of ``A``, ``W2`` those of ``W``, ``C`` and ``C2`` those of ``OUT``. The weights are read through
    their four strides, so the launcher may pass them with the input channel innermost. Per-image offsets are
    int32; image offsets (n * stride) are int64.
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
    W_cols = (g * Co_g) * W_o_stride + ci * W_i_stride  # [BLOCK_CI] offsets, shared by W and W2
    offs_k = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_P, BLOCK_CI], dtype=COMPUTE_DTYPE)
    acc2 = tl.zeros([BLOCK_P, BLOCK_CI], dtype=COMPUTE_DTYPE)  # second sign (TWO_SIGNS only)
    # one flat loop over (channel block, tap): a single long loop that Triton's pipeliner overlaps, where nested
    # tap loops would each be peeled into prologue and epilogue copies (and run out of registers)
    n_taps = KH * KW
    for step in range(0, tl.cdiv(Co_g, BLOCK_K) * n_taps):
        co = (step // n_taps) * BLOCK_K + offs_k  # output channels of the group, BLOCK_K at a time
        i = (step % n_taps) // KW  # kernel tap (i, j): the output pixel (ho, wo) it reads, if any
        j = step % KW
        k_mask = co < Co_g
        h_num = h + PAD_H - i * DIL_H
        ho = h_num // STRIDE_H
        w_num = w + PAD_W - j * DIL_W
        wo = w_num // STRIDE_W
        valid = (p_mask & (h_num >= 0) & (h_num - ho * STRIDE_H == 0) & (ho < Ho) & (w_num >= 0)
                 & (w_num - wo * STRIDE_W == 0) & (wo < Wo))
        rz_mask = valid[:, None] & k_mask[None, :]
        r = tl.load(R_rows[:, None] + (co * R_c_stride)[None, :] + (ho * R_h_stride + wo * R_w_stride)[:, None],
                    mask=rz_mask, other=0.0)
        z = tl.load(Z_rows[:, None] + (co * Z_c_stride)[None, :] + (ho * Z_h_stride + wo * Z_w_stride)[:, None],
                    mask=rz_mask, other=0.0)  # stab(0) = eps: s = 0 / eps = 0 where r is masked
        s = r.to(COMPUTE_DTYPE) / stabilize(z.to(COMPUTE_DTYPE), eps)  # prologue: [BLOCK_P, BLOCK_K]
        w_off = W_cols[None, :] + (co * W_o_stride)[:, None] + (i * W_h_stride + j * W_w_stride)  # [BLOCK_K, CI]
        w_mask = k_mask[:, None] & ci_mask[None, :]
        wt = tl.load(W_ptr + w_off, mask=w_mask, other=0.0)
        if USE_DOT:
            s_op = s.to(wt.dtype)
            acc = tl.dot(s_op, wt, acc, input_precision=INPUT_PRECISION, out_dtype=COMPUTE_DTYPE)
            if TWO_SIGNS:
                wt2 = tl.load(W2_ptr + w_off, mask=w_mask, other=0.0)
                acc2 = tl.dot(s_op, wt2, acc2, input_precision=INPUT_PRECISION, out_dtype=COMPUTE_DTYPE)
        else:  # one reduced channel: a rank-1 update [BLOCK_P, 1] * [1, BLOCK_CI], no reduction
            tl.static_assert(BLOCK_K == 1)
            acc += s * wt.to(COMPUTE_DTYPE)
            if TWO_SIGNS:
                wt2 = tl.load(W2_ptr + w_off, mask=w_mask, other=0.0)
                acc2 += s * wt2.to(COMPUTE_DTYPE)

    # epilogue: multiply by the layer input(s) at [b, ci, h, w]
    ci_abs = g * Ci_g + ci
    out_mask = p_mask[:, None] & ci_mask[None, :]
    a_off = (b64 * A_b_stride + h * A_h_stride + w * A_w_stride)[:, None] + ci_abs[None, :] * A_c_stride
    out_off = (n64 * OUT_n_stride + h * OUT_h_stride + w * OUT_w_stride)[:, None] + ci_abs[None, :] * OUT_c_stride
    result = tl.load(A_ptr + a_off, mask=out_mask, other=0.0).to(COMPUTE_DTYPE) * acc
    if TWO_SIGNS:
        result += tl.load(A2_ptr + a_off, mask=out_mask, other=0.0).to(COMPUTE_DTYPE) * acc2
    tl.store(OUT_ptr + out_off, result.to(OUT_ptr.dtype.element_ty), mask=out_mask)
    if KEEP_C:
        tl.store(C_ptr + out_off, acc.to(C_ptr.dtype.element_ty), mask=out_mask)
        if TWO_SIGNS:
            tl.store(C2_ptr + out_off, acc2.to(C2_ptr.dtype.element_ty), mask=out_mask)


# ----------------------------------------------------------------------------------------------------------------
# forward convolution: epsilon backward, output side
# ----------------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=_BACKWARD_INTS)
def _conv_epsilon_backward_kernel(
    U_ptr, U_n_stride, U_c_stride, U_h_stride, U_w_stride,
    W_ptr, W_o_stride, W_i_stride, W_h_stride, W_w_stride,
    S_ptr, DR_ptr, S_n_stride, S_c_stride, S_h_stride, S_w_stride,
    Z_ptr, DZ_ptr, Z_b_stride, Z_c_stride, Z_h_stride, Z_w_stride,
    M, H, W, Ho, Wo, Ci_g, Co_g, n_pixels, P_BUCKET, M_BUCKET, eps_hi, eps_lo,
    KH, KW, STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    USE_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """With ``V = conv2d(U, W)`` (no bias) and ``t = stab(z)``: ``DR = V / t`` and ``DZ = -sum_m V * S / t``.

    U (B*M, Ci, H, W); S and DR (B*M, Co, Ho, Wo) sharing strides; z and DZ (B, Co, Ho, Wo) sharing strides.
    Grid: (pixel blocks of the B*Ho*Wo pixels, groups * channel blocks of Co/groups); each program runs the M
    maps of its batch indices one after the other, accumulating DZ in registers.
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_co_blocks = tl.cdiv(Co_g, BLOCK_CO)
    g = pid_c // n_co_blocks
    co = (pid_c % n_co_blocks) * BLOCK_CO + tl.arange(0, BLOCK_CO)  # output channel within the group
    co_mask = co < Co_g
    co_abs = g * Co_g + co
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < n_pixels
    wo = p % Wo
    ho = (p // Wo) % Ho
    b64 = (p // (Ho * Wo)).to(tl.int64)
    # row ([BLOCK_P]) and column ([BLOCK_CO]) offsets only: [BLOCK_P, BLOCK_CO] tensors other than the two
    # accumulators are formed in the epilogue, so they hold no registers through the reduction
    z_rows = b64 * Z_b_stride + ho * Z_h_stride + wo * Z_w_stride
    z_cols = co_abs * Z_c_stride
    s_rows = ho * S_h_stride + wo * S_w_stride
    s_cols = co_abs * S_c_stride
    eps = rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE)
    W_cols = W_ptr + co_abs * W_o_stride  # [BLOCK_CO]
    offs_k = tl.arange(0, BLOCK_K)
    h0 = ho * STRIDE_H - PAD_H
    w0 = wo * STRIDE_W - PAD_W

    dz = tl.zeros([BLOCK_P, BLOCK_CO], dtype=COMPUTE_DTYPE)
    for m in range(0, M):
        n64 = b64 * M + m
        U_rows = U_ptr + n64 * U_n_stride + g * Ci_g * U_c_stride  # [BLOCK_P] channel g*Ci_g of image n
        acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=COMPUTE_DTYPE)
        n_taps = KH * KW
        for step in range(0, tl.cdiv(Ci_g, BLOCK_K) * n_taps):  # one flat loop over (channel block, tap)
            ci = (step // n_taps) * BLOCK_K + offs_k  # input channels of the group, BLOCK_K at a time
            i = (step % n_taps) // KW  # kernel tap (i, j): the input pixel it reads, if inside the image
            j = step % KW
            k_mask = ci < Ci_g
            h_in = h0 + i * DIL_H
            w_in = w0 + j * DIL_W
            valid = p_mask & (h_in >= 0) & (h_in < H) & (w_in >= 0) & (w_in < W)
            u = tl.load(U_rows[:, None] + (ci * U_c_stride)[None, :] + (h_in * U_h_stride + w_in * U_w_stride)[:, None],
                        mask=valid[:, None] & k_mask[None, :], other=0.0)
            wt = tl.load(W_cols[None, :] + (ci * W_i_stride)[:, None] + (i * W_h_stride + j * W_w_stride),
                         mask=k_mask[:, None] & co_mask[None, :], other=0.0)
            if USE_DOT:
                acc = tl.dot(u, wt, acc, input_precision=INPUT_PRECISION, out_dtype=COMPUTE_DTYPE)
            else:  # one reduced channel: a rank-1 update [BLOCK_P, 1] * [1, BLOCK_CO], no reduction
                tl.static_assert(BLOCK_K == 1)
                acc += u.to(COMPUTE_DTYPE) * wt.to(COMPUTE_DTYPE)
        # epilogue: dR = V / t, and the map's term of dZ
        out_mask = p_mask[:, None] & co_mask[None, :]
        z = tl.load(Z_ptr + z_rows[:, None] + z_cols[None, :], mask=out_mask, other=1.0).to(COMPUTE_DTYPE)
        off = (n64 * S_n_stride + s_rows)[:, None] + s_cols[None, :]
        dr = acc / stabilize(z, eps)
        tl.store(DR_ptr + off, dr.to(DR_ptr.dtype.element_ty), mask=out_mask)
        dz += dr * tl.load(S_ptr + off, mask=out_mask, other=0.0).to(COMPUTE_DTYPE)
    out_mask = p_mask[:, None] & co_mask[None, :]
    tl.store(DZ_ptr + z_rows[:, None] + z_cols[None, :], (-dz).to(DZ_ptr.dtype.element_ty), mask=out_mask)


# ----------------------------------------------------------------------------------------------------------------
# tiles and autotuning
# ----------------------------------------------------------------------------------------------------------------


# Tiles, (BLOCK_P, BLOCK_N, BLOCK_K, num_warps, num_stages), per kernel and tile set: "tensor_core" for bf16, fp16
# and fp32 at TF32 precision; "fma" for tl.dot without tensor cores (fp32 at IEEE precision, which Triton lowers to
# FMAs with both operands staged through shared memory, and fp64, on DMMA). Chosen from the compiler's figures
# (``python -m isnet_kernels.backends.triton.aot``, benchmarks/results/aot/): the tiles that fit the shared memory of
# sm_80 and sm_90 and spill no registers on either, for every dtype of their set. Rejected there, each spilling on at
# least one target and dtype: 128 x 64 and larger; 4-warp tensor-core tiles over 32 x 32 outputs or more (for the
# backward); 64 x 64 x 32 with 8 warps (bf16 on sm_80); 32 x 32 x 16 (bf16 / TF32 backward); with triton 3.8.0 on
# sm_80, 64 x 64 x 16 FMA (IEEE fp32, 8 bytes) and the Z^B form's 64 x 32 x 16 FMA (fp64, 4 bytes).
TRANSPOSE_TILES = {
    "tensor_core": ((64, 32, 32, 8, 3), (32, 64, 32, 8, 3), (32, 32, 32, 8, 3)),
    "fma": ((64, 32, 16, 8, 2), (32, 32, 16, 4, 2)),
}
#: The Z^B rule's form of the transposed convolution (two accumulators, two weight tiles) needs smaller tiles.
ZBOX_TILES = {
    "tensor_core": ((32, 64, 32, 8, 3),),
    "fma": ((32, 32, 16, 4, 2),),
}
BACKWARD_TILES = {
    "tensor_core": ((64, 32, 16, 8, 3), (32, 32, 32, 8, 3)),
    "fma": ((64, 32, 16, 8, 2), (32, 32, 16, 4, 2)),
}
#: Software-pipelining depth of the CUDA-core path (its loads are few and small; deeper pipelines spill).
FMA_STAGES = 1
#: The one small tile used under the interpreter (which would otherwise benchmark every tile on the CPU).
INTERPRETER_TILE = (128, 16, 16, 4, 1)


def _dot_configs(n_block: str, tiles: tuple[tuple[int, ...], ...]) -> list[triton.Config]:
    """The autotuner's configurations for ``tiles`` (``n_block`` names the output-channel block), or the single
    :data:`INTERPRETER_TILE` under the interpreter."""
    if interpreting():
        tiles = (INTERPRETER_TILE,)
    return [triton.Config({"BLOCK_P": p, n_block: c, "BLOCK_K": k}, num_warps=nw, num_stages=ns)
            for p, c, k, nw, ns in tiles]


def _dot_pruner(n_block: str, n_arg: str, k_arg: str) -> Callable[..., list[triton.Config]]:
    """An ``early_config_prune``: drop tiles wider than the group's channels (``n_arg`` along the output block,
    ``k_arg`` along the reduction; beyond the 16-wide minimum of ``tl.dot``) and tiles taller than the pixel
    bucket; never returns an empty list (the smallest tile stays)."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        n_cap = max(16, triton.next_power_of_2(named_args[n_arg]))
        k_cap = max(16, triton.next_power_of_2(named_args[k_arg]))
        p_cap = named_args["P_BUCKET"]
        kept = [c for c in configs if c.kwargs[n_block] <= n_cap and c.kwargs["BLOCK_K"] <= k_cap
                and c.kwargs["BLOCK_P"] <= p_cap]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs[n_block] * c.kwargs["BLOCK_K"])]

    return prune


_GEOMETRY_KEY = ["KH", "KW", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W", "INPUT_PRECISION"]
# the autotune keys hold the pixel count (and map count) as powers of two: a new batch size does not retune
_TRANSPOSE_KEY = ["P_BUCKET", "Ci_g", "Co_g", "Ho", "Wo", *_GEOMETRY_KEY, "KEEP_C", "TWO_SIGNS"]
_BACKWARD_KEY = ["P_BUCKET", "M_BUCKET", "Ci_g", "Co_g", "H", "W", *_GEOMETRY_KEY]


def _autotuned(kernel, tile_sets: dict, n_block: str, key: list[str], n_arg: str, k_arg: str) -> dict:
    """``{"tensor_core": ..., "fma": ...}``: ``kernel`` autotuned over each tile set (one JIT cache under both)."""
    return {name: triton.autotune(configs=_dot_configs(n_block, tiles), key=key,
                                  prune_configs_by={"early_config_prune": _dot_pruner(n_block, n_arg, k_arg)})(kernel)
            for name, tiles in tile_sets.items()}


_conv_transpose_dot = _autotuned(_conv_transpose_kernel, TRANSPOSE_TILES, "BLOCK_CI", _TRANSPOSE_KEY, "Ci_g", "Co_g")
_conv_zbox_dot = _autotuned(_conv_transpose_kernel, ZBOX_TILES, "BLOCK_CI", _TRANSPOSE_KEY, "Ci_g", "Co_g")
_conv_epsilon_backward_dot = _autotuned(_conv_epsilon_backward_kernel, BACKWARD_TILES, "BLOCK_CO", _BACKWARD_KEY,
                                        "Co_g", "Ci_g")


def _fma_tiles(n_out: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps) for the CUDA-core path with ``n_out`` output channels per group (the reduced
    channels go one at a time, BLOCK_K = 1): 128 pixels, up to 16 channels, 8 warps for 16 channels (4 warps
    spill there on sm_80 and sm_90), 4 below."""
    block_n = min(triton.next_power_of_2(n_out), 16)
    return 128, block_n, 8 if block_n >= 16 else 4


def uses_dot(n_out: int, n_reduce: int) -> bool:
    """Whether a convolution with these per-group channel counts runs the ``tl.dot`` form of its kernel."""
    return n_out >= MIN_DOT_CHANNELS and n_reduce >= MIN_DOT_CHANNELS


def tile_set(dtype: torch.dtype, precision: str) -> str:
    """``"tensor_core"`` for bf16, fp16 and fp32 at TF32 precision; ``"fma"`` for fp32 at IEEE precision and fp64."""
    return "tensor_core" if dtype in (torch.float16, torch.bfloat16) or precision == "tf32" else "fma"


def _launch_implicit_gemm(dot_kernels: dict, fma_kernel, args: tuple, meta: dict, dtype: torch.dtype,
                          n_pixels: int, groups: int, n_out: int, n_reduce: int, block_out: str, device) -> None:
    """Launch an implicit-GEMM convolution kernel over (pixel tiles, groups x output-channel tiles): its autotuned
    ``tl.dot`` form (:func:`uses_dot`; tiles by :func:`tile_set`), else its CUDA-core form (rank-1 updates, one
    reduced channel at a time, :func:`_fma_tiles`). ``block_out`` names the kernel's output-channel tile parameter.
    """
    if uses_dot(n_out, n_reduce):

        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(n_pixels, meta["BLOCK_P"]), groups * triton.cdiv(n_out, meta[block_out])

        with device_guard(device):
            dot_kernels[tile_set(dtype, meta["INPUT_PRECISION"])][grid](*args, USE_DOT=True, **meta)
        return
    block_p, block_n, num_warps = _fma_tiles(n_out)
    grid = (triton.cdiv(n_pixels, block_p), groups * triton.cdiv(n_out, block_n))
    meta = dict(meta, INPUT_PRECISION="ieee")  # no tl.dot on this path: one compiled variant for both precisions
    with device_guard(device):
        fma_kernel[grid](*args, USE_DOT=False, BLOCK_P=block_p, BLOCK_K=1, num_warps=num_warps, num_stages=FMA_STAGES,
                         **{block_out: block_n}, **meta)


def _geometry_meta(weight: Tensor, geom: Geometry, dtype: torch.dtype) -> dict:
    KH, KW = weight.shape[-2:]
    return dict(KH=KH, KW=KW, STRIDE_H=geom.stride[0], STRIDE_W=geom.stride[1], PAD_H=geom.padding[0],
                PAD_W=geom.padding[1], DIL_H=geom.dilation[0], DIL_W=geom.dilation[1],
                INPUT_PRECISION=input_precision(dtype), COMPUTE_DTYPE=compute_dtype(dtype))


def _check_conv(name: str, n_pixels: int, Ci: int, HW: tuple[int, int], Co: int, HoWo: tuple[int, int],
                weight: Tensor, geom: Geometry) -> None:
    """The weight's shape against the channels and groups, the sizes against the convolution's geometry, and the
    int32 indexing: the kernel's flat pixel index (``n_pixels``) and offsets within one image."""
    if geom.linear:
        raise InputError(f"{name} takes a convolution geometry; linear layers use the matmul path")
    groups = geom.groups
    if weight.dim() != 4 or weight.shape[0] != Co or Co % groups or Ci % groups or weight.shape[1] != Ci // groups:
        raise InputError(f"{name}: weight {tuple(weight.shape)} does not map {Ci} to {Co} channels in {groups} "
                         "groups")
    # the sizes must be those of a convolution of the input with these parameters (raises otherwise)
    conv_transpose_output_padding(HW, HoWo, tuple(weight.shape[-2:]), geom.stride, geom.padding, geom.dilation)
    if max(n_pixels, Ci * HW[0] * HW[1], Co * HoWo[0] * HoWo[1]) >= 2**31:
        raise InputError(f"{name} indexes pixels with int32: split the batch")


def _conv_transpose(R: Tensor, z: Tensor, a: Tensor, a2: Tensor | None, weight: Tensor, weight2: Tensor | None,
                    geom: Geometry, eps: float, keep_c: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Launch :func:`_conv_transpose_kernel` on checked, shape-consistent inputs: ``(OUT, C, C2)``."""
    B, M, Co, Ho, Wo = R.shape
    _, Ci, H, W = a.shape
    groups = geom.groups
    two = weight2 is not None
    R, a, z = R.contiguous(), a.contiguous(), z.contiguous()
    # (kh, kw, Co, Ci/g): input channels innermost for the tile loads
    Wt = weight.permute(2, 3, 0, 1).contiguous()
    Wt2 = weight2.permute(2, 3, 0, 1).contiguous() if two else Wt
    a2 = a2.contiguous() if two else a
    out = new_output((B, M, Ci, H, W), R)
    c = new_output((B, M, Ci, H, W), R) if keep_c else None
    c2 = new_output((B, M, Ci, H, W), R) if keep_c and two else None
    n_pixels = B * M * H * W
    if n_pixels == 0 or Ci == 0:
        return out, c, c2
    if Co == 0:  # an empty reduction
        return out.zero_(), None if c is None else c.zero_(), None if c2 is None else c2.zero_()
    Ci_g, Co_g = Ci // groups, Co // groups
    out_c, out_c2 = (out if c is None else c), (out if c2 is None else c2)
    args = (
        R, R.stride(1), R.stride(2), R.stride(3), R.stride(4),
        z, z.stride(0), z.stride(1), z.stride(2), z.stride(3),
        a, a2, a.stride(0), a.stride(1), a.stride(2), a.stride(3),
        Wt, Wt2, Wt.stride(2), Wt.stride(3), Wt.stride(0), Wt.stride(1),
        out, out_c, out_c2, out.stride(1), out.stride(2), out.stride(3), out.stride(4),
        M, H, W, Ho, Wo, Ci_g, Co_g, n_pixels, pixel_bucket(n_pixels), *eps_parts(eps),
    )
    meta = dict(_geometry_meta(weight, geom, R.dtype), KEEP_C=keep_c, TWO_SIGNS=two)
    _launch_implicit_gemm(_conv_zbox_dot if two else _conv_transpose_dot, _conv_transpose_kernel, args, meta, R.dtype,
                          n_pixels, groups, Ci_g, Co_g, "BLOCK_CI", R.device)
    return out, c, c2


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------


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
    _check_transpose_inputs("conv_epsilon_forward", R, z, weight, input_size, geom, a)
    check_floating(R, a, z, weight)
    out, c, _ = _conv_transpose(R, z, a, None, weight, None, geom, eps, keep_c)
    return out, c


def zbox_forward(
    R: Tensor, a_low: Tensor, a_high: Tensor, z_box: Tensor, w_pos: Tensor, w_neg: Tensor,
    input_size: tuple[int, int], geom: Geometry, eps: float, keep_c: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Fused Z^B rule through a 2-d convolution, one launch (docs/kernels.md#zb-first-layer)::

        s = R / stab(z_box),  R_in = a_low * conv_transpose2d(s, W+) + a_high * conv_transpose2d(s, W-)

    Parameters
    ----------
    R : (B, M, Co, Ho, Wo) relevance at the layer's output.
    a_low, a_high : (B, Ci, H, W), the layer's input minus its lower and upper bounds; ``input_size`` = (H, W).
    z_box : (B, Co, Ho, Wo), the layer's pre-activation minus the bound terms.
    w_pos, w_neg : (Co, Ci / groups, kh, kw), the weight's positive and negative parts (used as given).
    keep_c : also return the two transposed convolutions ``c+`` and ``c-`` (B, M, Ci, H, W).

    Returns
    -------
    (R_in, c+, c-), the last two None unless ``keep_c``.
    """
    _check_transpose_inputs("zbox_forward", R, z_box, w_pos, input_size, geom, a_low)
    if a_high.shape != a_low.shape or w_neg.shape != w_pos.shape:
        raise InputError(f"zbox_forward: a_low {tuple(a_low.shape)} / a_high {tuple(a_high.shape)} and w_pos "
                         f"{tuple(w_pos.shape)} / w_neg {tuple(w_neg.shape)} must match")
    check_floating(R, a_low, a_high, z_box, w_pos, w_neg)
    return _conv_transpose(R, z_box, a_low, a_high, w_pos, w_neg, geom, eps, keep_c)


def _check_transpose_inputs(name: str, R: Tensor, z: Tensor, weight: Tensor, input_size: tuple[int, ...],
                            geom: Geometry, a: Tensor) -> None:
    if R.dim() != 5 or a.dim() != 4 or z.dim() != 4 or weight.dim() != 4:
        raise InputError(f"{name}: expected R (B, M, Co, Ho, Wo), a (B, Ci, H, W), z (B, Co, Ho, Wo), weight "
                         f"(Co, Ci/g, kh, kw); got {tuple(R.shape)}, {tuple(a.shape)}, {tuple(z.shape)}, "
                         f"{tuple(weight.shape)}")
    B, M, Co, Ho, Wo = R.shape
    _, Ci, H, W = a.shape
    if tuple(z.shape) != (B, Co, Ho, Wo) or a.shape[0] != B or tuple(input_size) != (H, W):
        raise InputError(f"{name}: inconsistent shapes: R {tuple(R.shape)}, a {tuple(a.shape)}, z "
                         f"{tuple(z.shape)}, input_size {tuple(input_size)}")
    _check_conv(name, B * M * H * W, Ci, (H, W), Co, (Ho, Wo), weight, geom)


def conv_epsilon_backward(U: Tensor, weight: Tensor, s: Tensor, z: Tensor, geom: Geometry,
                          eps: float) -> tuple[Tensor, Tensor]:
    """The epsilon rule's backward through a convolution, output side, in one launch (docs/kernels.md#fusion)::

        V = conv2d(U, W),  dR = V / stab(z),  dZ = -sum_M V * s / stab(z)

    Parameters
    ----------
    U : (B, M, Ci, H, W), ``G * a`` (the incoming gradient times the layer input).
    weight : (Co, Ci / groups, kh, kw).
    s : (B, M, Co, Ho, Wo), ``R / stab(z)`` from the forward.
    z : (B, Co, Ho, Wo), the layer's pre-activation.

    Returns
    -------
    (dR, dZ): (B, M, Co, Ho, Wo) and (B, Co, Ho, Wo).
    """
    if U.dim() != 5 or s.dim() != 5 or z.dim() != 4:
        raise InputError(f"conv_epsilon_backward: expected U (B, M, Ci, H, W), s (B, M, Co, Ho, Wo), z (B, Co, Ho, "
                         f"Wo); got {tuple(U.shape)}, {tuple(s.shape)}, {tuple(z.shape)}")
    B, M, Ci, H, W = U.shape
    _, _, Co, Ho, Wo = s.shape
    if tuple(s.shape[:2]) != (B, M) or tuple(z.shape) != (B, Co, Ho, Wo):
        raise InputError(f"conv_epsilon_backward: inconsistent shapes: U {tuple(U.shape)}, s {tuple(s.shape)}, "
                         f"z {tuple(z.shape)}")
    _check_conv("conv_epsilon_backward", B * Ho * Wo, Ci, (H, W), Co, (Ho, Wo), weight, geom)
    check_floating(U, weight, s, z)
    U, s, z = U.contiguous(), s.contiguous(), z.contiguous()
    dR = new_output((B, M, Co, Ho, Wo), s)
    dZ = new_output((B, Co, Ho, Wo), s)
    n_pixels = B * Ho * Wo
    if n_pixels == 0 or Co == 0:
        return dR, dZ
    if M == 0 or Ci == 0:  # no maps or an empty reduction: V = 0
        return dR.zero_(), dZ.zero_()
    groups = geom.groups
    Ci_g, Co_g = Ci // groups, Co // groups
    # (kh, kw, Ci/g, Co): output channels innermost for the tile loads
    Wt = weight.permute(2, 3, 1, 0).contiguous()
    args = (
        U, U.stride(1), U.stride(2), U.stride(3), U.stride(4),
        Wt, Wt.stride(3), Wt.stride(2), Wt.stride(0), Wt.stride(1),
        s, dR, s.stride(1), s.stride(2), s.stride(3), s.stride(4),
        z, dZ, z.stride(0), z.stride(1), z.stride(2), z.stride(3),
        M, H, W, Ho, Wo, Ci_g, Co_g, n_pixels, pixel_bucket(n_pixels), triton.next_power_of_2(M), *eps_parts(eps),
    )
    meta = _geometry_meta(weight, geom, U.dtype)
    _launch_implicit_gemm(_conv_epsilon_backward_dot, _conv_epsilon_backward_kernel, args, meta, U.dtype, n_pixels,
                          groups, Co_g, Ci_g, "BLOCK_CO", U.device)
    return dR, dZ


__all__ = ["conv_epsilon_backward", "conv_epsilon_forward", "zbox_forward"]
