"""Which backend computes the relevance ops: ``reference``, ``torch``, ``cpp``, ``triton`` or ``cuda``.

``reference`` runs the plain-PyTorch ops under ordinary autograd. ``cpp``, ``triton`` and ``cuda`` run the
autograd Functions with hand-written backwards on compiled kernels; ``torch`` runs the same Functions on
plain-PyTorch primitives (the kernels' specification; useful to test the Functions on any machine).

Each backend is one :class:`Backend` record of :data:`TABLE`: whether it can run here (and why not), which
devices it takes, and its kernel set; every function below reads the table.

``backend="auto"`` (the default, or the environment variable ``ISNET_KERNELS_BACKEND``) picks ``triton`` for CUDA
tensors when Triton imports, ``cpp`` for CPU tensors when the compiled extension is built, and the plain-PyTorch
``reference`` otherwise. A backend asked for by name that cannot run raises
:class:`~isnet_kernels.errors.BackendUnavailableError` saying why: never a silent fallback.

Triton chosen by ``auto`` resolves to :data:`AUTO_TRITON` (``"triton-auto"``), by name to ``"triton"``: both run
the kernels with a first-call check of each specialisation against the torch primitive
(:mod:`isnet_kernels.backends.triton.selfcheck`); a kernel that fails it warns and falls back to the torch primitive for
that case under ``auto``, and raises :class:`~isnet_kernels.backends.triton.selfcheck.KernelSelfCheckError` when asked
for by name.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import BackendUnavailableError, InputError
from ..ops.primitives import TorchPrimitives

ENV_VAR = "ISNET_KERNELS_BACKEND"
#: The resolved name of the triton backend when ``auto`` chose it (self-check failures fall back to torch).
AUTO_TRITON = "triton-auto"


def _module_status(module: str) -> tuple[bool, str]:
    """``isnet_kernels.backends.<module>.available()``, or why the module failed to import."""
    try:
        return importlib.import_module(f"{__package__}.{module}").available()
    except Exception as exc:
        return False, f"{__package__}.{module} failed: {type(exc).__name__}: {exc}"


def cpp_status() -> tuple[bool, str]:
    """Whether the compiled CPU backend can run, and why not."""
    return _module_status("cpp")


def triton_status() -> tuple[bool, str]:
    """Whether the Triton backend can run (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``), and why not."""
    return _module_status("triton")


def cuda_status() -> tuple[bool, str]:
    """Whether the CUDA C++ backend can run (its extension built and a CUDA device present), and why not."""
    return _module_status("cuda")


def _triton_device(device: torch.device) -> str | None:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ("backend 'triton' runs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
                "isnet_kernels is imported); use 'auto'")
    return None


def _cpp_device(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"backend 'cpp' runs CPU tensors only, got a tensor on {device}; use 'auto'"
    return None


def _cuda_device(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"backend 'cuda' runs CUDA tensors only, got a tensor on {device}; use 'auto' or 'cpp'"
    return None


def _kernel_set(module: str, cls: str) -> type[TorchPrimitives]:
    """A compiled backend's kernel-set class ``isnet_kernels.backends.<module>.<cls>``, imported on first use."""
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


@dataclass(frozen=True)
class Backend:
    """One backend: ``status()`` says whether it can run here, ``(ok, why)``; ``device_error(device)`` why it
    cannot take tensors on ``device`` (None: it can); ``kernels(resolved_name)`` its kernel set (None: plain
    autograd ops); ``auto_device`` the device type for which ``auto`` picks it when it can run."""

    name: str
    status: Callable[[], tuple[bool, str]]
    kernels: Callable[[str], TorchPrimitives | None]
    device_error: Callable[[torch.device], str | None] = lambda device: None
    auto_device: str | None = None


#: Every backend, in the order ``auto`` tries them for a device. The compiled backends' status functions are
#: looked up at each call (``cpp_status`` and the others above), so they can be replaced.
TABLE: dict[str, Backend] = {backend.name: backend for backend in (
    Backend("reference", lambda: (True, "plain PyTorch ops under autograd, always available"), lambda _: None),
    Backend("torch", lambda: (True, "hand-written backwards on plain-PyTorch primitives, always available"),
            lambda _: TorchPrimitives()),
    Backend("cpp", lambda: cpp_status(), lambda _: _kernel_set("cpp", "CppPrimitives")(), _cpp_device,
            auto_device="cpu"),
    Backend("triton", lambda: triton_status(),
            lambda resolved: _kernel_set("triton", "TritonPrimitives")(fallback=resolved == AUTO_TRITON),
            _triton_device, auto_device="cuda"),
    Backend("cuda", lambda: cuda_status(), lambda _: _kernel_set("cuda", "CudaPrimitives")(), _cuda_device),
)}

BACKENDS = ("auto", *TABLE)


def backend_status() -> dict[str, tuple[bool, str]]:
    """Every backend's availability and reason, e.g. ``{"cpp": (False, "not built: ...")}``."""
    status = {name: backend.status() for name, backend in TABLE.items()}
    return {name: (ok, why or ("ready" if ok else "unknown reason")) for name, (ok, why) in status.items()}


def resolve(backend: str | None, device: torch.device) -> str:
    """The backend that runs tensors on ``device``: ``backend`` if given, else ``$ISNET_KERNELS_BACKEND``, else auto.

    Returns one of ``reference``, ``torch``, ``cpp``, ``triton``, ``cuda`` (asked for by name) or
    :data:`AUTO_TRITON`.
    """
    name = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    if name not in BACKENDS:
        source = "backend" if backend is not None else ENV_VAR
        raise InputError(f"{source}={name!r} is not a backend; choose one of {BACKENDS}")
    if name == "auto":
        for candidate in TABLE.values():
            if candidate.auto_device == device.type and candidate.status()[0]:
                return AUTO_TRITON if candidate.name == "triton" else candidate.name
        return "reference"
    chosen = TABLE[name]
    ok, why = chosen.status()
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} is not available: {why}. Use backend='auto' or "
                                      "'reference', or see `python -m isnet_kernels.info`")
    error = chosen.device_error(device)
    if error is not None:
        raise BackendUnavailableError(error)
    return name


@functools.cache
def primitives(name: str) -> TorchPrimitives | None:
    """The kernel set of a resolved backend (None for ``reference``: plain autograd ops); one per process, so the
    triton self-check's verdicts persist."""
    backend = TABLE.get("triton" if name == AUTO_TRITON else name)
    if backend is None:
        raise InputError(f"unknown backend {name!r}")
    return backend.kernels(name)
