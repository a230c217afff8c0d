"""The input preprocessing a model expects: per-channel mean and std, image size and channel count.

Images are read in [0, 1]; a model trained (or pretrained) on normalised inputs sees ``(x - mean) / std`` per
channel. The Z^B rule of the first layer needs the range of those inputs, which follows from the mean and std:
``low = (0 - mean) / std``, ``high = (1 - mean) / std`` per channel (:meth:`Preprocess.bounds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["Preprocess"]


def _floats(name: str, values: Sequence[float] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a sequence of numbers, one per channel, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"{name} must be finite numbers, one per channel, got {values!r}")
    return out


@dataclass(frozen=True)
class Preprocess:
    """What a model's inputs are: ``(image - mean) / std`` per channel, at ``size`` x ``size``, with ``channels``.

    ``mean`` and ``std`` None: no normalisation (inputs in [0, 1]); ``size`` None: images as stored; ``channels``
    None: as stored. ``source`` says where the values came from (weights' metadata, command line), for the log.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: int | None = None
    channels: int | None = None
    source: str = "none"

    def __post_init__(self) -> None:
        mean, std = _floats("mean", self.mean), _floats("std", self.std)
        if (mean is None) != (std is None):
            raise InputError("give both mean and std (one value per channel, or one for all), or neither")
        if std is not None and not all(s > 0 for s in std):
            raise InputError(f"std must be positive, got {std}")
        if mean is not None and len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise InputError(f"mean has {len(mean)} values but std has {len(std)}; give one per channel")
        if self.size is not None and (isinstance(self.size, bool) or int(self.size) != self.size or self.size < 1):
            raise InputError(f"size must be a positive int, got {self.size!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def normalises(self) -> bool:
        """Whether inputs are normalised (mean and std given)."""
        return self.mean is not None

    def _stats(self, channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        n = max(mean.numel(), std.numel())
        if n not in (1, channels):
            raise InputError(f"the preprocessing has {n} channel statistics but the images have {channels} "
                             f"channels; pass --mean/--std with {channels} value(s) or --channels {n}")
        return mean.expand(channels), std.expand(channels)

    def normalize(self, images: Tensor) -> Tensor:
        """``(images - mean) / std`` per channel; images (C, H, W) or (B, C, H, W) in [0, 1]."""
        if not self.normalises:
            return images
        c = images.shape[-3]
        mean, std = self._stats(c, images)
        shape = (-1, 1, 1)
        return (images - mean.reshape(shape)) / std.reshape(shape)

    def bounds(self, channels: int | None = None) -> tuple[float, float] | tuple[Tensor, Tensor]:
        """The range of the model's inputs for the Z^B rule: ``(0.0, 1.0)`` without normalisation, else per channel
        ``((0 - mean) / std, (1 - mean) / std)`` as float64 tensors of shape (C,) (C = ``channels``, or the length
        of the statistics)."""
        if not self.normalises:
            return (0.0, 1.0)
        n = channels or max(len(self.mean), len(self.std))
        mean, std = self._stats(n, torch.empty(0, dtype=torch.float64))
        return ((0 - mean) / std, (1 - mean) / std)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (kept in checkpoints)."""
        out = asdict(self)
        out["mean"] = list(self.mean) if self.mean is not None else None
        out["std"] = list(self.std) if self.std is not None else None
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Preprocess:
        """The inverse of :meth:`to_dict` (None: no preprocessing)."""
        return cls(**values) if values else cls()

    def describe(self) -> str:
        """One line for the training log."""
        parts = []
        if self.normalises:
            parts.append(f"mean {list(self.mean)}, std {list(self.std)}")
        else:
            parts.append("no normalisation (inputs in [0, 1])")
        if self.size is not None:
            parts.append(f"size {self.size}x{self.size}")
        if self.channels is not None:
            parts.append(f"{self.channels} channel(s)")
        return ", ".join(parts) + f" ({self.source})"
