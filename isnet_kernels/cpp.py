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
:mod:`isnet_kernels.cuda` (registered for the same operators' CUDA key) call too.

This module registers a fake (meta) kernel for every operator, so ``torch.compile`` can trace them, and provides
:class:`CppPrimitives`; the contractions (convolutions, matmuls) stay ATen's. :func:`available` says whether the
extension is built, and how to build it when it is not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import BackendUnavailableError
from .ops.pool import AvgPoolWindows
from .ops.primitives import TorchPrimitives

__all__ = ["OPS", "CppPrimitives", "available"]

#: The operators of ``torch.ops.isnet_kernels`` (schemas in ``csrc/cpu/isnet_kernels.cpp``).
OPS = ("stab_divide", "mul_activation", "epsilon_backward_input", "epsilon_backward_stab", "residual_forward",
       "residual_backward", "maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward",
       "adaptive_avgpool_forward", "adaptive_avgpool_backward")

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
        from . import _C  # noqa: F401  (loading the library registers the operators)
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

    def activation_like(map_: Tensor) -> tuple[int, ...]:
        torch._check(map_.dim() >= 2, lambda: f"expected a map tensor (B, M, *S), got shape {tuple(map_.shape)}")
        return (map_.shape[0], *map_.shape[2:])

    @torch.library.register_fake("isnet_kernels::stab_divide")
    def _(R: Tensor, z: Tensor, eps: float) -> Tensor:
        return R.new_empty(R.shape)

    @torch.library.register_fake("isnet_kernels::mul_activation")
    def _(c: Tensor, a: Tensor) -> Tensor:
        return c.new_empty(c.shape)

    @torch.library.register_fake("isnet_kernels::epsilon_backward_input")
    def _(G: Tensor, a: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        return G.new_empty(G.shape), G.new_empty(activation_like(G))

    @torch.library.register_fake("isnet_kernels::epsilon_backward_stab")
    def _(V: Tensor, s: Tensor, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        return V.new_empty(V.shape), V.new_empty(activation_like(V))

    @torch.library.register_fake("isnet_kernels::residual_forward")
    def _(R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        return R.new_empty(R.shape), R.new_empty(R.shape)

    @torch.library.register_fake("isnet_kernels::residual_backward")
    def _(Gx: Tensor, Gf: Tensor, R: Tensor, x: Tensor, f: Tensor, y: Tensor,
          eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        shape = activation_like(R)
        return R.new_empty(R.shape), R.new_empty(shape), R.new_empty(shape), R.new_empty(shape)

    @torch.library.register_fake("isnet_kernels::maxpool_forward")
    def _(R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
        torch._check(R.dim() == 4, lambda: f"R must have shape (B, M, C, Lo), got {tuple(R.shape)}")
        return R.new_empty((R.shape[0], R.shape[1], R.shape[2], length))

    @torch.library.register_fake("isnet_kernels::maxpool_backward")
    def _(G: Tensor, R: Tensor, z: Tensor, indices: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        torch._check(R.dim() == 4, lambda: f"R must have shape (B, M, C, Lo), got {tuple(R.shape)}")
        return R.new_empty(R.shape), R.new_empty((R.shape[0], R.shape[2], R.shape[3]))

    def relevance_in(R: Tensor, a: Tensor) -> tuple[int, ...]:
        torch._check(R.dim() == 5, lambda: f"R must have shape (B, M, C, Ho, Wo), got {tuple(R.shape)}")
        torch._check(a.dim() == 4, lambda: f"a must have shape (B, C, H, W), got {tuple(a.shape)}")
        return (R.shape[0], R.shape[1], R.shape[2], a.shape[2], a.shape[3])

    def pool_grads(R: Tensor, a: Tensor, z: Tensor, compute_da: bool) -> tuple[Tensor, Tensor, Tensor]:
        relevance_in(R, a)
        return R.new_empty(R.shape), z.new_empty(z.shape), a.new_empty(a.shape if compute_da else (0,))

    @torch.library.register_fake("isnet_kernels::avgpool_forward")
    def _(R: Tensor, a: Tensor, z: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
          ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, eps: float) -> Tensor:
        return R.new_empty(relevance_in(R, a))

    @torch.library.register_fake("isnet_kernels::avgpool_backward")
    def _(G: Tensor, R: Tensor, a: Tensor, z: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
          ceil_mode: bool, count_include_pad: bool, divisor_override: int | None, eps: float,
          compute_da: bool) -> tuple[Tensor, Tensor, Tensor]:
        return pool_grads(R, a, z, compute_da)

    @torch.library.register_fake("isnet_kernels::adaptive_avgpool_forward")
    def _(R: Tensor, a: Tensor, z: Tensor, eps: float) -> Tensor:
        return R.new_empty(relevance_in(R, a))

    @torch.library.register_fake("isnet_kernels::adaptive_avgpool_backward")
    def _(G: Tensor, R: Tensor, a: Tensor, z: Tensor, eps: float, compute_da: bool) -> tuple[Tensor, Tensor, Tensor]:
        return pool_grads(R, a, z, compute_da)


class CppPrimitives(TorchPrimitives):
    """Primitives on the compiled CPU kernels; the contractions stay PyTorch's (inherited).

    Inputs must be CPU tensors of one floating dtype (float32, float64, float16, bfloat16); non-contiguous inputs
    are made contiguous first. Raises :class:`~isnet_kernels.errors.BackendUnavailableError` when the extension
    is not built.
    """

    name = "cpp"

    def __init__(self) -> None:
        ok, why = available()
        if not ok:
            raise BackendUnavailableError(f"backend 'cpp' is not available: {why}")

    def stab_divide(self, R: Tensor, z: Tensor, eps: float) -> Tensor:
        return torch.ops.isnet_kernels.stab_divide(R.contiguous(), z.contiguous(), float(eps))

    def mul_activation(self, c: Tensor, a: Tensor) -> Tensor:
        return torch.ops.isnet_kernels.mul_activation(c.contiguous(), a.contiguous())

    def epsilon_backward_input(self, G: Tensor, a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if c is None:  # U = G * a alone
            return self.mul_activation(G, a), None
        U, dA = torch.ops.isnet_kernels.epsilon_backward_input(G.contiguous(), a.contiguous(), c.contiguous())
        return U, dA

    def epsilon_backward_stab(self, V: Tensor, s: Tensor, z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        dR, dZ = torch.ops.isnet_kernels.epsilon_backward_stab(V.contiguous(), s.contiguous(), z.contiguous(),
                                                               float(eps))
        return dR, dZ

    def residual_forward(self, R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        Rx, Rf = torch.ops.isnet_kernels.residual_forward(R.contiguous(), x.contiguous(), f.contiguous(),
                                                          y.contiguous(), float(eps))
        return Rx, Rf

    def residual_backward(self, Gx: Tensor, Gf: Tensor, R: Tensor, x: Tensor, f: Tensor, y: Tensor,
                          eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dR, dx, df, dy = torch.ops.isnet_kernels.residual_backward(
            Gx.contiguous(), Gf.contiguous(), R.contiguous(), x.contiguous(), f.contiguous(), y.contiguous(),
            float(eps))
        return dR, dx, df, dy

    def maxpool_forward(self, R: Tensor, z: Tensor, indices: Tensor, length: int, eps: float) -> Tensor:
        return torch.ops.isnet_kernels.maxpool_forward(R.contiguous(), z.contiguous(), indices.contiguous(),
                                                       int(length), float(eps))

    def maxpool_backward(self, G: Tensor, R: Tensor, z: Tensor, indices: Tensor,
                         eps: float) -> tuple[Tensor, Tensor]:
        dR, dz = torch.ops.isnet_kernels.maxpool_backward(G.contiguous(), R.contiguous(), z.contiguous(),
                                                          indices.contiguous(), float(eps))
        return dR, dz

    # --- average pooling, epsilon: one pass each way (used by ops.pool.AvgPoolFunction) ---------------------------
    def avgpool_forward(self, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None, eps: float) -> Tensor:
        """``R_in = a * P^T (R / t)``: R (B, M, C, Ho, Wo), a (B, C, H, W), z (B, C, Ho, Wo) -> (B, M, C, H, W).
        ``windows`` are avg_pool2d's, or None for adaptive_avg_pool2d to (Ho, Wo)."""
        if windows is None:
            return torch.ops.isnet_kernels.adaptive_avgpool_forward(R.contiguous(), a.contiguous(), z.contiguous(),
                                                                    float(eps))
        return torch.ops.isnet_kernels.avgpool_forward(R.contiguous(), a.contiguous(), z.contiguous(), *windows,
                                                       float(eps))

    def avgpool_backward(self, G: Tensor, R: Tensor, a: Tensor, z: Tensor, windows: AvgPoolWindows | None,
                         eps: float, compute_da: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``V = P (G a)``; ``dR = V / t``, ``dz = -sum_M V s / t``, ``da = sum_M G P^T s`` (None unless
        ``compute_da``), with ``s = R / t``."""
        args = (G.contiguous(), R.contiguous(), a.contiguous(), z.contiguous())
        if windows is None:
            dR, dz, da = torch.ops.isnet_kernels.adaptive_avgpool_backward(*args, float(eps), bool(compute_da))
        else:
            dR, dz, da = torch.ops.isnet_kernels.avgpool_backward(*args, *windows, float(eps), bool(compute_da))
        return dR, dz, da if compute_da else None
