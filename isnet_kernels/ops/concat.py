"""Concatenation split (DenseNet): the relevance of ``torch.cat(parts, dim)`` is cut back into the parts."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def reference_concat_split(R: Tensor, sizes: Sequence[int], dim: int) -> tuple[Tensor, ...]:
    """Split ``R`` (B, M, ...) along the concatenated axis ``dim`` of the activations (B, ...).

    ``dim`` counts in the activation's axes; the map axis M sits after the batch, so non-negative dims shift by 1.
    """
    return R.split(list(sizes), dim=dim + 1 if dim >= 0 else dim)
