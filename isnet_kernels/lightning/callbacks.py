"""``HeatmapLogger``: what the ISNet looks at during training, in the Trainer's logger.

Every ``every_n_epochs`` validation epochs (after the sanity check; on the main process) it explains a fixed set of
validation images (the first ``count`` of the validation loader's data set, or the ``images``/``masks`` given) with
the evaluation heatmap (the predicted class; :func:`isnet_kernels.train.board.heatmap_grid`) and writes:

- the grid image | mask | heatmap, one row per image (``tag``, default ``"heatmaps"``), to every logger of the
  Trainer that takes images: TensorBoard (``experiment.add_image``) and loggers with a ``log_image(key, images,
  step)`` method (W&B);
- the scalar ``<tag>_background_fraction``, the mean background-relevance fraction of those images, to every
  logger. A logger that cannot take images gets this scalar and one :class:`ImageLoggingWarning`.

The step is ``trainer.global_step``, the step Lightning logs epoch metrics at.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
from torch import Tensor

from ..errors import InputError
from ..train.board import GRID_IMAGES, fixed_items, heatmap_grid


class ImageLoggingWarning(UserWarning):
    """A logger that cannot take images: :class:`HeatmapLogger` writes only its scalar there."""


class HeatmapLogger(pl.Callback):
    """Write a heatmap grid of fixed validation images to the Trainer's loggers (module docstring).

    Parameters
    ----------
    every_n_epochs : write after every N-th validation epoch (1: each).
    count : validation images in the grid (the first ones of the validation data set).
    images, masks : the images (N, C, H, W), as the model takes them, and masks (N, 1, H, W) to use instead.
    tag : the image's name in the logger (its scalar: ``<tag>_background_fraction``).
    """

    def __init__(self, every_n_epochs: int = 1, count: int = GRID_IMAGES, *, images: Tensor | None = None,
                 masks: Tensor | None = None, tag: str = "heatmaps"):
        for name, value in (("every_n_epochs", every_n_epochs), ("count", count)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive int, got {value!r}", param=name)
        if (images is None) != (masks is None):
            raise InputError("pass both images and masks (one mask per image), or neither", param="masks")
        self.every_n_epochs, self.count, self.tag = every_n_epochs, count, tag
        self.images, self.masks = images, masks
        self._warned: set[int] = set()

    def _items(self, trainer: pl.Trainer) -> tuple[Tensor, Tensor] | None:
        if self.images is None:
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
            dataset = getattr(loader, "dataset", None)
            if dataset is None or not len(dataset):
                return None
            self.images, self.masks = fixed_items(dataset, self.count)
        return self.images, self.masks

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        items = self._items(trainer)
        if items is None:
            return
        cfg = getattr(pl_module, "config", None)
        settings = {"eps": cfg.eps, "first_layer": cfg.first_layer, "backend": cfg.backend} if cfg is not None else {}
        model = getattr(pl_module, "model", pl_module)
        grid, fractions = heatmap_grid(model, *items, bounds=getattr(pl_module, "bounds", (0.0, 1.0)), **settings)
        self.write(trainer, grid, float(fractions.mean()))

    def write(self, trainer: pl.Trainer, grid: np.ndarray, fraction: float) -> None:
        """Write ``grid`` and its scalar to each of the Trainer's loggers."""
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({f"{self.tag}_background_fraction": fraction}, step=step)
            if not _log_image(logger, self.tag, grid, step) and id(logger) not in self._warned:
                self._warned.add(id(logger))
                warnings.warn(f"{type(logger).__name__} cannot take images: HeatmapLogger writes only the scalar "
                              f"{self.tag}_background_fraction there; add a TensorBoardLogger (or a WandbLogger) to "
                              "the Trainer's loggers for the heatmap grid", ImageLoggingWarning, stacklevel=2)
            logger.save()


def _log_image(logger: Any, tag: str, grid: np.ndarray, step: int) -> bool:
    """Write an (H, W, 3) uint8 image to ``logger``; False when it takes no images."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, grid, step, dataformats="HWC")
        return True
    log_image = getattr(logger, "log_image", None)
    if callable(log_image):  # WandbLogger.log_image(key, images, step)
        log_image(key=tag, images=[grid], step=step)
        return True
    return False
