"""The fused primitives of the triton backend composed from plain PyTorch: what the self-check compares with.

:class:`FusedReference` adds to :class:`~isnet_kernels.ops.primitives.TorchPrimitives` the primitives only fused
backends provide (docs/kernels.md), each the composition the unfused path of the op computes:

- ``conv_epsilon_forward``: ``s = R / stab(z)``, ``c = W^T s`` (transposed convolution), ``R_in = a * c``;
- ``zbox_forward``: ``c+ = W+^T s``, ``c- = W-^T s``, ``R_in = a_low * c+ + a_high * c-``;
- ``conv_epsilon_backward``: ``V = W U``, ``dR = V / stab(z)``, ``dZ = -sum_M dR * s``;
- ``avgpool_forward`` / ``avgpool_backward``: with ``P`` the pooling (avg_pool2d or adaptive) and ``P^T`` its
  adjoint (its vector-Jacobian product), ``R_in = a * P^T s``; ``V = P (G a)``, ``dR = V / t``,
  ``dz = -sum_M V s / t``, ``da = sum_M G P^T s``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.pool import AvgPoolWindows
from ..ops.primitives import Geometry, TorchPrimitives
from ..ops.stabilize import stabilize


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


class FusedReference(TorchPrimitives):
    """Plain-PyTorch versions of the fused primitives (see the module docstring)."""

    name = "torch"

    def conv_epsilon_forward(self, R: Tensor, a: Tensor, z: Tensor, weight: Tensor, input_size: tuple[int, ...],
                             geom: Geometry, eps: float, keep_c: bool) -> tuple[Tensor, Tensor | None]:
        B, M = R.shape[:2]
        s = R / stabilize(z, eps).unsqueeze(1)
        c = self.transpose(s.flatten(0, 1), weight, tuple(input_size), geom).view(B, M, *a.shape[1:])
        return a.unsqueeze(1) * c, c if keep_c else None

    def zbox_forward(self, R: Tensor, a_low: Tensor, a_high: Tensor, z_box: Tensor, w_pos: Tensor, w_neg: Tensor,
                     input_size: tuple[int, ...], geom: Geometry, eps: float,
                     keep_c: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        B, M = R.shape[:2]
        s = (R / stabilize(z_box, eps).unsqueeze(1)).flatten(0, 1)
        c_pos = self.transpose(s, w_pos, tuple(input_size), geom).view(B, M, *a_low.shape[1:])
        c_neg = self.transpose(s, w_neg, tuple(input_size), geom).view(B, M, *a_low.shape[1:])
        R_in = a_low.unsqueeze(1) * c_pos + a_high.unsqueeze(1) * c_neg
        return (R_in, c_pos, c_neg) if keep_c else (R_in, None, None)

    def conv_epsilon_backward(self, U: Tensor, weight: Tensor, s: Tensor, z: Tensor, geom: Geometry,
                              eps: float) -> tuple[Tensor, Tensor]:
        V = self.forward_map(U.flatten(0, 1), weight, geom).view(s.shape)
        dR = V / stabilize(z, eps).unsqueeze(1)
        return dR, -(dR * s).sum(1)

    def avgpool_forward(self, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float) -> Tensor:
        B, M = R.shape[:2]
        s = R / stabilize(z, eps).unsqueeze(1)
        c = _pool_adjoint(s.flatten(0, 1), (B * M, *a.shape[1:]), windows).view(B, M, *a.shape[1:])
        return a.unsqueeze(1) * c

    def avgpool_backward(self, G: Tensor, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None,
                         eps: float, compute_da: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
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
