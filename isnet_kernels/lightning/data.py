"""``MaskedImageDataModule``: the splits of one of the package's data sets (a masked image folder or a manifest CSV)
as Lightning loaders, opened, checked, augmented, normalised and ordered as ``isnet train`` does it.

- Opening: :func:`~isnet_kernels.train.data.open_split` (a missing split names the option that fixes it; the classes
  are the training split's, and every other split must have them), the mask check of the trainer
  (:func:`~isnet_kernels.train.data.check_split_masks`: a split whose masks are mostly all foreground or all
  background is refused; ``mask_check=1`` turns it off).
- Preprocessing: the weights' (``arch``, ``weights``) or ``mean``/``std``/``size``/``channels``
  (:func:`~isnet_kernels.train.backbone.resolve_preprocess`); give :class:`~.module.ISNetModule` the same ones (it
  checks). ``augment="standard"``: the trainer's augmentation, drawn per (seed, epoch, image).
- Order: the trainer's :class:`~isnet_kernels.train.EpochSampler` (one permutation per epoch from ``seed``, every
  process taking every W-th index), which Lightning takes as its distributed sampler; validation and test in the
  data set's order, split over the processes without padding.
- ``batch_size`` is the GLOBAL batch, as ``isnet train --batch-size``: with W processes each takes
  ``batch_size / W`` images a step (it must divide), so the same settings give the same steps whatever W.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data.masks import DEFAULT_MAX_SHARE
from ..errors import InputError
from ..models import Preprocess
from ..train import backbone
from ..train.config import TrainConfig
from ..train.data import check_classes, check_split_masks, open_split
from ..train.evaluate import default_eval_splits
from ..train.sampling import EpochSampler, loader_seed


class _Order(EpochSampler, DistributedSampler):
    """The trainer's :class:`~isnet_kernels.train.EpochSampler`, which Lightning takes as a distributed sampler (it
    would wrap any other in its own under DDP). ``set_epoch``, which Lightning calls before each epoch, also moves
    the augmentation to the epoch and reseeds the loader's generator, as the trainer does."""

    def __init__(self, size: int, *, items: Any = None, generator: torch.Generator | None = None, **kwargs: Any):
        EpochSampler.__init__(self, size, **kwargs)  # DistributedSampler's own set-up needs a process group: not run
        self.num_replicas, self.drop_last = self.world_size, False
        self._items, self._generator = items, generator

    def set_epoch(self, epoch: int) -> None:
        EpochSampler.set_epoch(self, epoch)
        if self._items is not None and hasattr(self._items, "set_epoch"):
            self._items.set_epoch(epoch)
        if self._generator is not None:
            self._generator.manual_seed(loader_seed(self.seed, epoch))


