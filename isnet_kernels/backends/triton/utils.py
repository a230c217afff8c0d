"""Helpers shared by the Triton kernels: the stabiliser, dtypes, ``eps`` passing, precision and launch settings.

Triton passes a Python ``float`` kernel argument as float32, which would round ``eps`` to 24 bits and break
float64 results at the 1e-10 level. So ``eps`` travels as two float32 scalars, ``eps_hi = fp32(eps)`` and
``eps_lo = fp32(eps - eps_hi)``, and kernels rebuild it in their compute dtype as ``eps_hi + eps_lo`` (exact to
about 48 bits in float64; equal to ``fp32(eps)``, which is what PyTorch uses, in float32).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
import triton
import triton.language as tl

from ...errors import InputTypeError


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def eps_parts(eps: float) -> tuple[float, float]:
    """Split ``eps`` into two float32-representable parts whose float64 sum is ``eps`` to about 48 bits."""
    hi = float(np.float32(eps))
    return hi, float(np.float32(eps - hi))


def compute_dtype(dtype: torch.dtype) -> tl.dtype:
    """The dtype kernels compute and accumulate in: float64 for float64 data, float32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating(*tensors: torch.Tensor) -> torch.dtype:
    """The common dtype of ``tensors``: one of :data:`SUPPORTED_DTYPES`, all equal, all on one device."""
    dtype, device = tensors[0].dtype, tensors[0].device
    if dtype not in SUPPORTED_DTYPES:
        raise InputTypeError(f"triton kernels support {SUPPORTED_DTYPES}, got {dtype}")
    for t in tensors[1:]:
        if t.dtype != dtype or t.device != device:
            raise InputTypeError(f"all inputs must share dtype and device: {dtype} on {device} against {t.dtype} on "
                                 f"{t.device}")
    return dtype


def input_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for data of ``dtype``: ``"tf32"`` for float32 where PyTorch's float32 matmul
    precision allows TF32, ``"ieee"`` otherwise (and for every other dtype).

    PyTorch's setting is ``torch.backends.cuda.matmul.fp32_precision`` (``"ieee"``, ``"tf32"``, or ``"none"``,
    which defers to the global ``torch.backends.fp32_precision``); the legacy ``allow_tf32`` flag and
    ``torch.set_float32_matmul_precision`` write it too. It is read, never ``allow_tf32`` (which raises once the
    two interfaces have been mixed). The value is a constexpr of the convolution kernels and part of their
    autotune keys, so changing the setting in a process compiles and tunes the other variant.
    """
    if dtype != torch.float32:
        return "ieee"
    setting = torch.backends.cuda.matmul.fp32_precision
    if setting == "none":
        setting = torch.backends.fp32_precision
    return "tf32" if setting == "tf32" else "ieee"


def pixel_bucket(n: int) -> int:
    """The pixel count as the autotune keys hold it: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(n))


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """The context a launch runs in: ``torch.cuda.device(device)`` for a CUDA tensor (Triton launches on the
    current device, which need not be the tensor's), nothing for a CPU tensor (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def calculate_settings(n: int) -> tuple[int, int]:
    """``(BLOCK_SIZE, num_warps)`` for a one-dimensional elementwise pass over rows of ``n`` elements.

    Under the interpreter blocks are up to 256 wide: numpy vectorises a block and programs run one at a time, so
    wide blocks are fast, yet rows of more than 256 elements still exercise the column-block indexing.
    """
    if interpreting():
        return max(16, min(triton.next_power_of_2(n), 256)), 1
    block = max(128, min(triton.next_power_of_2(n), 1024))
    return block, 4 if block <= 512 else 8


@triton.jit
def stabilize(z, eps):
    """``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1`` (NaN goes to ``z - eps``, as in PyTorch's reference)."""
    return tl.where(z >= 0, z + eps, z - eps)


@triton.jit
def rebuild_eps(eps_hi, eps_lo, COMPUTE_DTYPE: tl.constexpr):
    """``eps`` in the compute dtype from its two float32 parts (see :func:`eps_parts`)."""
    return tl.cast(eps_hi, COMPUTE_DTYPE) + tl.cast(eps_lo, COMPUTE_DTYPE)


@triton.jit
def row_tile(n_col_blocks, N, BLOCK_SIZE: tl.constexpr):
    """This program's tile of a (rows, N) grid flattened to one axis: ``(row, columns, in-bounds mask)``."""
    pid = tl.program_id(0)
    row = (pid // n_col_blocks).to(tl.int64)
    col = (pid % n_col_blocks) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    return row, col, col < N
