"""The first call of each kernel specialisation in a process is checked against the ``torch`` primitive.

A compiled kernel can be wrong on a device where it was never run (a compiler rewrite, a tile the hardware
handles differently), and the interpreter the tests run on cannot show it. So :class:`SelfCheck` runs the torch
primitive (:class:`~isnet_kernels.ops.primitives.TorchPrimitives`) on the same inputs the first time a primitive
is called with a new *call signature* (device, dtypes, float32 precision, shapes, pointer alignment, and the
non-float arguments: geometry, flags), which fixes everything Triton specialises and tunes on (constexprs, the
autotune key and so the tile, the tensor-core or CUDA-core branch). It compares the outputs in float64:

    error = max |kernel - torch| / max(max |torch|, tiny)

against the precision's tolerance (:data:`TOLERANCE`). Elements where the torch result is not finite in the
output dtype are left out (both sides overflow or carry a NaN input). Then:

- ``fallback=True`` (the backend chosen by ``backend="auto"``): a disagreement warns with
  :class:`KernelSelfCheckWarning`, naming the primitive, the shapes and the error, and the torch primitive
  serves that call signature from then on;
- ``fallback=False`` (``backend="triton"`` by name): a disagreement raises :class:`KernelSelfCheckError`.

After the first call a signature costs one dict lookup (its key is a tuple of the arguments' shapes and dtypes).
The torch primitive runs in float32 for float16 / bfloat16 inputs (as exact as the kernels' float32 accumulation).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ...errors import BackendUnavailableError
from .utils import input_precision


class KernelSelfCheckError(BackendUnavailableError):
    """A Triton kernel disagreed with the torch primitive on this device (``backend="triton"`` asked for by name).

    Use ``backend="auto"`` (which then runs the torch primitive for that case) or ``backend="torch"``, and report
    the message: it names the kernel, the shapes and the error.
    """


class KernelSelfCheckWarning(RuntimeWarning):
    """A Triton kernel disagreed with the torch primitive; the torch primitive runs for that case from now on."""


#: Largest accepted normwise error, by dtype (float32 by its matmul precision).
TOLERANCE = {"float64": 1e-9, "float32-ieee": 1e-4, "float32-tf32": 2e-2, "bfloat16": 6e-2, "float16": 1e-2}


def _precision_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return f"{name}-{input_precision(dtype)}" if dtype == torch.float32 else name


def call_key(method: str, args: tuple) -> tuple:
    """What fixes a call's compiled specialisation and tuning: every tensor's shape, dtype, device, contiguity and
    16-byte alignment; the float32 precision; every non-float argument (floats are runtime kernel arguments)."""
    parts: list = [method]
    dtype = None
    for a in args:
        if isinstance(a, Tensor):
            parts.append((tuple(a.shape), a.dtype, a.device, a.is_contiguous(), a.data_ptr() % 16 == 0))
            dtype = dtype or a.dtype
        elif isinstance(a, float):
            parts.append(float)
        else:
            parts.append(a)
    parts.append(input_precision(dtype) if dtype is not None else None)
    return tuple(parts)


def _flat(out) -> list[Tensor | None]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def disagreement(out, ref) -> float:
    """The largest normwise error over the outputs (None outputs must match None)."""
    worst = 0.0
    for o, r in zip(_flat(out), _flat(ref), strict=True):
        if o is None or r is None:
            if (o is None) != (r is None):
                return float("inf")
            continue
        if o.shape != r.shape:
            return float("inf")
        r64 = r.to(o.dtype).double() if o.is_floating_point() else r.double()
        o64 = o.double()
        keep = torch.isfinite(r64)
        if not bool(keep.any()):
            continue
        o64, r64 = o64[keep], r64[keep]
        if not bool(torch.isfinite(o64).all()):
            return float("inf")
        scale = max(float(r64.abs().max()), 1e-30)
        worst = max(worst, float((o64 - r64).abs().max()) / scale)
    return worst


def _reference_inputs(args: tuple) -> tuple:
    """The torch primitive's inputs: half-precision tensors in float32, everything else as it is."""
    return tuple(a.float() if isinstance(a, Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a
                 for a in args)


def _describe(args: tuple) -> str:
    return ", ".join(f"{tuple(a.shape)} {str(a.dtype).removeprefix('torch.')}" for a in args if isinstance(a, Tensor))


class SelfCheck:
    """Per-process verdicts of a kernel set, by :func:`call_key`: True (kernel verified) or False (torch serves)."""

    def __init__(self, fallback: bool) -> None:
        self.fallback = fallback
        self.verdicts: dict[tuple, bool] = {}

    def run(self, method: str, kernel: Callable, reference: Callable, args: tuple):
        """``kernel(*args)``, checked against ``reference(*args)`` on the first call of its signature."""
        key = call_key(method, args)
        verdict = self.verdicts.get(key)
        if verdict is True:
            return kernel(*args)
        if verdict is False:
            return reference(*args)
        out = kernel(*args)
        dtype = next(a.dtype for a in args if isinstance(a, Tensor))
        precision = _precision_name(dtype)
        error = disagreement(out, reference(*_reference_inputs(args)))
        ok = error <= TOLERANCE[precision]
        if ok:
            self.verdicts[key] = True
            return out
        device = next(a.device for a in args if isinstance(a, Tensor))
        message = (f"triton kernel for {method} disagrees with the torch primitive on {device} for inputs "
                   f"{_describe(args)} ({precision}): normwise error {error:.3g} > tolerance {TOLERANCE[precision]:g}")
        if not self.fallback:
            raise KernelSelfCheckError(f"{message}. Use backend='auto' (falls back to the torch primitive for this "
                                       "case) or backend='torch', and please report this message")
        self.verdicts[key] = False
        warnings.warn(f"{message}; the torch primitive runs for this case from now on", KernelSelfCheckWarning,
                      stacklevel=3)
        return reference(*args)
