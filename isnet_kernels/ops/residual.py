"""Residual-add split (ISNET.md §2): for ``y = x + f``, ``T = R / stab(y)``, ``R_x = x * T``, ``R_f = f * T``.

``y`` is the forward output of the addition, read, never recomputed. Both parts are propagated on and summed
where the branches meet again.
"""

from __future__ import annotations

from torch import Tensor

from .stabilize import stabilize


def reference_residual_split(R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float = 1e-2) -> tuple[Tensor, Tensor]:
    """Split ``R`` (B, M, ...) between the summands ``x`` and ``f`` (B, ...) of ``y = x + f``."""
    T = R / stabilize(y, eps).unsqueeze(1)
    return x.unsqueeze(1) * T, f.unsqueeze(1) * T
