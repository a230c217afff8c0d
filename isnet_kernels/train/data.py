"""Opening the splits of a data set (a masked image folder or a manifest) for a run, with errors that say which flag
fixes them, and the mask check that keeps a run from training on masks that cannot penalise anything."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..data import DataError
from ..data.manifest import dataset_splits, is_manifest, open_dataset
from ..data.masks import MaskConvention, MaskReport, check_masks
from .errors import TrainError


def dataset_task(dataset) -> str:
    """``"multilabel"`` for a multi-label manifest (a ``labels`` column), else ``"multiclass"``."""
    return "multilabel" if getattr(dataset, "multilabel", False) else "multiclass"


def check_task(dataset, task: str | None, root: str | Path, given: str = "--task") -> str:
    """The task of ``dataset`` (:func:`dataset_task`); a ``task`` that differs is a :class:`TrainError` naming
    ``given`` (where the task came from: ``--task`` or the run that was trained)."""
    found = dataset_task(dataset)
    if task is None or task == found:
        return found
    if found == "multilabel":
        raise TrainError(f"{root} is a multi-label manifest (a labels column, classes separated by ;) but {given} is "
                         f"{task!r}; pass --task multilabel, or leave --task out (it is found from the data)",
                         param="task")
    raise TrainError(f"{root} has one class per image (a label column or class folders) but {given} is {task!r}; "
                     "multi-label data is a manifest with a labels column (classes separated by ;), or leave --task "
                     "out (it is found from the data)", param="task")


def open_split(root: str | Path, split: str, *, size: int | None = None, channels: int | None = None,
               flag: str | None = None, mask_convention: MaskConvention | None = None,
               classes: Sequence[str] | None = None, task: str | None = None, task_source: str = "--task"):
    """Split ``split`` of the folder or manifest ``root`` (:func:`~isnet_kernels.data.manifest.open_dataset`); a
    missing split names ``flag`` as the fix. ``classes``: the classes the model knows (a label outside them is an
    error). ``task``: the task the run expects (None: either); a data set of the other task is an error naming
    ``task_source`` (:func:`check_task`)."""
    if not root:
        raise TrainError("no data set given; pass --data ROOT (a folder with images/<split>/<class>/*.png and "
                         "masks/..., or a manifest FILE.csv), e.g. one written by: isnet data biased-digits ROOT")
    available = dataset_splits(root)  # DataError when ROOT, ROOT/images or the manifest is missing
    if split not in available:
        hint = f" or choose another with {flag}" if flag else ""
        where = "rows with that split" if is_manifest(root) else f"the folder {Path(root) / 'images' / split}"
        raise TrainError(f"data set {root} has no split {split!r} (its splits: {available or 'none'}); add "
                         f"{where}{hint}")
    dataset = open_dataset(root, split, size=size, channels=channels, mask_convention=mask_convention,
                           classes=classes)
    check_task(dataset, task, root, task_source)
    return dataset


def check_split_masks(dataset, max_share: float, *, refuse: bool = True,
                      log: Callable[[str], None] | None = None, progress: bool = False) -> MaskReport | None:
    """Report the share of all-foreground and all-background masks of ``dataset`` (``log``) and, with ``refuse``,
    raise :class:`~isnet_kernels.data.DataError` above ``max_share`` (:func:`~isnet_kernels.data.masks.check_masks`).
    ``max_share`` 1 reads no masks."""
    if max_share >= 1:
        return None
    return check_masks(dataset, max_share if refuse else 1.0, progress=progress, log=log)


def dataset_groups(dataset) -> list[str | None] | None:
    """The group of each item: a manifest's ``group`` column, or the ``group`` column of a folder's
    ``artefacts.csv`` (the biased-scenes writer's); None when the data set has no groups."""
    groups = getattr(dataset, "groups", None)
    if groups is not None:
        return list(groups) if any(g is not None for g in groups) else None
    table = Path(getattr(dataset, "root", "")) / "artefacts.csv"
    if not table.is_file():
        return None
    try:
        with open(table, newline="") as f:
            rows = {(r.get("split"), r.get("path")): r.get("group") for r in csv.DictReader(f)}
    except (OSError, csv.Error):
        return None
    base = Path(dataset.root, "images")
    out = []
    for image, *_ in dataset.samples:
        rel = Path(os.path.relpath(image, base)).as_posix()
        out.append(rows.get((dataset.split, rel)) or rows.get((dataset.split, rel.split("/", 1)[-1])))
    return out if any(g for g in out) else None


def check_classes(expected: list[str], found: list[str], where: str) -> None:
    """The class folders of a split must be the ones the model was trained on, in the same order."""
    if list(expected) != list(found):
        raise TrainError(f"{where} has classes {found} but the model was trained on {expected}; the class folders "
                         "of every split must be the same (class i is the i-th folder name in sorted order)")


__all__ = ["DataError", "check_classes", "check_split_masks", "check_task", "dataset_groups", "dataset_task",
           "open_split"]
