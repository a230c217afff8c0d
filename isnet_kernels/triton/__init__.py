"""The ``triton`` backend: Triton kernels for the relevance primitives (KERNELS.md).

Fused here: every elementwise primitive (one pass over memory, reductions over the M maps inside the kernel),
the max-pool scatter and gather, and the epsilon rule's forward through a convolution as one implicit-GEMM
transposed convolution with the division by ``stab(z)`` as prologue and the product with ``a`` as epilogue
(:func:`conv.conv_epsilon_forward`). The remaining contractions (``forward_map``, ``weight_grad``,
``transpose``) are PyTorch's (cuDNN / cuBLAS), inherited from :class:`TorchPrimitives`.

The kernels run on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set
before this package is imported), which is how the tests run without a GPU. :func:`available` says whether
the backend can run here, and why not.
"""

from __future__ import annotations

import os

from torch import Tensor

from ..ops.primitives import Geometry, TorchPrimitives

_INSTALL_HINT = "triton is not installed: pip install triton==3.7.1"


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
                      "triton==3.7.1"
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    if torch.cuda.is_available():
        return True, ""
    return False, "no CUDA device and TRITON_INTERPRET is not 1 (set it before importing isnet_kernels to run " \
                  "the kernels on CPU, slowly)"


class TritonPrimitives(TorchPrimitives):
    """Primitives on Triton kernels; contractions other than the fused conv-epsilon forward stay PyTorch's.

    Tensors must live where triton runs: on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1``.
    """

    name = "triton"

    def stab_divide(self, R: Tensor, z: Tensor, eps: float) -> Tensor:
        from .elementwise import stab_divide

        return stab_divide(R, z, eps)

    def mul_activation(self, c: Tensor, a: Tensor) -> Tensor:
        from .elementwise import mul_activation

        return mul_activation(c, a)

    def epsilon_backward_input(self, G: Tensor, a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        from .elementwise import epsilon_backward_input

        return epsilon_backward_input(G, a, c)

    def epsilon_backward_stab(self, V: Tensor, s: Tensor, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        from .elementwise import epsilon_backward_stab

        return epsilon_backward_stab(V, s, z, eps)

    def residual_forward(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        from .elementwise import residual_forward

        return residual_forward(R, x, f, y, eps)

    def residual_backward(self, Gx: Tensor, Gf: Tensor, R: Tensor, x: Tensor, f: Tensor, y: Tensor,
                          eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from .elementwise import residual_backward

        return residual_backward(Gx, Gf, R, x, f, y, eps)

    def maxpool_forward(self, R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
        from .pool import maxpool_forward

        return maxpool_forward(R, z, indices, length, eps)

    def maxpool_backward(self, G: Tensor, R: Tensor, z: Tensor, indices: Tensor,
                         eps: float) -> tuple[Tensor, Tensor]:
        from .pool import maxpool_backward

        return maxpool_backward(G, R, z, indices, eps)

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

        return conv_epsilon_forward(R, a, z, weight, tuple(input_size), geom, eps, keep_c)


__all__ = ["TritonPrimitives", "available"]
