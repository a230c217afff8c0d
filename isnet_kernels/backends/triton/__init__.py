"""The ``triton`` backend: Triton kernels for the relevance primitives (docs/kernels.md).

Fused here: every elementwise primitive (one pass over memory, reductions over the M maps inside the kernel),
the max-pool scatter and gather, the epsilon rule through average pooling (one gather kernel forward, two
launches backward; :mod:`.pool`), and three implicit-GEMM convolutions (:mod:`.conv`):

- the epsilon rule's forward through a convolution, a transposed convolution with the division by ``stab(z)``
  as prologue and the product with ``a`` as epilogue (``conv_epsilon_forward``);
- the Z^B rule's forward, the same transposed convolution with W+ and W- and two accumulators sharing every
  load of ``s``, one epilogue (``zbox_forward``);
- the epsilon rule's backward on the output side, a convolution whose epilogue writes ``dR = V / t`` and
  ``dZ = -sum_M V s / t`` (``conv_epsilon_backward``).

:class:`TritonPrimitives`' methods are generated from the fused ops' records (:mod:`isnet_kernels.ops.fused`),
each calling the launcher its record names. The remaining contractions (``forward_map``, ``weight_grad``,
``transpose``, and the linear layers' matmuls) are PyTorch's (cuDNN / cuBLAS), inherited from
:class:`TorchPrimitives`.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set
before this package is imported), which is how the tests run without a GPU. :func:`available` says whether
the backend can run here, and why not.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from ...ops.fused import FUSED_OPS, FusedReference
from ...ops.primitives import TorchPrimitives
from ...ops.records import FusedOp, install

_INSTALL_HINT = "triton is not installed: pip install triton==3.8.0"


def available() -> tuple[bool, str]:
    """Whether the triton backend can run here: ``(True, "")``, or ``(False, reason)`` with what to do about it.

    It needs triton importable, and either a CUDA device or ``TRITON_INTERPRET=1`` (CPU interpreter, slow).
    """
    try:
        import triton  # noqa: F401
    except Exception as exc:  # not installed, or broken
        if isinstance(exc, ModuleNotFoundError):
            return False, _INSTALL_HINT
        return False, f"triton failed to import ({type(exc).__name__}: {exc}); reinstall with pip install " \
                      "triton==3.8.0"
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    if torch.cuda.is_available():
        return True, ""
    return False, "no CUDA device and TRITON_INTERPRET is not 1 (set it before importing isnet_kernels to run " \
                  "the kernels on CPU, slowly)"


_TORCH = FusedReference()


def _method(op: FusedOp) -> Callable[..., Any]:
    """The primitive ``op.name`` on its Triton launcher (looked up at each call), self-checked on first use."""
    module, function = op.triton.split(".")  # type: ignore[union-attr]

    def method(self: TritonPrimitives, *args: Any) -> Any:
        kernel = getattr(importlib.import_module(f"{__name__}.{module}"), function)
        return self._checked(op.name, kernel, *args)
    return method


class TritonPrimitives(TorchPrimitives):
    """Primitives on Triton kernels; contractions other than the fused convolutions stay PyTorch's.

    One method per fused op of :data:`isnet_kernels.ops.fused.FUSED_OPS` with a Triton launcher (generated from its
    record, with the reference's signature and docstring); the fused convolutions take conv layers only (the ops
    call them for convolutions, and the elementwise primitives around a matmul for linear layers). Tensors must
    live where triton runs: on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``. The first call of each
    kernel specialisation is checked against the reference (:mod:`.selfcheck`): with ``fallback=True`` (the
    backend ``auto`` picked) a disagreement warns and the reference serves that case from then on; with
    ``fallback=False`` (``backend="triton"`` by name) it raises :class:`~.selfcheck.KernelSelfCheckError`.
    """

    name = "triton"

    def __init__(self, fallback: bool = False) -> None:
        from .selfcheck import SelfCheck

        self.fallback = fallback
        self.self_check = SelfCheck(fallback)

    def _checked(self, method: str, kernel: Callable[..., Any], *args: Any) -> Any:
        return self.self_check.run(method, kernel, getattr(_TORCH, method), args)


install(TritonPrimitives, tuple(op for op in FUSED_OPS if op.triton), _method, FusedReference)

__all__ = ["TritonPrimitives", "available"]
