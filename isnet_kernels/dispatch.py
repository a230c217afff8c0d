"""Which backend computes the relevance ops: ``reference``, ``cpp`` or ``triton`` (and ``torch``).

``reference`` runs the plain-PyTorch ops under ordinary autograd. ``cpp`` and ``triton`` run the autograd
Functions with hand-written backwards on compiled kernels; ``torch`` runs the same Functions on plain-PyTorch
primitives (the kernels' specification; useful to test the Functions on any machine).

``backend="auto"`` (the default, or the environment variable ``ISNET_KERNELS_BACKEND``) picks ``triton`` for CUDA
tensors when Triton imports, ``cpp`` for CPU tensors when the compiled extension is built, and the plain-PyTorch
``reference`` otherwise. A backend asked for by name that cannot run raises
:class:`~isnet_kernels.errors.BackendUnavailableError` saying why: never a silent fallback.

Triton chosen by ``auto`` resolves to :data:`AUTO_TRITON` (``"triton-auto"``), by name to ``"triton"``: both run
the kernels with a first-call check of each specialisation against the torch primitive
(:mod:`isnet_kernels.triton.selfcheck`); a kernel that fails it warns and falls back to the torch primitive for
that case under ``auto``, and raises :class:`~isnet_kernels.triton.selfcheck.KernelSelfCheckError` when asked
for by name.
"""

from __future__ import annotations

import functools
import os

import torch

from .errors import BackendUnavailableError, InputError
from .ops.primitives import TorchPrimitives

BACKENDS = ("auto", "reference", "torch", "cpp", "triton", "cuda")
ENV_VAR = "ISNET_KERNELS_BACKEND"
#: The resolved name of the triton backend when ``auto`` chose it (self-check failures fall back to torch).
AUTO_TRITON = "triton-auto"


def cpp_status() -> tuple[bool, str]:
    """Whether the compiled CPU backend can run, and why not."""
    try:
        from . import cpp

        return cpp.available()
    except Exception as exc:
        return False, f"isnet_kernels.cpp failed: {type(exc).__name__}: {exc}"


def triton_status() -> tuple[bool, str]:
    """Whether the Triton backend can run (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``), and why not."""
    try:
        from . import triton as triton_backend

        return triton_backend.available()
    except Exception as exc:
        return False, f"isnet_kernels.triton failed: {type(exc).__name__}: {exc}"


def cuda_status() -> tuple[bool, str]:
    """Whether the CUDA C++ backend can run (its extension built and a CUDA device present), and why not."""
    try:
        from . import cuda

        return cuda.available()
    except Exception as exc:
        return False, f"isnet_kernels.cuda failed: {type(exc).__name__}: {exc}"


def backend_status() -> dict[str, tuple[bool, str]]:
    """Every backend's availability and reason, e.g. ``{"cpp": (False, "not built: ...")}``."""
    status = {"reference": (True, "plain PyTorch ops under autograd, always available"),
              "torch": (True, "hand-written backwards on plain-PyTorch primitives, always available"),
              "cpp": cpp_status(), "triton": triton_status(), "cuda": cuda_status()}
    return {name: (ok, why or ("ready" if ok else "unknown reason")) for name, (ok, why) in status.items()}


def resolve(backend: str | None, device: torch.device) -> str:
    """The backend that runs tensors on ``device``: ``backend`` if given, else ``$ISNET_KERNELS_BACKEND``, else auto.

    Returns one of ``reference``, ``torch``, ``cpp``, ``triton`` (asked for by name) or :data:`AUTO_TRITON`.
    """
    name = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    if name not in BACKENDS:
        source = "backend" if backend is not None else ENV_VAR
        raise InputError(f"{source}={name!r} is not a backend; choose one of {BACKENDS}")
    if name == "auto":
        if device.type == "cuda" and triton_status()[0]:
            return AUTO_TRITON
        if device.type == "cpu" and cpp_status()[0]:
            return "cpp"
        return "reference"
    if name in ("reference", "torch"):
        return name
    ok, why = {"cpp": cpp_status, "triton": triton_status, "cuda": cuda_status}[name]()
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available: {why}. Use backend='auto' or "
                                      "'reference', or see `python -m isnet_kernels.info`")
    if name == "cpp" and device.type != "cpu":
        raise BackendUnavailableError(f"backend 'cpp' runs CPU tensors only, got a tensor on {device}; use 'auto'")
    if name == "cuda" and device.type != "cuda":
        raise BackendUnavailableError(f"backend 'cuda' runs CUDA tensors only, got a tensor on {device}; use 'auto' "
                                      "or 'cpp'")
    if name == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailableError("backend 'triton' runs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 "
                                      "set before isnet_kernels is imported); use 'auto'")
    return name


@functools.cache
def primitives(name: str) -> TorchPrimitives | None:
    """The kernel set of a resolved backend (None for ``reference``: plain autograd ops); one per process, so the
    triton self-check's verdicts persist."""
    if name == "reference":
        return None
    if name == "torch":
        return TorchPrimitives()
    if name == "cpp":
        from .cpp import CppPrimitives

        return CppPrimitives()
    if name == "cuda":
        from .cuda import CudaPrimitives

        return CudaPrimitives()
    if name in ("triton", AUTO_TRITON):
        from .triton import TritonPrimitives

        return TritonPrimitives(fallback=name == AUTO_TRITON)
    raise InputError(f"unknown backend {name!r}")
