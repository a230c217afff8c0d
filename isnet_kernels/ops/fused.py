"""The fused relevance ops in one table, and the plain-PyTorch specification of those only fused backends provide.

A *fused op* is a primitive of the kernel set (docs/kernels.md) that a compiled backend computes in one pass over
memory. Its record (:class:`~isnet_kernels.ops.records.FusedOp`) decorates its reference, a method of
:class:`~isnet_kernels.ops.primitives.TorchPrimitives` (the elementwise and max-pool primitives, which the
``torch`` backend runs) or of :class:`FusedReference` (the rest); :data:`FUSED_OPS` collects them all:

- the reference, in plain PyTorch: what the kernels are tested and self-checked against
  (:mod:`isnet_kernels.backends.triton.selfcheck`);
- its C++ operators ``torch.ops.isnet_kernels.<name>`` with their fake kernels (the outputs' shapes and dtypes
  without computing them, for ``torch.compile``), run by the ``cpp`` backend on CPU tensors (``csrc/cpu``) and the
  ``cuda`` backend on CUDA tensors (``csrc/cuda``), with the per-element maths of ``csrc/common/relevance_math.h``
  shared by both; the schemas are the C++ sources';
- its Triton launcher, ``"<module>.<function>"`` of :mod:`isnet_kernels.backends.triton`.

:mod:`isnet_kernels.backends.cpp` and :mod:`isnet_kernels.backends.triton` generate their primitives' methods from
the table (:func:`~isnet_kernels.ops.records.install`), and :mod:`isnet_kernels.backends.cpp` registers the fake
kernel of every :data:`OPERATORS` entry: a new fused elementwise op is its maths in the C++ header, its Triton
kernel, its reference with its record, its test and its benchmark (docs/extending.md).

:class:`FusedReference` adds to :class:`~isnet_kernels.ops.primitives.TorchPrimitives` the primitives only fused
backends provide, each the composition the unfused path of the op computes:

- ``conv_epsilon_forward``: ``s = R / stab(z)``, ``c = W^T s`` (transposed convolution), ``R_in = a * c``;
- ``zbox_forward``: ``c+ = W+^T s``, ``c- = W-^T s``, ``R_in = a_low * c+ + a_high * c-``;
- ``conv_epsilon_backward``: ``V = W U``, ``dR = V / stab(z)``, ``dZ = -sum_M dR * s``;
- ``avgpool_forward`` / ``avgpool_backward``: with ``P`` the pooling (avg_pool2d or adaptive) and ``P^T`` its
  adjoint (its vector-Jacobian product), ``R_in = a * P^T s``; ``V = P (G a)``, ``dR = V / t``,
  ``dz = -sum_M V s / t``, ``da = sum_M G P^T s``.

Shapes: a *map* tensor is (B, M, N...) and an *activation* tensor (B, N...), as in
:mod:`~isnet_kernels.ops.primitives`; ``t = stab(z) = z + eps * sign(z)``, ``sign(0) = +1``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .pool import AvgPoolWindows
from .primitives import Geometry, TorchPrimitives
from .records import CallOperator, FusedOp, Operator, fused
from .stabilize import stabilize


def _pool(x: Tensor, windows: AvgPoolWindows | None, out_size: tuple[int, int]) -> Tensor:
    if windows is None:
        return F.adaptive_avg_pool2d(x, out_size)
    return F.avg_pool2d(x, windows.kernel_size, windows.stride, windows.padding, windows.ceil_mode,
                        windows.count_include_pad, windows.divisor_override)


def _pool_adjoint(s: Tensor, in_shape: tuple[int, ...], windows: AvgPoolWindows | None) -> Tensor:
    x = torch.zeros(in_shape, dtype=s.dtype, device=s.device, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_pool(x, windows, tuple(s.shape[-2:])), x, s)
    return grad


def _relevance_in(R: Tensor, a: Tensor) -> tuple[int, ...]:
    torch._check(R.dim() == 5, lambda: f"R must have shape (B, M, C, Ho, Wo), got {tuple(R.shape)}")
    torch._check(a.dim() == 4, lambda: f"a must have shape (B, C, H, W), got {tuple(a.shape)}")
    return (R.shape[0], R.shape[1], R.shape[2], a.shape[2], a.shape[3])


def _avgpool_forward_fake(R: Tensor, a: Tensor, z: Tensor, *_: Any) -> Tensor:
    return R.new_empty(_relevance_in(R, a))


def _avgpool_backward_fake(G: Tensor, R: Tensor, a: Tensor, z: Tensor, *rest: Any) -> tuple[Tensor, Tensor, Tensor]:
    compute_da = rest[-1]
    _relevance_in(R, a)
    return R.new_empty(R.shape), z.new_empty(z.shape), a.new_empty(a.shape if compute_da else (0,))


def _avgpool_forward_cpp(call: CallOperator, prims: Any, R: Tensor, a: Tensor, z: Tensor,
                         windows: AvgPoolWindows | None, eps: float) -> Tensor:
    if windows is None:
        return call("adaptive_avgpool_forward", R, a, z, eps)
    return call("avgpool_forward", R, a, z, *windows, eps)


def _avgpool_backward_cpp(call: CallOperator, prims: Any, G: Tensor, R: Tensor, a: Tensor, z: Tensor,
                          windows: AvgPoolWindows | None, eps: float,
                          compute_da: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    if windows is None:
        dR, dz, da = call("adaptive_avgpool_backward", G, R, a, z, eps, compute_da)
    else:
        dR, dz, da = call("avgpool_backward", G, R, a, z, *windows, eps, compute_da)
    return dR, dz, da if compute_da else None


class FusedReference(TorchPrimitives):
    """Plain-PyTorch versions of every fused primitive: :class:`TorchPrimitives`' own, and those only fused
    backends provide (see the module docstring)."""

    name = "torch"

    @fused(triton="conv.conv_epsilon_forward")
    def conv_epsilon_forward(self, R: Tensor, a: Tensor, z: Tensor, weight: Tensor, input_size: tuple[int, ...],
                             geom: Geometry, eps: float, keep_c: bool) -> tuple[Tensor, Tensor | None]:
        """Epsilon rule forward through a convolution: ``(R_in, c or None)`` with ``c = W^T (R / stab(z))``,
        ``R_in = a * c``; R (B, M, Co, Ho, Wo), a (B, Ci, H, W), z (B, Co, Ho, Wo); ``c`` (shaped like R_in) is
        returned when ``keep_c``."""
        B, M = R.shape[:2]
        s = R / stabilize(z, eps).unsqueeze(1)
        c = self.transpose(s.flatten(0, 1), weight, tuple(input_size), geom).view(B, M, *a.shape[1:])
        return a.unsqueeze(1) * c, c if keep_c else None

    @fused(triton="conv.zbox_forward")
    def zbox_forward(self, R: Tensor, a_low: Tensor, a_high: Tensor, z_box: Tensor, w_pos: Tensor, w_neg: Tensor,
                     input_size: tuple[int, ...], geom: Geometry, eps: float,
                     keep_c: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Z^B rule forward through a convolution: ``(R_in, c+, c-)`` with ``s = R / stab(z_box)``,
        ``c+ = W+^T s``, ``c- = W-^T s``, ``R_in = a_low * c+ + a_high * c-``; ``c+`` and ``c-`` (shaped like R_in)
        only when ``keep_c``."""
        B, M = R.shape[:2]
        s = (R / stabilize(z_box, eps).unsqueeze(1)).flatten(0, 1)
        c_pos = self.transpose(s, w_pos, tuple(input_size), geom).view(B, M, *a_low.shape[1:])
        c_neg = self.transpose(s, w_neg, tuple(input_size), geom).view(B, M, *a_low.shape[1:])
        R_in = a_low.unsqueeze(1) * c_pos + a_high.unsqueeze(1) * c_neg
        return (R_in, c_pos, c_neg) if keep_c else (R_in, None, None)

    @fused(triton="conv.conv_epsilon_backward")
    def conv_epsilon_backward(self, U: Tensor, weight: Tensor, s: Tensor, z: Tensor, geom: Geometry,
                              eps: float) -> tuple[Tensor, Tensor]:
        """The epsilon rule's backward through a convolution, output side: ``(dR, dZ)`` with ``V = W U`` (the
        layer's own map, no bias), ``dR = V / stab(z)``, ``dZ = -sum_M V * s / stab(z)``; U (B, M, Ci, H, W),
        s (B, M, Co, Ho, Wo), z (B, Co, Ho, Wo)."""
        V = self.forward_map(U.flatten(0, 1), weight, geom).view(s.shape)
        dR = V / stabilize(z, eps).unsqueeze(1)
        return dR, -(dR * s).sum(1)

    @fused(Operator("avgpool_forward", _avgpool_forward_fake),
           Operator("adaptive_avgpool_forward", _avgpool_forward_fake), cpp=_avgpool_forward_cpp,
           triton="pool.avgpool_forward")
    def avgpool_forward(self, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float) -> Tensor:
        """``R_in = a * P^T (R / t)``: R (B, M, C, Ho, Wo), a (B, C, H, W), z (B, C, Ho, Wo) -> (B, M, C, H, W).
        ``windows`` are avg_pool2d's, or None for adaptive_avg_pool2d to (Ho, Wo)."""
        B, M = R.shape[:2]
        s = R / stabilize(z, eps).unsqueeze(1)
        c = _pool_adjoint(s.flatten(0, 1), (B * M, *a.shape[1:]), windows).view(B, M, *a.shape[1:])
        return a.unsqueeze(1) * c

    @fused(Operator("avgpool_backward", _avgpool_backward_fake),
           Operator("adaptive_avgpool_backward", _avgpool_backward_fake), cpp=_avgpool_backward_cpp,
           triton="pool.avgpool_backward")
    def avgpool_backward(self, G: Tensor, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None,
                         eps: float, compute_da: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``V = P (G a)``; ``dR = V / t``, ``dz = -sum_M V s / t``, ``da = sum_M G P^T s`` (None unless
        ``compute_da``), with ``s = R / t``."""
        B, M = R.shape[:2]
        t = stabilize(z, eps).unsqueeze(1)
        V = _pool((G * a.unsqueeze(1)).flatten(0, 1), windows, tuple(R.shape[-2:])).view(R.shape)
        dR = V / t
        s = R / t
        dz = -(dR * s).sum(1)
        da = None
        if compute_da:
            c = _pool_adjoint(s.flatten(0, 1), (B * M, *a.shape[1:]), windows).view(G.shape)
            da = (G * c).sum(1)
        return dR, dz, da


#: Every fused op's record, in the order of the reference methods (docs/kernels.md's table).
FUSED_OPS: tuple[FusedOp, ...] = tuple(method.fused_op for cls in (TorchPrimitives, FusedReference)
                                       for method in vars(cls).values() if hasattr(method, "fused_op"))

#: Every C++ operator ``torch.ops.isnet_kernels.*`` (cpp and cuda backends), in :data:`FUSED_OPS`' order.
OPERATORS: tuple[Operator, ...] = tuple(operator for op in FUSED_OPS for operator in op.operators)
