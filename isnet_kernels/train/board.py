"""TensorBoard event files of a run (``isnet train --tensorboard``), and the heatmap grid that training loggers show.

Per epoch, into ``RUN_DIR/tensorboard/`` (``tensorboard --logdir RUN_DIR``), with the epoch as the step:

- every number of the epoch's row of ``metrics.csv`` (:data:`~.metrics.COLUMNS`: ``lr``, ``train_loss``, ...,
  ``val_accuracy``, ``val_background_fraction``, the validation scores, ``seconds``), under the column's name; a
  value the row leaves empty (None: a score that could not be computed) or not finite (NaN: no validation split)
  is not written;
- ``heatmaps``: a grid of the first :data:`GRID_IMAGES` validation images, one row each: image | mask | LRP heatmap
  of the predicted class, the heatmap of the evaluation (:mod:`.evaluate`: logit rule, epsilon, the run's
  first-layer rule and eps, the model in eval mode; :func:`heatmap_grid`). Not written without a validation split,
  nor for a model the LRP engine cannot explain.

Only the main process writes. A resumed run appends to the same folder (a new event file; TensorBoard reads them
together) from the epoch it continues with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..lrp import explain
from ..models import MissingExtraError
from ..plot import heatmap_grid_array
from .errors import TrainError
from .metrics import background_fraction

#: The folder of the run directory that holds the event files.
BOARD_DIR = "tensorboard"
#: Validation images of the per-epoch heatmap grid (the first ones of the split, the same every epoch).
GRID_IMAGES = 8
#: The tag of the heatmap grid.
GRID_TAG = "heatmaps"


def summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, or :class:`~isnet_kernels.models.MissingExtraError` naming what
    to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingExtraError(f"--tensorboard needs the package tensorboard, which is not installed ({exc}); "
                                "install it with: pip install 'isnet-kernels[tensorboard]', or train without "
                                "--tensorboard (metrics.csv holds the same numbers)") from None
    return SummaryWriter


def fixed_items(dataset: Any, count: int = GRID_IMAGES) -> tuple[Tensor, Tensor]:
    """The images (N, C, H, W) and masks (N, 1, H, W) of the first ``count`` items of a masked image data set."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([torch.as_tensor(item[0]) for item in items])
    masks = torch.stack([torch.as_tensor(item[1]).reshape(1, *images.shape[-2:]) for item in items]).float()
    return images, masks


def heatmap_grid(model: nn.Module, images: Tensor, masks: Tensor, *, eps: float = 1e-2, first_layer: str = "zb",
                 bounds: Any = (0.0, 1.0), backend: str | None = None) -> tuple[np.ndarray, Tensor]:
    """The grid a logger shows: image | mask | heatmap per image (:func:`~isnet_kernels.plot.heatmap_grid_array`), the
    heatmap the evaluation computes (the predicted class; logit rule, epsilon, ``first_layer``, in eval mode, no
    graph), on the device of the model's parameters. Returns the (rows, columns, 3) uint8 array and the images'
    background-relevance fractions (N,) (:func:`~.metrics.background_fraction`)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, enabled=False):  # float32, as the evaluation
            heat = explain(model, images.to(device), None, eps=eps, first_layer=first_layer, bounds=bounds,
                           backend=backend)
    finally:
        model.train(was_training)
    heat = heat.detach().float().cpu()
    return heatmap_grid_array(images.cpu(), heat, masks.cpu()), background_fraction(heat, masks.cpu())


class Board:
    """A run's TensorBoard writer (module docstring).

    ``images``/``masks``: the fixed validation items of the heatmap grid (None: no grid); ``explain_settings``:
    :func:`heatmap_grid`'s keyword arguments.
    """

    def __init__(self, run_dir: str | Path, *, images: Tensor | None = None, masks: Tensor | None = None,
                 explain_settings: dict[str, Any] | None = None):
        writer = summary_writer()
        self.path = Path(run_dir) / BOARD_DIR
        try:
            self.writer = writer(log_dir=str(self.path))
        except OSError as exc:
            raise TrainError(f"cannot write TensorBoard events into {self.path}: {exc}; make the run directory "
                             "writable, or train without --tensorboard") from exc
        self.images, self.masks = images, masks
        self.explain_settings = dict(explain_settings or {})

    def write_epoch(self, row: dict[str, Any], model: nn.Module) -> None:
        """The scalars of a ``metrics.csv`` row and the heatmap grid of ``model``, at step ``row["epoch"]``."""
        step = int(row["epoch"])
        for name, value in row.items():
            if name == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(name, float(value), step)
        if self.images is not None:
            grid, _ = heatmap_grid(model, self.images, self.masks, **self.explain_settings)
            self.writer.add_image(GRID_TAG, grid, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Write what is pending and close the event file."""
        self.writer.close()


def open_board(trainer: Any, log: Callable[[str], None] | None = None) -> Board:
    """The :class:`Board` of a :class:`~.trainer.Trainer` that has prepared its run: its run directory, its first
    validation images (none without a validation split or for a model the LRP engine cannot explain), its
    evaluation heatmap settings."""
    cfg = trainer.config
    images = masks = None
    if trainer.val_set is not None and len(trainer.val_set) and trainer.heatmap_note is None:
        images, masks = fixed_items(trainer.val_set)
    elif log is not None:
        log("TensorBoard: no heatmap grid (" + ("no validation split" if trainer.val_set is None else
                                               "the model has layers without relevance rules") + ")")
    settings = {"eps": cfg.eps, "first_layer": cfg.first_layer, "bounds": trainer.bounds, "backend": cfg.backend}
    return Board(trainer.run_dir, images=images, masks=masks, explain_settings=settings)
