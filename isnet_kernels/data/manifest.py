"""A data set listed in a CSV file (a manifest): images anywhere, masks or boxes, splits and groups as columns.

Columns (a header row names them; other columns are kept but not read)::

    image    path of the image file                                        required
    label    its class (a name or a number)                               required (or labels)
    labels   several classes separated by ';' (multi-label)               instead of label
    mask     path of its mask file (read under the mask convention, see :mod:`.masks`)
    box      x0 y0 x1 y1 in pixels of the image file (x to the right, y down; "0 0 2 2" covers 2 x 2 pixels);
             several boxes separated by ';'; rasterised to a mask (a pixel is foreground when its centre lies in a
             box, borders included)
    split    train, val, test, ... (without the column every row is in split "all")
    group    a group name (e.g. Waterbirds' "waterbird_on_land"), for worst-group accuracy

Paths are relative to the CSV file's folder (or absolute). A row needs a mask or a box (with both, the mask is
used). Classes are the sorted distinct labels of all rows (numerically when every label is an integer), so class
``i`` is the same in every split; a model trained on other classes (``classes=``) makes a label outside them an
error. Every error about a row names the CSV file, the line and the column.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import DataError
from .folder import MaskedImageFolder, _channels_of_mode, _normalise_size, splits
from .masks import MaskConvention

__all__ = ["NO_SPLIT", "ManifestDataset", "ManifestRow", "dataset_splits", "is_manifest", "open_dataset",
           "parse_boxes", "rasterise_boxes", "read_manifest"]

#: The split of every row of a manifest without a ``split`` column.
NO_SPLIT = "all"
#: A box may reach this many pixels past the image's border (rounding in the tools that write boxes); it is clipped.
BOX_TOLERANCE = 1.0

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest, its paths resolved."""

    line: int
    image: str
    labels: tuple[str, ...]
    mask: str | None
    boxes: tuple[Box, ...]
    split: str
    group: str | None


def is_manifest(data: str | os.PathLike[str]) -> bool:
    """Whether ``--data`` names a manifest (a ``.csv`` file) rather than a masked image folder."""
    return str(data).lower().endswith(".csv")


def parse_boxes(text: str, where: str) -> tuple[Box, ...]:
    """``"x0 y0 x1 y1; x0 y0 x1 y1"`` as boxes; ``where`` (file, line, column) starts the message of a bad one."""
    boxes = []
    for part in text.split(";"):
        if not part.strip():
            continue
        fields = part.replace(",", " ").split()
        try:
            numbers = [float(f) for f in fields]
        except ValueError:
            numbers = []
        if len(numbers) != 4 or not all(math.isfinite(n) for n in numbers):
            raise DataError(f"{where}: {part.strip()!r} is not a box: expected x0 y0 x1 y1 (four numbers, in pixels; "
                            "several boxes separated by ;)")
        x0, y0, x1, y1 = numbers
        if not (x0 < x1 and y0 < y1):
            raise DataError(f"{where}: box {part.strip()!r} is empty or reversed: expected x0 y0 x1 y1 with x0 < x1 "
                            "and y0 < y1 (corners, not x y width height)")
        if x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE:
            raise DataError(f"{where}: box {part.strip()!r} lies outside the image (negative coordinates): boxes are "
                            "x0 y0 x1 y1 in pixels of the image file")
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


