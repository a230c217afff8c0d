"""The ``cuda`` backend: CUDA C++ kernels for the elementwise and pooling relevance primitives (docs/kernels.md).

The sources in ``csrc/cuda`` build the optional extension ``isnet_kernels._C_cuda`` (only against a CUDA build of
torch, with nvcc; see DEVELOPERS.md). Importing it registers CUDA kernels for the operators that
``isnet_kernels._C`` defines, ``torch.ops.isnet_kernels.*``: the same Python call runs the CPU kernels on CPU
tensors and the CUDA kernels on CUDA tensors, with the same argument checks and the same per-element maths
(``csrc/common/relevance_math.h``). Each kernel is one pass over memory on the current stream, the M maps' loop
inside the loop over activation elements, sums over M in registers (float for half and bfloat16), no atomics
except where max-pool windows share a winner.

:class:`CudaPrimitives` calls those operators; the contractions (convolutions, matmuls) stay ATen's, which on CUDA
tensors run cuDNN and cuBLAS. :func:`available` says whether the backend can run here and, when it cannot, why.
Max-pool indices outside ``[0, length)`` raise on the CPU; the CUDA kernels drop them (checking would need a
device synchronisation).
"""

from __future__ import annotations

import torch

from ..errors import BackendUnavailableError
from . import cpp

__all__ = ["OPS", "CudaPrimitives", "available", "built"]

#: The operators with CUDA kernels: every operator of the cpp backend.
OPS = cpp.OPS

_BUILD_HINT = ("it is built by `pip install --no-build-isolation -e .` when torch is a CUDA build and nvcc is on PATH "
               "(or CUDA_HOME is set); see DEVELOPERS.md")
_built: tuple[bool, str] | None = None


def built() -> tuple[bool, str]:
    """Whether ``isnet_kernels._C_cuda`` is built and registered its kernels: ``(True, "")`` or ``(False, why)``."""
    global _built
    if _built is None:
        _built = _load()
    return _built


def available() -> tuple[bool, str]:
    """Whether the cuda backend can run here: built, and a CUDA device visible. ``(True, "")`` or
    ``(False, reason)`` saying why and what to do."""
    ok, why = built()
    if not ok:
        return False, why
    if not torch.cuda.is_available():
        return False, ("isnet_kernels._C_cuda is built, but no CUDA device is visible "
                       "(torch.cuda.is_available() is False)")
    return True, ""


def _load() -> tuple[bool, str]:
    if not torch.version.cuda:
        return False, (f"torch {torch.__version__} is a CPU build: the CUDA extension isnet_kernels._C_cuda needs a "
                       f"CUDA build of torch ({_BUILD_HINT})")
    ok, why = cpp.available()
    if not ok:  # _C defines the operators that _C_cuda implements
        return False, f"the CUDA kernels need isnet_kernels._C, which defines the operators: {why}"
    try:
        from .. import _C_cuda  # noqa: F401  (loading the library registers the CUDA kernels)
    except ModuleNotFoundError:
        return False, f"the CUDA extension isnet_kernels._C_cuda is not built: {_BUILD_HINT}"
    except ImportError as exc:  # built against another torch or CUDA, or a missing shared library
        return False, (f"the CUDA extension isnet_kernels._C_cuda failed to load ({exc}); rebuild it against this "
                       f"torch ({_BUILD_HINT})")
    missing = [name for name in OPS
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"isnet_kernels::{name}", "CUDA")]
    if missing:
        return False, (f"isnet_kernels._C_cuda is out of date (no CUDA kernel for {', '.join(missing)}): rebuild it "
                       f"({_BUILD_HINT})")
    return True, ""


class CudaPrimitives(cpp.CppPrimitives):
    """Primitives on the CUDA kernels; the contractions stay ATen's (cuDNN for the convolutions).

    The methods are :class:`~isnet_kernels.backends.cpp.CppPrimitives`': the operators dispatch on the tensors'
    device, so CUDA tensors run the CUDA kernels (on the current stream and device). Inputs must be on one CUDA
    device, of one floating dtype (float32, float64, float16, bfloat16); non-contiguous inputs are made contiguous
    first.
    Raises :class:`~isnet_kernels.errors.BackendUnavailableError` when the backend cannot run here.
    """

    name = "cuda"

    def __init__(self) -> None:
        ok, why = available()
        if not ok:
            raise BackendUnavailableError(f"backend 'cuda' is not available: {why}")
