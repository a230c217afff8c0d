"""A pre-activation given by its parts, ``z = x0 * scale + shift`` (docs/kernels.md, memory of a training step).

The rules divide by the pre-activation ``z`` of a linear layer, with BatchNorm folded (``scale = gamma / sigma``,
``shift`` the folded offset) or a bias added (``shift = b``). ``x0``, the layer's bias-free output, is a tensor the
forward pass keeps anyway; an op given the parts keeps ``x0`` and two (C,) vectors and rebuilds ``z`` in its
backward (one elementwise pass), where a ``z`` built outside it would be one more activation-sized tensor kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Preactivation", "affine", "affine_backward"]


@dataclass(frozen=True)
class Preactivation:
    """A pre-activation given by its parts: ``z = x0 * scale + shift``.

    ``x0`` is the linear layer's bias-free output (B, C, ...); ``scale`` and ``shift`` (or None) are per-channel
    vectors already shaped to broadcast against it. :meth:`value` is ``z`` with autograd's gradient: ``dx0 = dz *
    scale``, ``dscale = sum(dz * x0)``, ``dshift = sum(dz)`` over the broadcast axes.
    """

    x0: Tensor
    scale: Tensor | None = None
    shift: Tensor | None = None

    def value(self) -> Tensor:
        """``z``, built as the forward pass builds it (the same operations, so the same values)."""
        return affine(self.x0, self.scale, self.shift)


def affine(x0: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
    """``x0 * scale + shift`` (either factor None: left out)."""
    z = x0 if scale is None else x0 * scale
    return z if shift is None else z + shift


def affine_backward(dz: Tensor, x0: Tensor, scale: Tensor | None, shift: Tensor | None,
                    needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of :func:`affine` w.r.t. ``(x0, scale, shift)``, reduced over broadcast axes as autograd does."""
    dx0 = (dz if scale is None else dz * scale) if needs[0] else None
    dscale = (dz * x0).sum_to_size(scale.shape) if needs[1] and scale is not None else None
    dshift = dz.sum_to_size(shift.shape) if needs[2] and shift is not None else None
    return dx0, dscale, dshift
