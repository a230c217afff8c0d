"""Training augmentation that moves each mask with its image: torchvision's ``transforms.v2`` on ``tv_tensors``.

``--augment standard`` (:func:`standard_transform`): a random resized crop (scale 0.35 to 1 of the area, aspect
ratio 3/4 to 4/3, back to the image's size; the image bilinearly with antialiasing, the mask, a
``tv_tensors.Mask``, by nearest neighbour so it stays binary), a horizontal flip with probability 1/2, and a colour
jitter (brightness, contrast and, for colour images, saturation, each by up to 20%) that ``transforms.v2`` applies
to the image only. ``--augment none`` leaves the images as they are.

The crop resamples the mask at pixel centres (``NEAREST_EXACT``), where the image's bilinear resampling samples:
torchvision's own mask kernel uses ``NEAREST`` (the source pixel at ``floor(x * scale)``), which shifts the mask by
up to half a source pixel towards the top left, most visibly when a crop is enlarged.

Determinism: the random draws of item ``i`` in epoch ``e`` come from a generator seeded with ``(seed, e, i)``
alone (:func:`item_seed`), inside ``torch.random.fork_rng`` so the process's own random state is untouched; the
augmented image is therefore the same whatever the DataLoader workers, the batch or the process, and a resumed
run sees exactly the images an uninterrupted one saw. The trainer calls :meth:`Augmented.set_epoch` before each
epoch.

torchvision is optional: it is imported only when augmentation is asked for; a missing (or broken) one is a
:class:`~isnet_kernels.MissingDependencyError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError, MissingDependencyError

__all__ = ["AUGMENTATIONS", "Augmented", "item_seed", "load_v2", "standard_transform"]

#: Values of ``--augment``.
AUGMENTATIONS = ("none", "standard")


def load_v2() -> tuple[Any, Any]:
    """``(torchvision.transforms.v2, torchvision.tv_tensors)``, or a :class:`MissingDependencyError`."""
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except Exception as exc:  # not installed, or built for another torch (its operators fail to load)
        raise MissingDependencyError(f"--augment standard needs torchvision >= 0.21 (transforms.v2), which cannot "
                                     f"be imported here ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                                     "pip install torchvision matching your torch, or train with --augment none",
                                     param="augment") from None
    if not hasattr(v2.Transform, "make_params"):
        raise MissingDependencyError("--augment standard needs torchvision >= 0.21 (transforms.v2 with "
                                     "Transform.transform); pip install -U torchvision, or train with --augment none",
                                     param="augment")
    return v2, tv_tensors


def _aligned_crop(v2: Any, tv_tensors: Any) -> type:
    """``v2.RandomResizedCrop`` resampling masks at pixel centres (module docstring)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    class AlignedRandomResizedCrop(v2.RandomResizedCrop):
        """RandomResizedCrop whose ``tv_tensors.Mask`` inputs are resampled with ``NEAREST_EXACT``."""

        def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
            if isinstance(inpt, tv_tensors.Mask):
                out = TF.resized_crop(inpt.as_subclass(Tensor), **params, size=list(self.size),
                                      interpolation=InterpolationMode.NEAREST_EXACT, antialias=False)
                return tv_tensors.wrap(out, like=inpt)
            return super().transform(inpt, params)

    return AlignedRandomResizedCrop


def standard_transform(size: tuple[int, int], channels: int) -> Any:
    """The ``standard`` pipeline (module docstring) for images of ``size`` (H, W) with ``channels`` channels."""
    v2, tv_tensors = load_v2()
    jitter = {"brightness": 0.2, "contrast": 0.2, **({"saturation": 0.2} if channels == 3 else {})}
    return v2.Compose([
        _aligned_crop(v2, tv_tensors)(size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ColorJitter(**jitter),
    ])


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index``'s draws in ``epoch`` of a run seeded with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0]
               % (2 ** 63))


class Augmented(Dataset):
    """``dataset`` (items ``(image, mask, label)``) with ``kind`` augmentation, deterministic per (seed, epoch,
    item) (module docstring). Other attributes (``classes``, ``samples``, ...) are the wrapped data set's."""

    def __init__(self, dataset: Dataset, kind: str = "standard", *, seed: int = 0) -> None:
        if kind not in AUGMENTATIONS:
            raise InputError(f"augment must be one of {AUGMENTATIONS}, got {kind!r}", param="augment")
        self.dataset = dataset
        self.kind = kind
        self.seed = int(seed)
        self.epoch = 0
        self._transforms: dict[tuple[tuple[int, int], int], Any] = {}
        if kind != "none":
            load_v2()  # fail now, not in the first batch

    def __getattr__(self, name: str) -> Any:
        dataset = self.__dict__.get("dataset")
        if dataset is None:  # while unpickling (a DataLoader worker): the attribute is missing
            return object.__getattribute__(self, name)
        return getattr(dataset, name)

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s augmentations from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def transform(self, image: Tensor, mask: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """``image`` (C, H, W) and ``mask`` (1, H, W) augmented with the draws of ``seed``."""
        if self.kind == "none":
            return image, mask
        _, tv_tensors = load_v2()
        key = (tuple(image.shape[-2:]), int(image.shape[0]))
        if key not in self._transforms:
            self._transforms[key] = standard_transform(key[0], key[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out_image, out_mask = self._transforms[key](tv_tensors.Image(image), tv_tensors.Mask(mask))
        return out_image.as_subclass(Tensor).contiguous(), out_mask.as_subclass(Tensor).contiguous()

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Any]:
        image, mask, label = self.dataset[index]
        image, mask = self.transform(image, mask, item_seed(self.seed, self.epoch, index))
        return image, mask, label
