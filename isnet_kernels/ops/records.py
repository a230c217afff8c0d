"""The record of a fused op: its reference, its C++ operators with their fake kernels, its Triton launcher.

A *fused op* is a primitive of the kernel set (docs/kernels.md) that compiled backends compute in one pass over
memory. Its record is a decorator on its plain-PyTorch reference, the method of
:class:`~isnet_kernels.ops.primitives.TorchPrimitives` (or :class:`~isnet_kernels.ops.fused.FusedReference`) of
the op's name, so the specification and what implements it sit together::

    @elementwise(inputs="ma", outputs="m")
    def stab_divide(self, R, z, eps): ...

:mod:`isnet_kernels.ops.fused` collects the records into its table, from which :mod:`isnet_kernels.backends.cpp`
and :mod:`isnet_kernels.backends.triton` generate their primitives' methods (:func:`install`) and the cpp backend
registers the operators' fake kernels. Shapes: a *map* tensor is (B, M, N...), an *activation* tensor (B, N...), as in
:mod:`~isnet_kernels.ops.primitives`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

#: A fake kernel: the operator's arguments in, empty outputs of the right shapes and dtypes out.
Fake = Callable[..., Any]
#: Runs a C++ operator by name with its arguments made what its schema asks (tensors contiguous, numbers cast).
CallOperator = Callable[..., Any]
#: How a primitive calls its C++ operators: ``adapter(call, prims, *args)`` with ``args`` the primitive's.
CppAdapter = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operator:
    """One C++ operator ``torch.ops.isnet_kernels.<name>``: its schema is the C++ sources', its fake kernel here."""

    name: str
    fake: Fake


@dataclass(frozen=True)
class FusedOp:
    """One fused primitive.

    ``name``: the primitives' method; ``operators``: its C++ operators, run by the ``cpp`` backend on CPU tensors
    and the ``cuda`` backend on CUDA tensors (none: neither has a kernel); ``cpp``: how the primitive calls them
    (None: the one operator, with the primitive's arguments as they are); ``triton``: ``"<module>.<function>"``
    of :mod:`isnet_kernels.backends.triton` (None: no Triton kernel); ``inputs``: for an elementwise op, one letter per
    tensor argument, ``m`` a map and ``a`` an activation (empty for other ops).
    """

    name: str
    operators: tuple[Operator, ...] = ()
    cpp: CppAdapter | None = None
    triton: str | None = None
    inputs: str = ""


def fused(*operators: Operator, cpp: CppAdapter | None = None, triton: str | None = None,
          inputs: str = "") -> Callable[[F], F]:
    """Marks a reference method as a fused op's specification and attaches its :class:`FusedOp` record (named
    after the method) as ``method.fused_op``."""
    def mark(method: F) -> F:
        method.fused_op = FusedOp(method.__name__, operators, cpp, triton, inputs)  # type: ignore[attr-defined]
        return method
    return mark


def _activation_shape(map_: Tensor) -> tuple[int, ...]:
    torch._check(map_.dim() >= 2, lambda: f"expected a map tensor (B, M, *S), got shape {tuple(map_.shape)}")
    return (map_.shape[0], *map_.shape[2:])


def elementwise_fake(inputs: str, outputs: str) -> Fake:
    """The fake kernel of an elementwise operator: ``outputs`` has one letter per output, ``m`` a map (the shape
    of the first map argument, by ``inputs``) and ``s`` a sum over the M maps (an activation)."""
    first = inputs.index("m")

    def fake(*args: Any) -> Tensor | tuple[Tensor, ...]:
        map_ = args[first]
        out = tuple(map_.new_empty(map_.shape if kind == "m" else _activation_shape(map_)) for kind in outputs)
        return out[0] if len(out) == 1 else out
    return fake


def elementwise(inputs: str, outputs: str, cpp: CppAdapter | None = None) -> Callable[[F], F]:
    """The record of an elementwise op (its per-element maths and loops in ``csrc/common/relevance_math.h``): one
    C++ operator of the method's name, whose tensor arguments are ``inputs`` (``m`` a map, ``a`` an activation)
    and whose outputs are ``outputs`` (``m`` a map, ``s`` a sum over the M maps), as the C++ struct declares them;
    its Triton launcher is the function of that name in ``backends/triton/elementwise.py``."""
    def mark(method: F) -> F:
        name = method.__name__
        return fused(Operator(name, elementwise_fake(inputs, outputs)), cpp=cpp, triton=f"elementwise.{name}",
                     inputs=inputs)(method)
    return mark


def install(cls: type, ops: tuple[FusedOp, ...], make: Callable[[FusedOp], Callable[..., Any]],
            reference: type) -> type:
    """Gives ``cls`` the method ``make(op)`` for each of ``ops``, named, documented and signed as the op's
    reference (``reference``'s method of the op's name). Returns ``cls``."""
    for op in ops:
        spec = getattr(reference, op.name)
        method = make(op)
        method.__name__ = op.name
        method.__qualname__ = f"{cls.__qualname__}.{op.name}"
        method.__doc__ = spec.__doc__
        method.__signature__ = inspect.signature(spec)  # type: ignore[attr-defined]
        setattr(cls, op.name, method)
    return cls