def rasterise_boxes(boxes: Sequence[Box], height: int, width: int) -> np.ndarray:
    """A bool (H, W) mask: a pixel is foreground when its centre lies in one of ``boxes``, borders included (at
    least the pixel holding a box's centre, for boxes smaller than a pixel)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = max(math.ceil(x0 - 0.5), 0), min(math.floor(x1 - 0.5), width - 1)
        r0, r1 = max(math.ceil(y0 - 0.5), 0), min(math.floor(y1 - 0.5), height - 1)
        if c1 < c0:
            c0 = c1 = min(max(int((x0 + x1) / 2), 0), width - 1)
        if r1 < r0:
            r0 = r1 = min(max(int((y0 + y1) / 2), 0), height - 1)
        mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask


def _sort_classes(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def read_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> tuple[list[ManifestRow], bool]:
    """The rows of a manifest and whether it is multi-label (a ``labels`` column). Raises :class:`DataError` for a
    missing file, a missing column, or a row with an empty image or label, a missing file (``check_files``) or a
    malformed box, naming the line and the column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; write a CSV file with the columns image, label and mask "
                        "or box (isnet data import ... writes one), or pass a data set folder as --data")
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            raw = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from exc
    if "image" not in columns:
        raise DataError(f"manifest {path} has no column 'image' (its columns: {columns or 'none'}); the header row "
                        "must name the columns image, label (or labels), and mask or box")
    if ("label" in columns) == ("labels" in columns):
        raise DataError(f"manifest {path} needs exactly one of the columns 'label' (one class per image) and "
                        f"'labels' (several, separated by ;); its columns: {columns}")
    multilabel = "labels" in columns
    rows = []
    for line, row in raw:
        cells = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        cell = cells.get

        def where(column: str, line: int = line) -> str:
            return f"{path}, line {line}, column {column}"

        image = cell("image", "")
        if not image:
            raise DataError(f"{where('image')}: empty; every row names an image file")
        image_path = os.path.normpath(base / image)
        if check_files and not os.path.isfile(image_path):
            raise DataError(f"{where('image')}: image file {image_path} does not exist (paths are relative to the "
                            f"manifest's folder {base})")
        label_text = cell("labels" if multilabel else "label", "")
        labels = tuple(v.strip() for v in label_text.split(";") if v.strip()) if multilabel else \
            ((label_text,) if label_text else ())
        if not labels and not multilabel:
            raise DataError(f"{where('label')}: empty; every row needs its class")
        mask = cell("mask") or None
        mask_path = os.path.normpath(base / mask) if mask else None
        if mask_path and check_files and not os.path.isfile(mask_path):
            raise DataError(f"{where('mask')}: mask file {mask_path} does not exist (paths are relative to the "
                            f"manifest's folder {base})")
        boxes = parse_boxes(cells["box"], where("box")) if cell("box") else ()
        rows.append(ManifestRow(line, image_path, labels, mask_path, boxes, cell("split") or NO_SPLIT,
                                cell("group") or None))
    if not rows:
        raise DataError(f"manifest {path} has no rows; add one per image below the header")
    return rows, multilabel


def dataset_splits(data: str | os.PathLike[str]) -> list[str]:
    """The splits of a data set: a manifest's ``split`` values, or a folder's split folders (:func:`~.splits`)."""
    if is_manifest(data):
        return sorted({r.split for r in read_manifest(data, check_files=False)[0]})
    return splits(data)


