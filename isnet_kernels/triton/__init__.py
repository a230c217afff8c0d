"""The ``triton`` backend: Triton kernels for the relevance primitives (docs/kernels.md).

Fused here: every elementwise primitive (one pass over memory, reductions over the M maps inside the kernel),
the max-pool scatter and gather, the epsilon rule through average pooling (one gather kernel forward, two
launches backward; :mod:`.pool`), and three implicit-GEMM convolutions (:mod:`.conv`):

- the epsilon rule's forward through a convolution, a transposed convolution with the division by ``stab(z)``
  as prologue and the product with ``a`` as epilogue (:meth:`TritonPrimitives.conv_epsilon_forward`);
- the Z^B rule's forward, the same transposed convolution with W+ and W- and two accumulators sharing every
  load of ``s``, one epilogue (:meth:`TritonPrimitives.zbox_forward`);
- the epsilon rule's backward on the output side, a convolution whose epilogue writes ``dR = V / t`` and
  ``dZ = -sum_M V s / t`` (:meth:`TritonPrimitives.conv_epsilon_backward`).

The remaining contractions (``forward_map``, ``weight_grad``, ``transpose``, and the linear layers' matmuls)
are PyTorch's (cuDNN / cuBLAS), inherited from :class:`TorchPrimitives`.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set
before this package is imported), which is how the tests run without a GPU. :func:`available` says whether
the backend can run here, and why not.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..ops.pool import AvgPoolWindows
from ..ops.primitives import Geometry, TorchPrimitives
from .reference import FusedReference

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


class TritonPrimitives(TorchPrimitives):
    """Primitives on Triton kernels; contractions other than the fused conv-epsilon forward stay PyTorch's.

    Tensors must live where triton runs: on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``. The first
    call of each kernel specialisation is checked against the torch primitive (:mod:`.selfcheck`): with
    ``fallback=True`` (the backend ``auto`` picked) a disagreement warns and the torch primitive serves that case
    from then on; with ``fallback=False`` (``backend="triton"`` by name) it raises
    :class:`~.selfcheck.KernelSelfCheckError`.
    """

    name = "triton"

    def __init__(self, fallback: bool = False) -> None:
        from .selfcheck import SelfCheck

        self.fallback = fallback
        self.self_check = SelfCheck(fallback)

    def _checked(self, method: str, kernel, *args):
        return self.self_check.run(method, kernel, getattr(_TORCH, method), args)

    def stab_divide(self, R: Tensor, z: Tensor, eps: float) -> Tensor:
        from .elementwise import stab_divide

        return self._checked("stab_divide", stab_divide, R, z, eps)

    def mul_activation(self, c: Tensor, a: Tensor) -> Tensor:
        from .elementwise import mul_activation

        return self._checked("mul_activation", mul_activation, c, a)

    def epsilon_backward_input(self, G: Tensor, a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        from .elementwise import epsilon_backward_input

        return self._checked("epsilon_backward_input", epsilon_backward_input, G, a, c)

    def epsilon_backward_stab(self, V: Tensor, s: Tensor, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        from .elementwise import epsilon_backward_stab

        return self._checked("epsilon_backward_stab", epsilon_backward_stab, V, s, z, eps)

    def residual_forward(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        from .elementwise import residual_forward

        return self._checked("residual_forward", residual_forward, R, x, f, y, eps)

    def residual_backward(self, Gx: Tensor, Gf: Tensor, R: Tensor, x: Tensor, f: Tensor, y: Tensor,
                          eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from .elementwise import residual_backward

        return self._checked("residual_backward", residual_backward, Gx, Gf, R, x, f, y, eps)

    def maxpool_forward(self, R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
        from .pool import maxpool_forward

        return self._checked("maxpool_forward", maxpool_forward, R, z, indices, length, eps)

    def maxpool_backward(self, G: Tensor, R: Tensor, z: Tensor, indices: Tensor,
                         eps: float) -> tuple[Tensor, Tensor]:
        from .pool import maxpool_backward

        return self._checked("maxpool_backward", maxpool_backward, G, R, z, indices, eps)

    # --- average pooling, epsilon: used by ops.pool.AvgPoolFunction (avg_pool2d, adaptive pooling, a mean) ------
    def avgpool_forward(self, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float) -> Tensor:
        """``R_in = a * P^T (R / t)``: R (B, M, C, Ho, Wo), a (B, C, H, W), z (B, C, Ho, Wo) -> (B, M, C, H, W), one
        launch. ``windows`` are avg_pool2d's, or None for adaptive_avg_pool2d to (Ho, Wo)."""
        from .pool import avgpool_forward

        return self._checked("avgpool_forward", avgpool_forward, R, a, z, windows, eps)

    def avgpool_backward(self, G: Tensor, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None,
                         eps: float, compute_da: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``V = P (G a)``; ``dR = V / t``, ``dz = -sum_M V s / t``, ``da = sum_M G P^T s`` (None unless
        ``compute_da``), with ``s = R / t``; two launches."""
        from .pool import avgpool_backward

        return self._checked("avgpool_backward", avgpool_backward, G, R, a, z, windows, eps, compute_da)

    def conv_epsilon_forward(self, R: Tensor, a: Tensor, z: Tensor, weight: Tensor, input_size: tuple[int, ...],
                             geom: Geometry, eps: float, keep_c: bool) -> tuple[Tensor, Tensor | None]:
        """Epsilon rule forward through a conv (one fused kernel) or linear layer: ``(R_in, c or None)``.

        Conv: R (B, M, Co, Ho, Wo), a (B, Ci, H, W), z (B, Co, Ho, Wo); see :func:`conv.conv_epsilon_forward`.
        Linear: R (B, M, K), a (B, F), z (B, K), weight (K, F); the triton division and product around a
        cuBLAS matmul. ``c`` (the transposed map's output, shaped like R_in) is returned when ``keep_c``.
        """
        if geom.linear:
            B, M = R.shape[:2]
            s = self.stab_divide(R.reshape(B, M, -1), z.reshape(B, -1), eps)
            c = s.view(B * M, -1) @ weight
            R_in = self.mul_activation(c.view(B, M, -1), a.reshape(B, -1)).view(B, M, *a.shape[1:])
            return R_in, c.view(R_in.shape) if keep_c else None
        from .conv import conv_epsilon_forward

        return self._checked("conv_epsilon_forward", conv_epsilon_forward, R, a, z, weight, tuple(input_size), geom,
                             eps, keep_c)

    def zbox_forward(self, R: Tensor, a_low: Tensor, a_high: Tensor, z_box: Tensor, w_pos: Tensor, w_neg: Tensor,
                     input_size: tuple[int, ...], geom: Geometry, eps: float,
                     keep_c: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Z^B rule forward: ``(R_in, c+, c-)`` with ``s = R / stab(z_box)``, ``c+ = W+^T s``, ``c- = W-^T s``,
        ``R_in = a_low * c+ + a_high * c-``; ``c+`` and ``c-`` (shaped like R_in) only when ``keep_c``.

        Conv: one fused kernel, see :func:`conv.zbox_forward`. Linear: R (B, M, K), a_low / a_high (B, F),
        z_box (B, K), weights (K, F); the triton division and products around one cuBLAS matmul for both signs.
        """
        if geom.linear:
            B, M = R.shape[:2]
            s = self.stab_divide(R.reshape(B, M, -1), z_box.reshape(B, -1), eps)
            c_pos, c_neg = (s.view(B * M, -1) @ torch.cat([w_pos, w_neg], 1)).view(B, M, -1).chunk(2, 2)
            c_pos, c_neg = c_pos.contiguous(), c_neg.contiguous()
            R_in = self.mul_activation(c_pos, a_low.reshape(B, -1)) + self.mul_activation(c_neg, a_high.reshape(B, -1))
            R_in = R_in.view(B, M, *a_low.shape[1:])
            if not keep_c:
                return R_in, None, None
            return R_in, c_pos.view(R_in.shape), c_neg.view(R_in.shape)
        from .conv import zbox_forward

        return self._checked("zbox_forward", zbox_forward, R, a_low, a_high, z_box, w_pos, w_neg, tuple(input_size),
                             geom, eps, keep_c)

    def conv_epsilon_backward(self, U: Tensor, weight: Tensor, s: Tensor, z: Tensor, geom: Geometry,
                              eps: float) -> tuple[Tensor, Tensor]:
        """The epsilon rule's backward, output side: ``(dR, dZ)`` with ``V = W U`` (the layer's own map, no
        bias), ``dR = V / stab(z)``, ``dZ = -sum_M V * s / stab(z)``.

        Conv: U (B, M, Ci, H, W), s (B, M, Co, Ho, Wo), z (B, Co, Ho, Wo); one fused kernel, see
        :func:`conv.conv_epsilon_backward`. Linear: U (B, M, F), s (B, M, K), z (B, K); a cuBLAS matmul then
        the triton epilogue.
        """
        if geom.linear:
            B, M = U.shape[:2]
            V = U.reshape(B * M, -1) @ weight.t()
            dR, dZ = self.epsilon_backward_stab(V.view(B, M, -1), s.reshape(B, M, -1), z.reshape(B, -1), eps)
            return dR.view(s.shape), dZ.view(z.shape)
        from .conv import conv_epsilon_backward

        return self._checked("conv_epsilon_backward", conv_epsilon_backward, U, weight, s, z, geom, eps)


__all__ = ["TritonPrimitives", "available"]