class MaskedImageDataModule(pl.LightningDataModule):
    """The train, validation and test splits of ``root`` (module docstring).

    Parameters
    ----------
    root : a masked image folder (``ROOT/images/<split>/<class>/*.png`` with ``ROOT/masks/...``) or a manifest CSV.
    batch_size : the global batch (module docstring).
    arch, weights, model_kwargs, mean, std, size, channels : the preprocessing, as ``isnet train`` resolves it.
    augment : ``"none"`` or ``"standard"``; mask_foreground, mask_threshold, mask_invert : how masks are read;
        mask_check : the largest share of all-foreground or all-background masks a split may have.
    train_split, val_split : split names (``val_split=""``: no validation).
    test_splits : the splits of ``trainer.test`` (default: every ``test*`` split).
    num_workers : DataLoader workers; seed : the data order and the augmentation's draws.

    ``classes``, ``num_classes`` and ``in_channels`` read the training split (on first use): pass them to
    :class:`~.module.ISNetModule`.
    """

    def __init__(self, root: str | os.PathLike[str], batch_size: int = 32, *, arch: str = "small",
                 weights: str | None = None, model_kwargs: dict[str, Any] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, size: int | None = None,
                 channels: int | None = None, augment: str = "none", mask_foreground: str | None = None,
                 mask_threshold: float | None = None, mask_invert: bool = False,
                 mask_check: float = DEFAULT_MAX_SHARE, train_split: str = "train", val_split: str = "val",
                 test_splits: Sequence[str] | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.config = TrainConfig(data=os.fspath(root), batch_size=batch_size, arch=arch, weights=weights,
                                  model_kwargs=dict(model_kwargs or {}), mean=list(mean) if mean else None,
                                  std=list(std) if std else None, size=size, channels=channels, augment=augment,
                                  mask_foreground=mask_foreground, mask_threshold=mask_threshold,
                                  mask_invert=mask_invert, mask_check=mask_check, train_split=train_split,
                                  val_split=val_split, num_workers=num_workers, seed=seed)
        if test_splits is not None and (isinstance(test_splits, str) or not all(test_splits)):
            raise InputError(f"test_splits must be a list of split names, got {test_splits!r}", param="test_splits")
        self._test_splits = list(test_splits) if test_splits is not None else None
        self.preprocess: Preprocess | None = None
        self.train_set: Any = None
        self.val_set: Any = None
        self.test_sets: dict[str, Any] = {}

    # --- the data set -------------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        """The class names, in label order (the training split's class folders, sorted)."""
        self._open_train()
        return list(self.train_set.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        """The channels of the images the model gets (after ``channels`` conversion)."""
        self._open_train()
        return int(self.train_set[0][0].shape[0])

    @property
    def test_splits(self) -> list[str]:
        """The splits ``trainer.test`` evaluates, in order."""
        if self._test_splits is None:
            self._test_splits = default_eval_splits(self.config.data)
        return list(self._test_splits)

    def _open(self, split: str, flag: str, classes: list[str] | None) -> Any:
        cfg, pre = self.config, self.preprocess
        dataset = open_split(cfg.data, split, size=pre.size, channels=pre.channels, flag=flag,
                             mask_convention=cfg.mask_convention, classes=classes)
        if classes is not None:
            check_classes(classes, list(dataset.classes), f"split {split!r} of {cfg.data}")
        check_split_masks(dataset, cfg.mask_check)
        return dataset

    def _open_train(self) -> None:
        if self.train_set is not None:
            return
        cfg = self.config
        if self.preprocess is None:
            self.preprocess = backbone.resolve_preprocess(cfg)
        dataset = self._open(cfg.train_split, "train_split", None)
        if cfg.augment != "none":  # on the images in [0, 1], before the normalisation
            from ..data.augment import Augmented

            dataset = Augmented(dataset, cfg.augment, seed=cfg.seed)
        self.train_set = backbone.wrap(dataset, self.preprocess)

    def setup(self, stage: str | None = None) -> None:
        """Open the splits ``stage`` needs (the training split always: it gives the classes)."""
        self._open_train()
        classes = list(self.train_set.classes)
        cfg = self.config
        if stage in (None, "fit", "validate") and cfg.val_split and self.val_set is None:
            self.val_set = backbone.wrap(self._open(cfg.val_split, "val_split ('' for none)", classes),
                                         self.preprocess)
        if stage in (None, "test"):
            for split in self.test_splits:
                if split not in self.test_sets:
                    self.test_sets[split] = backbone.wrap(self._open(split, "test_splits", classes), self.preprocess)

    # --- loaders ------------------------------------------------------------------------------------------------
    def _processes(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _local_batch(self) -> int:
        world = self._processes()[1]
        if self.config.batch_size % world:
            raise InputError(f"batch_size {self.config.batch_size} is the global batch and must be divisible by the "
                             f"{world} processes; pass a multiple of {world}", param="batch_size")
        return self.config.batch_size // world

    def _loader(self, dataset: Any, *, train: bool) -> DataLoader:
        rank, world = self._processes()
        cfg = self.config
        generator = torch.Generator()
        generator.manual_seed(loader_seed(cfg.seed, 0) if train else 0)
        order = _Order(len(dataset), seed=cfg.seed, rank=rank, world_size=world, shuffle=train, pad=train,
                       items=dataset if train else None, generator=generator if train else None)
        return DataLoader(dataset, batch_size=self._local_batch(), sampler=order, num_workers=cfg.num_workers,
                          generator=generator, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return self._loader(self.val_set, train=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        self.setup("test")
        loaders = [self._loader(self.test_sets[s], train=False) for s in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders
