"""Elementwise relevance kernels (docs/kernels.md): one pass over memory each, reductions over the M maps fused.

Shapes follow :class:`isnet_kernels.ops.primitives.TorchPrimitives`: a *map* tensor is (B, M, N), viewed as
B*M rows of N elements; an *activation* tensor is (B, N), read at row ``b = row // M`` and never expanded M
times. Kernels that produce map tensors only run one program per (row, column block); kernels that also reduce
over M run one program per (b, column block) and loop over the M maps inside it, accumulating in float32
(float64 for float64 data). Every value is computed in that precision and rounded once when stored.

``t = stab(z) = z + eps * sign(z)`` with ``sign(0) = +1``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ...errors import InputError
from ...ops.primitives import new_output
from .utils import (
    calculate_settings,
    check_floating,
    compute_dtype,
    device_guard,
    eps_parts,
    rebuild_eps,
    row_tile,
    stabilize,
)

# ----------------------------------------------------------------------------------------------------------------
# kernels producing map tensors only: grid = B*M rows x column blocks, flattened to one axis
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _stab_divide_kernel(
    R_ptr, R_row_stride, Z_ptr, Z_row_stride, S_ptr, S_row_stride, M, N, n_col_blocks, eps_hi, eps_lo,
    COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """``S[b, m, n] = R[b, m, n] / stab(Z[b, n])``: the epsilon rule's division
    (docs/kernels.md#epsilon-conv-and-linear)."""
    row, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
    b = row // M
    r = tl.load(R_ptr + row * R_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    z = tl.load(Z_ptr + b * Z_row_stride + col, mask=mask, other=1.0).to(COMPUTE_DTYPE)
    t = stabilize(z, rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    tl.store(S_ptr + row * S_row_stride + col, (r / t).to(S_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mul_activation_kernel(
    C_ptr, C_row_stride, A_ptr, A_row_stride, Y_ptr, Y_row_stride, M, N, n_col_blocks,
    COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """``Y[b, m, n] = A[b, n] * C[b, m, n]``: the epsilon rule's product with the layer input."""
    row, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
    b = row // M
    c = tl.load(C_ptr + row * C_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    a = tl.load(A_ptr + b * A_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    tl.store(Y_ptr + row * Y_row_stride + col, (a * c).to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_forward_kernel(
    R_ptr, R_row_stride, X_ptr, F_ptr, Y_ptr, act_row_stride, RX_ptr, RF_ptr, out_row_stride, M, N, n_col_blocks,
    eps_hi, eps_lo, COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Residual split of ``y = x + f`` (docs/kernels.md): ``T = R / stab(y)``; ``RX = x * T``, ``RF = f * T``.

    ``X``, ``F``, ``Y`` are activations (B, N) sharing ``act_row_stride``; ``RX``, ``RF`` share ``out_row_stride``.
    """
    row, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
    act = (row // M) * act_row_stride + col
    r = tl.load(R_ptr + row * R_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    x = tl.load(X_ptr + act, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    f = tl.load(F_ptr + act, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    y = tl.load(Y_ptr + act, mask=mask, other=1.0).to(COMPUTE_DTYPE)
    T = r / stabilize(y, rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    out = row * out_row_stride + col
    tl.store(RX_ptr + out, (x * T).to(RX_ptr.dtype.element_ty), mask=mask)
    tl.store(RF_ptr + out, (f * T).to(RF_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# kernels reducing over M: grid = B x column blocks, flattened; a loop over the M maps inside each program
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _epsilon_backward_input_kernel(
    G_ptr, G_row_stride, A_ptr, A_row_stride, C_ptr, C_row_stride, U_ptr, U_row_stride, DA_ptr, DA_row_stride,
    M, N, n_col_blocks, HAS_C: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Epsilon rule backward, input side (docs/kernels.md): with ``G = dL/dR_in``,

    ``U[b, m, n] = G[b, m, n] * A[b, n]`` and, when ``HAS_C``, ``DA[b, n] = sum_m G[b, m, n] * C[b, m, n]``.
    """
    b, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
    a = tl.load(A_ptr + b * A_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    acc = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    for m in range(0, M):
        row = b * M + m
        g = tl.load(G_ptr + row * G_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        tl.store(U_ptr + row * U_row_stride + col, (g * a).to(U_ptr.dtype.element_ty), mask=mask)
        if HAS_C:
            c = tl.load(C_ptr + row * C_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
            acc += g * c
    if HAS_C:
        tl.store(DA_ptr + b * DA_row_stride + col, acc.to(DA_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _epsilon_backward_stab_kernel(
    V_ptr, V_row_stride, S_ptr, S_row_stride, Z_ptr, Z_row_stride, DR_ptr, DR_row_stride, DZ_ptr, DZ_row_stride,
    M, N, n_col_blocks, eps_hi, eps_lo, COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Epsilon rule backward, output side (docs/kernels.md): with ``V = W U = dL/ds`` and ``s = R / t``,

    ``DR[b, m, n] = V[b, m, n] / t[b, n]`` and ``DZ[b, n] = -sum_m V[b, m, n] * S[b, m, n] / t[b, n]``.
    """
    b, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
    z = tl.load(Z_ptr + b * Z_row_stride + col, mask=mask, other=1.0).to(COMPUTE_DTYPE)
    t = stabilize(z, rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    acc = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    for m in range(0, M):
        row = b * M + m
        v = tl.load(V_ptr + row * V_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        s = tl.load(S_ptr + row * S_row_stride + col, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        dr = v / t
        tl.store(DR_ptr + row * DR_row_stride + col, dr.to(DR_ptr.dtype.element_ty), mask=mask)
        acc += dr * s
    tl.store(DZ_ptr + b * DZ_row_stride + col, (-acc).to(DZ_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_backward_kernel(
    GX_ptr, GF_ptr, R_ptr, map_row_stride, X_ptr, F_ptr, Y_ptr, act_row_stride, DR_ptr, DR_row_stride,
    DX_ptr, DF_ptr, DY_ptr, grad_row_stride, M, N, n_col_blocks, eps_hi, eps_lo,
    COMPUTE_DTYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    """Residual split backward (docs/kernels.md): with ``t = stab(y)``, ``T = R / t``, ``Q = GX x + GF f``,

    ``DR = Q / t``; ``DX = sum_m GX T``; ``DF = sum_m GF T``; ``DY = -sum_m Q T / t``.
    ``GX``, ``GF``, ``R`` share ``map_row_stride``; ``X``, ``F``, ``Y`` share ``act_row_stride``; the three
    reductions share ``grad_row_stride``.
    """
    b, col, mask = row_tile(n_col_blocks, N, BLOCK_SIZE)
    act = b * act_row_stride + col
    x = tl.load(X_ptr + act, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    f = tl.load(F_ptr + act, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    y = tl.load(Y_ptr + act, mask=mask, other=1.0).to(COMPUTE_DTYPE)
    t = stabilize(y, rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE))
    acc_x = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    acc_f = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    acc_y = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    for m in range(0, M):
        row = b * M + m
        off = row * map_row_stride + col
        gx = tl.load(GX_ptr + off, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        gf = tl.load(GF_ptr + off, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        T = tl.load(R_ptr + off, mask=mask, other=0.0).to(COMPUTE_DTYPE) / t
        dr = (gx * x + gf * f) / t
        tl.store(DR_ptr + row * DR_row_stride + col, dr.to(DR_ptr.dtype.element_ty), mask=mask)
        acc_x += gx * T
        acc_f += gf * T
        acc_y += dr * T
    grad = b * grad_row_stride + col
    tl.store(DX_ptr + grad, acc_x.to(DX_ptr.dtype.element_ty), mask=mask)
    tl.store(DF_ptr + grad, acc_f.to(DF_ptr.dtype.element_ty), mask=mask)
    tl.store(DY_ptr + grad, (-acc_y).to(DY_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------


def _maps(x: Tensor) -> Tensor:
    """A (B, M, N) map tensor, contiguous (a no-op for the contiguous inputs the primitives receive)."""
    if x.dim() != 3:
        raise InputError(f"expected a (B, M, N) map tensor, got shape {tuple(x.shape)}")
    return x.contiguous()


def _activations(x: Tensor, B: int, N: int) -> Tensor:
    """A (B, N) activation tensor, contiguous."""
    if tuple(x.shape) != (B, N):
        raise InputError(f"expected a ({B}, {N}) activation tensor, got shape {tuple(x.shape)}")
    return x.contiguous()


def _row_stride(x: Tensor) -> int:
    """The stride between rows of a contiguous (B, M, N) tensor viewed as (B*M, N), or of a (B, N) tensor."""
    return x.shape[-1]


def stab_divide(R: Tensor, z: Tensor, eps: float) -> Tensor:
    """``s = R / stab(z)``: R (B, M, N), z (B, N) -> (B, M, N). See :func:`_stab_divide_kernel`."""
    R = _maps(R)
    B, M, N = R.shape
    z = _activations(z, B, N)
    check_floating(R, z)
    S = new_output((B, M, N), R)
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(R.device):
        _stab_divide_kernel[(B * M * n_col_blocks,)](
            R, _row_stride(R), z, _row_stride(z), S, _row_stride(S), M, N, n_col_blocks, *eps_parts(eps),
            COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )
    return S


def mul_activation(c: Tensor, a: Tensor) -> Tensor:
    """``a * c``: c (B, M, N), a (B, N) -> (B, M, N). See :func:`_mul_activation_kernel`."""
    c = _maps(c)
    B, M, N = c.shape
    a = _activations(a, B, N)
    check_floating(c, a)
    Y = new_output((B, M, N), c)
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(c.device):
        _mul_activation_kernel[(B * M * n_col_blocks,)](
            c, _row_stride(c), a, _row_stride(a), Y, _row_stride(Y), M, N, n_col_blocks,
            COMPUTE_DTYPE=compute_dtype(c.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )
    return Y


def epsilon_backward_input(G: Tensor, a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``U = G * a`` (B, M, N) and ``dA = sum_M G * c`` (B, N), None when ``c`` is None.

    See :func:`_epsilon_backward_input_kernel`.
    """
    G = _maps(G)
    B, M, N = G.shape
    a = _activations(a, B, N)
    if c is not None:
        c = _maps(c)
        if c.shape != G.shape:
            raise InputError(f"c has shape {tuple(c.shape)}, G {tuple(G.shape)}")
        check_floating(G, a, c)
    else:
        check_floating(G, a)
    U = new_output((B, M, N), G)
    dA = new_output((B, N), G) if c is not None else None
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(G.device):
        _epsilon_backward_input_kernel[(B * n_col_blocks,)](
            G, _row_stride(G), a, _row_stride(a), G if c is None else c, _row_stride(G if c is None else c),
            U, _row_stride(U), U if dA is None else dA, 0 if dA is None else _row_stride(dA), M, N, n_col_blocks,
            HAS_C=c is not None, COMPUTE_DTYPE=compute_dtype(G.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )
    return U, dA


def epsilon_backward_stab(V: Tensor, s: Tensor, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``dR = V / t`` (B, M, N) and ``dZ = -sum_M V * s / t`` (B, N). See :func:`_epsilon_backward_stab_kernel`."""
    V, s = _maps(V), _maps(s)
    B, M, N = V.shape
    if s.shape != V.shape:
        raise InputError(f"s has shape {tuple(s.shape)}, V {tuple(V.shape)}")
    z = _activations(z, B, N)
    check_floating(V, s, z)
    dR = new_output((B, M, N), V)
    dZ = new_output((B, N), V)
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(V.device):
        _epsilon_backward_stab_kernel[(B * n_col_blocks,)](
            V, _row_stride(V), s, _row_stride(s), z, _row_stride(z), dR, _row_stride(dR), dZ, _row_stride(dZ),
            M, N, n_col_blocks, *eps_parts(eps), COMPUTE_DTYPE=compute_dtype(V.dtype), BLOCK_SIZE=BLOCK_SIZE,
            num_warps=num_warps,
        )
    return dR, dZ


def residual_forward(R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``T = R / stab(y)``; ``R_x = x * T``, ``R_f = f * T``: R (B, M, N); x, f, y (B, N).

    See :func:`_residual_forward_kernel`.
    """
    R = _maps(R)
    B, M, N = R.shape
    x, f, y = (_activations(v, B, N) for v in (x, f, y))
    check_floating(R, x, f, y)
    Rx, Rf = new_output((B, M, N), R), new_output((B, M, N), R)
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(R.device):
        _residual_forward_kernel[(B * M * n_col_blocks,)](
            R, _row_stride(R), x, f, y, N, Rx, Rf, N, M, N, n_col_blocks, *eps_parts(eps),
            COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )
    return Rx, Rf


def residual_backward(Gx: Tensor, Gf: Tensor, R: Tensor, x: Tensor, f: Tensor, y: Tensor,
                      eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``dR = Q / t`` (B, M, N); ``dx = sum_M Gx T``, ``df = sum_M Gf T``, ``dy = -sum_M Q T / t`` (B, N), with
    ``t = stab(y)``, ``T = R / t``, ``Q = Gx x + Gf f``. See :func:`_residual_backward_kernel`."""
    if not (Gx.shape == Gf.shape == R.shape) or R.dim() != 3:
        raise InputError(f"Gx, Gf, R must share a (B, M, N) shape, got {tuple(Gx.shape)}, {tuple(Gf.shape)}, "
                         f"{tuple(R.shape)}")
    Gx, Gf, R = Gx.contiguous(), Gf.contiguous(), R.contiguous()
    B, M, N = R.shape
    x, f, y = (_activations(v, B, N) for v in (x, f, y))
    check_floating(Gx, Gf, R, x, f, y)
    dR = new_output((B, M, N), R)
    dx, df, dy = (new_output((B, N), R) for _ in range(3))
    BLOCK_SIZE, num_warps = calculate_settings(N)
    n_col_blocks = triton.cdiv(N, BLOCK_SIZE)
    with device_guard(Gx.device):
        _residual_backward_kernel[(B * n_col_blocks,)](
            Gx, Gf, R, N, x, f, y, N, dR, N, dx, df, dy, N, M, N, n_col_blocks, *eps_parts(eps),
            COMPUTE_DTYPE=compute_dtype(R.dtype), BLOCK_SIZE=BLOCK_SIZE, num_warps=num_warps,
        )
    return dR, dx, df, dy


__all__ = [
    "epsilon_backward_input",
    "epsilon_backward_stab",
    "mul_activation",
    "residual_backward",
    "residual_forward",
    "stab_divide",
]
