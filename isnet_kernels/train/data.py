"""Opening the splits of a masked image folder for a run, with errors that say which flag fixes them."""

from __future__ import annotations

from pathlib import Path

from ..data import DataError, MaskedImageFolder, splits
from .errors import TrainError


def open_split(root: str | Path, split: str, *, size: int | None = None, channels: int | None = None,
               flag: str | None = None) -> MaskedImageFolder:
    """``MaskedImageFolder(root, split, size=size, channels=channels)``; a missing split names ``flag`` as the fix."""
    if not root:
        raise TrainError("no data set given; pass --data ROOT (a folder with images/<split>/<class>/*.png and "
                         "masks/...), e.g. one written by: isnet data biased-digits ROOT")
    available = splits(root)  # DataError when ROOT or ROOT/images is missing
    if split not in available:
        hint = f" or choose another with {flag}" if flag else ""
        raise TrainError(f"data set {root} has no split {split!r} (its splits: {available or 'none'}); add the "
                         f"folder {Path(root) / 'images' / split}{hint}")
    return MaskedImageFolder(root, split, size=size, channels=channels)


def check_classes(expected: list[str], found: list[str], where: str) -> None:
    """The class folders of a split must be the ones the model was trained on, in the same order."""
    if list(expected) != list(found):
        raise TrainError(f"{where} has classes {found} but the model was trained on {expected}; the class folders "
                         "of every split must be the same (class i is the i-th folder name in sorted order)")


__all__ = ["DataError", "check_classes", "open_split"]
