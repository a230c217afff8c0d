"""Products of activations, and constant scalings and shifts of one activation (docs/rules.md).

- ``y = a * b``, an element-wise product of two activations (broadcasting allowed: the squeeze-excitation gate
  ``x (B, C, H, W) * g (B, C, 1, 1)``):

  * the uniform rule (AttnLRP, Achtibat et al., ICML 2024): ``R_a = R_b = R / 2``, each summed back to its
    operand's shape over the axes it was broadcast along. Conservative: ``sum R_a + sum R_b = sum R``;
  * "signal takes all" for a gate (the gate acts as a constant weight; Arras et al., 2017): the non-gate operand
    takes ``R`` (summed over its broadcast axes), the gate none. Conservative.

- ``y = scale * x + shift`` with ``scale``, ``shift`` constants or parameters (layer scale, stochastic depth's
  per-sample factor, GoogLeNet's ``transform_input``): a diagonal linear map under the epsilon rule,

      R_x = x * scale * R / stab(y) = R * (y - shift) / stab(y),

  with ``shift`` detached like a bias and ``scale`` live (a layer-scale parameter trains through the heatmap).
  With ``shift = 0`` it passes ``R`` unchanged up to the stabiliser.

Relevance is (B, M, ...), activations (B, ...); the factors the rules multiply ``R`` by are formed at the
activation's size and broadcast over M.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import InputError
from .stabilize import stabilize

__all__ = ["reference_affine_constant", "reference_product_gate", "reference_product_uniform"]


def _check_map(R: Tensor, y: Tensor) -> None:
    if R.dim() != y.dim() + 1 or R.shape[0] != y.shape[0] or R.shape[2:] != y.shape[1:]:
        raise InputError(f"relevance must be (B, M, *y.shape[1:]) for an output of shape {tuple(y.shape)}, "
                         f"got {tuple(R.shape)}")


def _sum_to_operand(R: Tensor, operand: Tensor, y: Tensor, name: str) -> Tensor:
    """Sum a map tensor (B, M, *y.shape[1:]) over the axes ``operand`` (B, ...) was broadcast along."""
    if operand.dim() != y.dim() or operand.shape[0] != y.shape[0]:
        raise InputError(f"operand {name} of shape {tuple(operand.shape)} must be an activation with the output's "
                         f"batch axis ({y.shape[0]}) and rank ({y.dim()}); a constant or a parameter factor is "
                         "a scaling, reference_affine_constant")
    target = (R.shape[0], R.shape[1], *operand.shape[1:])
    return R if tuple(R.shape) == target else R.sum_to_size(target)


def reference_product_uniform(R: Tensor, a: Tensor, b: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Uniform rule for ``y = a * b``: ``R_a = R_b = R / 2``, summed to each operand's shape.

    ``R`` (B, M, *y.shape[1:]); ``a``, ``b`` (B, ...) broadcastable to ``y``. The rule does not depend on the
    values (its gradient reaches only ``R``); ``a``, ``b`` and ``y`` give the shapes.
    """
    _check_map(R, y)
    half = R / 2
    return _sum_to_operand(half, a, y, "a"), _sum_to_operand(half, b, y, "b")


def reference_product_gate(R: Tensor, a: Tensor, b: Tensor, y: Tensor,
                           gate_index: int) -> tuple[Tensor | None, Tensor | None]:
    """The signal-takes-all rule for ``y = a * b`` with the operand ``gate_index`` (0: ``a``, 1: ``b``) a gate: the
    other operand takes all of ``R`` (summed over its broadcast axes), the gate gets None (no relevance)."""
    if gate_index not in (0, 1):
        raise InputError(f"gate_index must be 0 (a is the gate) or 1 (b is the gate), got {gate_index!r}")
    _check_map(R, y)
    if gate_index == 1:
        return _sum_to_operand(R, a, y, "a"), None
    return None, _sum_to_operand(R, b, y, "b")


def reference_affine_constant(R: Tensor, x: Tensor, y: Tensor | None, scale: Tensor | float | None,
                              shift: Tensor | float | None, eps: float = 1e-2) -> Tensor:
    """Epsilon rule through ``y = scale * x + shift``: ``R_x = x * scale * R / stab(y)``.

    Parameters
    ----------
    R : (B, M, *y.shape[1:]) relevance at the output.
    x : (B, ...) the input activation.
    y : the output, its gradient the caller's (the forward pass's ``y``); None: rebuilt as
        ``scale * x + shift.detach()``.
    scale : a number, or a tensor broadcastable against ``x`` from the right (``(C, 1, 1)`` layer scale,
        ``(C,)`` channels-last, ``(B, 1, 1, 1)`` per sample), kept live; None means 1.
    shift : likewise, detached; None means 0. Only used when ``y`` is None.
    """
    if y is None:
        y = x if scale is None else x * scale
        if shift is not None:
            y = y + (shift.detach() if isinstance(shift, Tensor) else shift)
    _check_map(R, y)
    factor = x if scale is None else x * scale
    factor = factor / stabilize(y, eps)  # activation-sized, of y's shape
    return _sum_to_operand(R * factor.unsqueeze(1), x, y, "x")
