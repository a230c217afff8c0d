"""The ``cpp`` backend: compiled CPU kernels for the elementwise relevance primitives and the average-pooling
relevance (docs/kernels.md).

The C++ sources in ``csrc/cpu`` build the optional extension ``isnet_kernels._C``; importing it registers the
operators ``torch.ops.isnet_kernels.*`` with PyTorch's dispatcher (CPU kernels only). Each is one fused pass over
memory with the M maps' loop inside the loop over activation elements, reductions over M accumulated in at least
float32, parallel over ``at::parallel_for``'s threads (``torch.set_num_threads``). Semantics and argument order
are :class:`~isnet_kernels.ops.primitives.TorchPrimitives`'; dtypes float32, float64, float16, bfloat16. The loops
are built twice, for the compiler's baseline target and (GCC on x86-64) for AVX2 + FMA + F16C; each call runs the
AVX2 build when the CPU has it (``isnet_kernels._C.CPU_CAPABILITY``) unless ``ISNET_KERNELS_CPU=default`` (or
torch's ``ATEN_CPU_CAPABILITY=default``) asks for the baseline one.

Average pooling (``avg_pool2d`` with any options, ``adaptive_avg_pool2d``, a spatial mean) has its own pair of
kernels beyond TorchPrimitives' set: ``avgpool_forward`` computes ``R_in = a * P^T (R / t)`` in one pass over the
(B, M, C) planes, ``avgpool_backward`` all three gradients in one pass over the (B, C) planes with the M maps
inside; :class:`~isnet_kernels.ops.pool.AvgPoolFunction` uses them.

Each element's arithmetic is a function of ``csrc/common/relevance_math.h``, which the CUDA kernels of
:mod:`isnet_kernels.backends.cuda` (registered for the same operators' CUDA key) call too.

The operators and their fake (meta) kernels are the fused ops' records (:mod:`isnet_kernels.ops.fused`): this module
registers every fake kernel, so ``torch.compile`` can trace the operators, and generates :class:`CppPrimitives`'
methods from the records, each calling its operator with contiguous tensors; the contractions (convolutions,
matmuls) stay ATen's. :func:`available` says whether the extension is built, and how to build it when it is not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import BackendUnavailableError
from ..ops.fused import FUSED_OPS, OPERATORS, FusedReference
from ..ops.primitives import TorchPrimitives
from ..ops.records import FusedOp, install

__all__ = ["OPS", "CppPrimitives", "available"]

#: The operators of ``torch.ops.isnet_kernels``, from the fused ops' records (schemas: the elementwise ops' structs
#: in ``csrc/common/relevance_math.h``, the others in ``csrc/cpu/isnet_kernels.cpp``).
OPS = tuple(operator.name for operator in OPERATORS)

_BUILD_HINT = ("run `pip install --no-build-isolation -e .` in the source tree with a C++ compiler (g++ or clang++) "
               "and without ISNET_KERNELS_NO_EXT=1")
_status: tuple[bool, str] | None = None
_fakes_registered = False


def available() -> tuple[bool, str]:
    """Whether the compiled extension loads: ``(True, "")``, or ``(False, reason)`` saying why and how to fix it."""
    global _status
    if _status is None:
        _status = _load()
    return _status


def _load() -> tuple[bool, str]:
    try:
        from .. import _C  # noqa: F401  (loading the library registers the operators)
    except ModuleNotFoundError:
        return False, f"the compiled extension isnet_kernels._C is not built: {_BUILD_HINT}"
    except ImportError as exc:  # built, but for another torch or Python, or a missing shared library
        return False, (f"the compiled extension isnet_kernels._C failed to load ({exc}); it was probably built "
                       f"against another torch or Python: rebuild it ({_BUILD_HINT})")
    missing = [name for name in OPS if not hasattr(torch.ops.isnet_kernels, name)]
    if missing:
        return False, f"isnet_kernels._C is out of date (no operator {', '.join(missing)}): rebuild it ({_BUILD_HINT})"
    _register_fakes()
    return True, ""


def _register_fakes() -> None:
    """Fake (meta) kernels: output shapes and dtypes without computing, for torch.compile and FakeTensor."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    for operator in OPERATORS:
        torch.library.register_fake(f"isnet_kernels::{operator.name}")(operator.fake)


def _cast(type_name: str) -> Callable[[Any], Any]:
    """What an argument of schema type ``type_name`` is made before the call: contiguous tensors, exact numbers."""
    return {"Tensor": lambda t: t.contiguous(), "float": float, "int": int, "bool": bool}.get(type_name, lambda v: v)


#: Per operator name: the operator and the casts of its arguments, looked up once.
_calls: dict[str, tuple[Any, tuple[Callable[[Any], Any], ...]]] = {}


def call_operator(name: str, *args: Any) -> Any:
    """``torch.ops.isnet_kernels.<name>(*args)`` with each argument made what the operator's schema asks."""
    found = _calls.get(name)
    if found is None:
        operator = getattr(torch.ops.isnet_kernels, name)
        found = _calls[name] = (operator, tuple(_cast(str(arg.type)) for arg in operator.default._schema.arguments))
    operator, casts = found
    return operator(*(cast(arg) for cast, arg in zip(casts, args, strict=True)))


def _method(op: FusedOp) -> Callable[..., Any]:
    """The primitive ``op.name`` on the C++ operators: its adapter, or its one operator with the same arguments."""
    if op.cpp is None:
        name = op.operators[0].name

        def method(self: CppPrimitives, *args: Any) -> Any:
            return call_operator(name, *args)
    else:
        adapter = op.cpp

        def method(self: CppPrimitives, *args: Any) -> Any:
            return adapter(call_operator, self, *args)
    return method


class CppPrimitives(TorchPrimitives):
    """Primitives on the compiled CPU kernels; the contractions stay PyTorch's (inherited).

    One method per fused op of :data:`isnet_kernels.ops.fused.FUSED_OPS` with C++ operators (generated from its
    record, with the reference's signature and docstring). Inputs must be CPU tensors of one floating dtype
    (float32, float64, float16, bfloat16); non-contiguous inputs are made contiguous first. Raises
    :class:`~isnet_kernels.errors.BackendUnavailableError` when the extension is not built.
    """

    name = "cpp"

    def __init__(self) -> None:
        ok, why = available()
        if not ok:
            raise BackendUnavailableError(f"backend 'cpp' is not available: {why}")


install(CppPrimitives, tuple(op for op in FUSED_OPS if op.operators), _method, FusedReference)
