"""The manifest data set: columns, boxes rasterised to masks, splits, groups, and every bad row named by line and
column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isnet_kernels.data import DataError, ManifestDataset, MaskedImageFolder, dataset_splits, open_dataset
from isnet_kernels.data.manifest import parse_boxes, rasterise_boxes, read_manifest


def _image(path: Path, h: int = 6, w: int = 8, value: int = 100) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), value, dtype=np.uint8)).save(path)
    return path.name


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Four images in pics/, masks for two, boxes for two; splits train and test; groups."""
    for k in range(4):
        _image(tmp_path / "pics" / f"{k}.png", value=10 * k)
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(tmp_path / "pics" / "m0.png")
    Image.fromarray(mask).save(tmp_path / "pics" / "m1.png")
    text = ("image,label,mask,box,split,group,extra\n"
            "pics/0.png,cat,pics/m0.png,,train,indoor,x\n"
            "pics/1.png,dog,pics/m1.png,0 0 1 1,train,outdoor,y\n"
            "pics/2.png,dog,,2 1 6 5,train,indoor,z\n"
            "pics/3.png,cat,,0 0 2 2; 6 4 8 6,test,outdoor,w\n")
    path = tmp_path / "sets" / "data.csv"
    path.parent.mkdir()
    path.write_text(text.replace("pics/", "../pics/"))
    return path


def test_rows_splits_classes_and_groups(manifest: Path) -> None:
    assert dataset_splits(manifest) == ["test", "train"]
    ds = ManifestDataset(manifest, "train")
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 1, 1] and len(ds) == 3
    assert ds.groups == ["indoor", "outdoor", "indoor"] and ds.group_names == ["indoor", "outdoor"]
    image, mask, label = ds[0]
    assert image.shape == (1, 6, 8) and torch.allclose(image, torch.zeros(1, 6, 8))
    assert mask[0, :, :4].all() and not mask[0, :, 4:].any() and label == 0
    _, mask, _ = ds[1]  # a mask and a box: the mask is used
    assert mask.sum() == 24
    _, mask, _ = ds[2]  # the box 2 1 6 5: columns 2..5, rows 1..4
    expected = torch.zeros(1, 6, 8)
    expected[0, 1:5, 2:6] = 1
    assert torch.equal(mask, expected)
    test = open_dataset(manifest, "test")
    _, mask, label = test[0]
    assert label == 0 and mask.sum() == 4 + 4 and mask[0, :2, :2].all() and mask[0, 4:, 6:].all()
    ds.verify(progress=False)


def test_size_channels_and_integer_classes(tmp_path: Path) -> None:
    for k in range(3):
        _image(tmp_path / f"{k}.png", h=6 + k, w=8)
    (tmp_path / "m.csv").write_text("image,label,box\n0.png,10,0 0 4 4\n1.png,9,1 1 3 3\n2.png,10,0 0 8 8\n")
    ds = ManifestDataset(tmp_path / "m.csv", "all", size=4, channels=3)
    assert ds.classes == ["9", "10"] and ds.targets == [1, 0, 1]  # numeric order, one split "all"
    image, mask, _ = ds[1]
    assert image.shape == (3, 4, 4) and mask.shape == (1, 4, 4) and set(mask.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(DataError, match="has size"):  # without size: images of differing sizes
        ManifestDataset(tmp_path / "m.csv", "all")[1]


def test_multilabel_column(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,labels,box\na.png,effusion;edema,0 0 4 4\na.png,,0 0 4 4\n")
    rows, multilabel = read_manifest(tmp_path / "m.csv")
    assert multilabel and rows[0].labels == ("effusion", "edema") and rows[1].labels == ()
    ds = ManifestDataset(tmp_path / "m.csv", "all")
    assert ds.classes == ["edema", "effusion"]
    assert ds[0][2].tolist() == [1.0, 1.0] and ds[1][2].tolist() == [0.0, 0.0]


def test_boxes() -> None:
    assert parse_boxes("1 2 3 4; 0,0,2,2", "w") == ((1, 2, 3, 4), (0, 0, 2, 2))
    m = rasterise_boxes([(0.4, 0.4, 0.6, 0.6)], 3, 3)  # smaller than a pixel: the pixel holding its centre
    assert m.sum() == 1 and m[0, 0]
    m = rasterise_boxes([(1.5, 0, 3.5, 1)], 2, 4)  # centres 2.5 inside, 1.5 and 3.5 on the border
    assert m.tolist() == [[False, True, True, True], [False, False, False, False]]


@pytest.mark.parametrize("row, column, words", [
    ("missing.png,cat,,0 0 2 2", "image", "image file .*missing.png does not exist"),
    ("a.png,,,0 0 2 2", "label", "empty; every row needs its class"),
    ("a.png,cat,nomask.png,", "mask", "mask file .*nomask.png does not exist"),
    ("a.png,cat,,0 0 2", "box", "'0 0 2' is not a box"),
    ("a.png,cat,,1 1 x 4", "box", "is not a box"),
    ("a.png,cat,,4 4 2 2", "box", "empty or reversed"),
    ("a.png,cat,,-5 0 2 2", "box", "outside the image"),
    ("a.png,cat,,", "mask and box", "neither given"),
])
def test_bad_rows_name_line_and_column(tmp_path: Path, row: str, column: str, words: str) -> None:
    _image(tmp_path / "a.png")
    path = tmp_path / "m.csv"
    path.write_text(f"image,label,mask,box\na.png,cat,,0 0 2 2\n{row}\n")
    with pytest.raises(DataError, match=f"m.csv, line 3, columns? {column}: .*{words}"):
        ManifestDataset(path, "all")


def test_box_outside_the_image_and_unknown_label(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")  # 8 wide, 6 high
    path = tmp_path / "m.csv"
    path.write_text("image,label,box,split\na.png,cat,0 0 8 6,train\na.png,cat,0 0 8 9,train\na.png,owl,0 0 2 2,"
                    "test\n")
    ds = ManifestDataset(path, "train")
    ds[0]
    with pytest.raises(DataError, match=r"line 3, column box: box 0 0 8 9 lies outside the image .*\(8 x 6 pixels\)"):
        ds[1]
    with pytest.raises(DataError, match="line 3, column box"):
        ds.read_mask(1)
    assert ManifestDataset(path, "test").classes == ["cat", "owl"]
    with pytest.raises(DataError, match=r"line 4, column label: unknown label 'owl'; the classes are cat"):
        ManifestDataset(path, "test", classes=["cat"])


def test_manifest_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ManifestDataset(tmp_path / "none.csv", "train")
    (tmp_path / "a.csv").write_text("path,label\nx.png,1\n")
    with pytest.raises(DataError, match="no column 'image'"):
        ManifestDataset(tmp_path / "a.csv", "train")
    (tmp_path / "b.csv").write_text("image,label,labels\nx.png,1,1\n")
    with pytest.raises(DataError, match="exactly one of the columns 'label'"):
        ManifestDataset(tmp_path / "b.csv", "train")
    _image(tmp_path / "x.png")
    (tmp_path / "c.csv").write_text("image,label,box,split\nx.png,1,0 0 1 1,train\n")
    with pytest.raises(DataError, match="no rows of split 'val'; its splits: train"):
        ManifestDataset(tmp_path / "c.csv", "val")


def test_open_dataset_reads_folders_too(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "train" / "a" / "0.png")
    _image(tmp_path / "masks" / "train" / "a" / "0.png", value=255)
    assert isinstance(open_dataset(tmp_path, "train"), MaskedImageFolder)
    assert dataset_splits(tmp_path) == ["train"]
