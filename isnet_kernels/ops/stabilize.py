"""The LRP stabiliser ``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1`` (docs/rules.md#the-stabiliser)."""

from __future__ import annotations

import torch
from torch import Tensor


def stabilize(z: Tensor, eps: float | Tensor) -> Tensor:
    """Return ``z + eps * sign(z)`` where ``sign(0)`` counts as ``+1``, so the result is never 0 for ``eps > 0``.

    The sign is piecewise constant, so ``d stab(z) / dz = 1`` almost everywhere.
    """
    return torch.where(z >= 0, z + eps, z - eps)