class ManifestDataset(MaskedImageFolder):
    """One split of a manifest (module docstring) as a Dataset of ``(image, mask, label)``, like
    :class:`~.folder.MaskedImageFolder` (the same ``size``, ``channels``, ``mask_convention`` and checks).

    For a multi-label manifest the label is a float tensor (K,) of 0 and 1. ``classes`` fixes the class list (a
    trained model's): a label outside it is an error. Attributes as the folder's, plus ``manifest`` (the CSV
    file), ``rows`` (:class:`ManifestRow` per item), ``groups`` (the group per item, or None), ``group_names``
    (sorted) and ``multilabel``.
    """

    def __init__(self, manifest: str | os.PathLike[str], split: str, *, size: int | Sequence[int] | None = None,
                 channels: int | None = None, masks: bool = True, mask_convention: MaskConvention | None = None,
                 classes: Sequence[str] | None = None) -> None:
        from ..errors import InputError

        if channels not in (None, 1, 3):
            raise InputError(f"channels must be None, 1 or 3, got {channels!r}", param="channels")
        self.manifest = Path(manifest)
        self.root = self.manifest.parent
        self.split = str(split)
        self.size = _normalise_size(size)
        self.channels = channels
        self.masks = bool(masks)
        self.mask_convention = mask_convention or MaskConvention()
        all_rows, self.multilabel = read_manifest(self.manifest)
        names = sorted({r.split for r in all_rows})
        self.rows = [r for r in all_rows if r.split == self.split]
        if not self.rows:
            raise DataError(f"manifest {self.manifest} has no rows of split {self.split!r}; its splits: "
                            f"{', '.join(names)}")
        found = _sort_classes({label for r in all_rows for label in r.labels})
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        column = "labels" if self.multilabel else "label"
        for r in self.rows:
            unknown = [label for label in r.labels if label not in self.class_to_idx]
            if unknown:
                raise DataError(f"{self.manifest}, line {r.line}, column {column}: unknown label {unknown[0]!r}; the "
                                f"classes are {', '.join(self.classes)}")
            if self.masks and r.mask is None and not r.boxes:
                raise DataError(f"{self.manifest}, line {r.line}, columns mask and box: neither given; every image "
                                "needs its foreground, as a mask file or boxes x0 y0 x1 y1")
        self.samples = [(r.image, (r.mask or "") if self.masks else None,
                         self.class_to_idx[r.labels[0]] if r.labels else -1) for r in self.rows]
        self.targets = [s[2] for s in self.samples]
        self.groups: list[str | None] = [r.group for r in self.rows]
        self.group_names = sorted({g for g in self.groups if g is not None})
        self._reference = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(manifest={str(self.manifest)!r}, split={self.split!r}, {len(self)} images, "
                f"{len(self.classes)} classes, size={self.size}, channels={self.channels})")

    def _reference_image(self) -> tuple[str, tuple[int, int], int]:
        if self._reference is None:
            path = self.samples[0][0]
            try:
                with Image.open(path) as im:
                    self._reference = (path, (im.height, im.width), _channels_of_mode(im.mode))
            except Exception as exc:
                raise DataError(f"cannot read image file {path}: {exc}; replace or delete the file") from exc
        return self._reference

    def _box_mask(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        row = self.rows[index]
        height, width = hw
        for box in row.boxes:
            if box[2] > width + BOX_TOLERANCE or box[3] > height + BOX_TOLERANCE:
                raise DataError(f"{self.manifest}, line {row.line}, column box: box {' '.join(f'{v:g}' for v in box)} "
                                f"lies outside the image {row.image} ({width} x {height} pixels): boxes are x0 y0 x1 "
                                "y1 in pixels of the image file")
        return rasterise_boxes(row.boxes, height, width)

    def _mask_for(self, index: int, image_hw: tuple[int, int]) -> np.ndarray:
        if self.rows[index].mask is not None:
            return super()._mask_for(index, image_hw)
        return self._box_mask(index, image_hw)

    def read_mask(self, index: int, values: bool = True) -> tuple[np.ndarray, np.ndarray | None, str]:
        row = self.rows[index]
        if row.mask is not None:
            return super().read_mask(index, values)
        try:
            with Image.open(row.image) as im:
                hw = (im.height, im.width)
        except Exception as exc:
            raise DataError(f"cannot read image file {row.image}: {exc}; replace or delete the file") from exc
        mask = self._box_mask(index, hw)
        return mask, (np.array([0, 1]) if values else None), f"{row.image} (boxes, line {row.line})"

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int | Tensor] | tuple[Tensor, int | Tensor]:
        item = super().__getitem__(index)
        if not self.multilabel:
            return item
        target = torch.zeros(len(self.classes))
        target[[self.class_to_idx[label] for label in self.rows[index].labels]] = 1.0
        return (*item[:-1], target)


def open_dataset(data: str | os.PathLike[str], split: str, *, size: int | Sequence[int] | None = None,
                 channels: int | None = None, mask_convention: MaskConvention | None = None,
                 classes: Sequence[str] | None = None) -> MaskedImageFolder:
    """Split ``split`` of a manifest (``.csv``) or of a masked image folder, read under ``mask_convention``."""
    if is_manifest(data):
        return ManifestDataset(data, split, size=size, channels=channels, mask_convention=mask_convention,
                               classes=classes)
    return MaskedImageFolder(data, split, size=size, channels=channels, mask_convention=mask_convention)
