"""Per-epoch metrics: accuracy (exact match for multi-label data), the loss and its parts, the background-relevance
fraction and the validation scores of :mod:`.scores` (balanced accuracy, macro F1, one-vs-rest AUROC, worst-group
accuracy, mAP); the files they go to.

Background-relevance fraction of one image, for a heatmap ``H`` (C, h, w) and its foreground mask resized to
(h, w) as the heatmap loss resizes it (adaptive average pooling, then ``!= 0``;
:func:`isnet_kernels.isnet.loss.prepare_mask`)::

    fraction = sum(|H| * (1 - mask)) / sum(|H|)

the share of the absolute relevance that lies outside the foreground (0 = all inside; a map that is zero
everywhere counts 0). An epoch reports the mean over images. In evaluation (:mod:`.evaluate`) ``H`` is always the
same heatmap for every variant, the plain classifier included, so that runs compare: the LRP heatmap of the
predicted class (argmax logit) with the logit rule, epsilon in the hidden layers and the run's first-layer rule
and eps, the model in eval mode (:func:`isnet_kernels.explain`).

Sums are kept as tensors on the device during an epoch (no host synchronisation per step) and, under
``torch.distributed``, summed over the processes before they are read.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..isnet.loss import prepare_mask
from .files import write_atomic
from .scores import SCORE_NAMES

#: Loss parts of a training step: the total, cross-entropy, heatmap loss (the RRR penalty for variant "rrr"),
#: background and foreground terms.
LOSS_PARTS = ("loss", "classification", "heatmap", "background", "foreground")
#: Columns of ``metrics.csv``: one row per epoch.
COLUMNS = ("epoch", "lr", *(f"train_{p}" for p in LOSS_PARTS), "train_accuracy", "val_loss", "val_accuracy",
           "val_background_fraction", *(f"val_{s}" for s in SCORE_NAMES), "seconds")


def background_fraction(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Per image, the share of ``|heatmaps|`` outside the foreground mask (module docstring), shape (B,).

    ``heatmaps`` (B, C, h, w) or (B, M, C, h, w) (all M maps of an image together); ``masks`` (B, 1, H, W) or
    (B, H, W), 1 = foreground, resized to (h, w) as the heatmap loss resizes it.
    """
    if heatmaps.dim() == 4:
        heatmaps = heatmaps.unsqueeze(1)
    if heatmaps.dim() != 5:
        raise InputError(f"heatmaps must have shape (B, C, H, W) or (B, M, C, H, W), got {tuple(heatmaps.shape)}")
    B = heatmaps.shape[0]
    mask = prepare_mask(masks, B, tuple(heatmaps.shape[-2:]), heatmaps.dtype, heatmaps.device)  # (B, 1, 1, h, w)
    absH = heatmaps.detach().abs()
    total = absH.sum((1, 2, 3, 4))
    outside = (absH * (1 - mask)).sum((1, 2, 3, 4))
    return torch.where(total > 0, outside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def correct(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of images whose argmax logit is the label (a 0-d tensor, no host synchronisation); for multi-label
    targets (B, K), of images whose every label is right (exact match: a label is predicted present where its logit
    is positive, its sigmoid above 0.5)."""
    if labels.dim() == 2:
        return ((logits.detach() > 0) == (labels > 0.5)).all(1).sum()
    return (logits.detach().argmax(-1) == labels).sum()


class Meter:
    """Running sums of named quantities over the images of an epoch, kept as one float64 tensor on the device.

    ``add(name, value, count)`` adds ``value`` (a batch mean, weighted by ``count`` images, or a sum with
    ``count=None``); ``counts`` are kept per name. :meth:`means` gives ``sum / count`` per name.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device | str = "cpu"):
        self.names = tuple(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.counts = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, name: str, value: Tensor | float, count: int | Tensor) -> None:
        """Add a batch mean ``value`` over ``count`` images."""
        i = self.index[name]
        v = value.detach().to(self.sums) if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64)
        self.sums[i] += v.to(self.sums.device) * count
        self.counts[i] += count

    def add_sum(self, name: str, total: Tensor | float, count: int | Tensor) -> None:
        """Add a sum ``total`` over ``count`` images."""
        i = self.index[name]
        t = total.detach().to(self.sums) if isinstance(total, Tensor) else torch.tensor(total, dtype=torch.float64)
        self.sums[i] += t.to(self.sums.device)
        self.counts[i] += count

    def all_reduce(self) -> None:
        """Sum over the processes of ``torch.distributed`` (a no-op without a process group)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.stack([self.sums, self.counts])
            torch.distributed.all_reduce(both)
            self.sums, self.counts = both[0].clone(), both[1].clone()

    def means(self) -> dict[str, float]:
        """``sum / count`` per name (NaN for a name with no images); one host synchronisation."""
        sums, counts = self.sums.tolist(), self.counts.tolist()
        return {n: (s / c if c > 0 else math.nan) for n, s, c in zip(self.names, sums, counts)}

    def state_dict(self) -> dict[str, Any]:
        """Copies of the sums on their device (no host synchronisation; a checkpoint moves them to the CPU)."""
        return {"names": list(self.names), "sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["names"]) != self.names:
            raise InputError(f"meter names differ: {state['names']} vs {list(self.names)}")
        self.sums = state["sums"].to(self.sums)
        self.counts = state["counts"].to(self.counts)


def _clean(value: Any) -> Any:
    """NaN and infinities as None in JSON (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(history: list[dict[str, Any]], run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the per-epoch rows to ``run_dir/metrics.csv`` (columns :data:`COLUMNS`) and ``metrics.json``, each
    atomically (:func:`.files.write_atomic`)."""
    run = Path(run_dir)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    rows = json.dumps([{k: _clean(v) for k, v in row.items()} for row in history], indent=2) + "\n"
    return (write_atomic(run / "metrics.csv", text.getvalue(), what="metrics"),
            write_atomic(run / "metrics.json", rows, what="metrics"))
