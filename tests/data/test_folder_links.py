"""Symbolic links in a data set folder: a loop, a second path to the same images or a link out of the data set is a
DataError naming the link (before: a loop multiplied the data set, with images under wrong classes); links to
files, and to folders inside the data set not read yet, are read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isnet_kernels.data import DataError, MaskedImageFolder, splits

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX symbolic links")


def _data(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    for kind in ("images", "masks"):
        for c in range(classes):
            folder = root / kind / "train" / str(c)
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8), 40 * c + i + (0 if kind == "images" else 1), np.uint8)).save(
                    folder / f"{i}.png")
    return root


def _link(root: Path, rel: str, target: str | Path, masks_too: bool = True) -> None:
    """A link at images/<rel> (and at masks/<rel>, so that every image found has a mask, as in the report)."""
    for kind in ("images", "masks") if masks_too else ("images",):
        os.symlink(target, root / kind / rel)


def test_a_plain_folder(tmp_path: Path) -> None:
    ds = MaskedImageFolder(_data(tmp_path / "d"), "train")
    assert len(ds) == 6 and ds.classes == ["0", "1", "2"]


def test_a_link_loop_inside_a_class_folder(tmp_path: Path) -> None:
    root = _data(tmp_path / "d")
    _link(root, "train/0/loop", "..")  # back to the split folder: every class again, under class 0, endlessly
    with pytest.raises(DataError, match=r"train/0/loop is a symbolic link to .*images/train, a folder already read"):
        MaskedImageFolder(root, "train")


def test_a_link_loop_as_a_class_folder(tmp_path: Path) -> None:
    root = _data(tmp_path / "d")
    _link(root, "train/zz", ".")  # a 'class' that is the split itself
    with pytest.raises(DataError, match="a folder already read"):
        MaskedImageFolder(root, "train")
    os.symlink(".", root / "images" / "again")  # a 'split' that is images/ itself
    with pytest.raises(DataError, match="a folder already read"):
        splits(root)


def test_a_second_path_to_a_class(tmp_path: Path) -> None:
    root = _data(tmp_path / "d")
    _link(root, "train/3", "0")  # class 0's images again, as class 3
    with pytest.raises(DataError, match="symbolic link"):
        MaskedImageFolder(root, "train")


def test_a_link_out_of_the_data_set(tmp_path: Path) -> None:
    root = _data(tmp_path / "d")
    outside = _data(tmp_path / "elsewhere")
    _link(root, "train/1/more", outside / "images" / "train" / "1", masks_too=False)
    os.symlink(outside / "masks" / "train" / "1", root / "masks" / "train" / "1" / "more")
    with pytest.raises(DataError, match=r"train/1/more is a symbolic link to .*elsewhere.*outside the data set"):
        MaskedImageFolder(root, "train")


def test_a_split_folder_linked_out_of_the_data_set(tmp_path: Path) -> None:
    root = _data(tmp_path / "d")
    outside = _data(tmp_path / "elsewhere")
    _link(root, "val", outside / "images" / "train", masks_too=False)
    with pytest.raises(DataError, match="outside the data set"):
        MaskedImageFolder(root, "val")


def test_links_inside_the_data_set_are_read_once(tmp_path: Path) -> None:
    root = _data(tmp_path / "d")
    (root / "extra" / "images").mkdir(parents=True)
    (root / "extra" / "masks").mkdir(parents=True)
    for kind in ("images", "masks"):
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "extra" / kind / "x.png")
        os.symlink(root / "extra" / kind, root / kind / "train" / "2" / "linked")  # a folder inside the data set
        os.symlink(root / kind / "train" / "0" / "0.png", root / kind / "train" / "1" / "copy.png")  # a file
    ds = MaskedImageFolder(root, "train")
    assert len(ds) == 8
    names = {Path(p).relative_to(root / "images" / "train").as_posix(): label for p, _, label in ds.samples}
    assert names["2/linked/x.png"] == 2 and names["1/copy.png"] == 1
    image, mask, label = ds[[p for p, _, _ in ds.samples].index(str(root / "images/train/2/linked/x.png"))]
    assert label == 2 and float(image.max()) == pytest.approx(200 / 255)
