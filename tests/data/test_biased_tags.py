"""Tests for ``isnet_kernels.data.biased_tags``: layout, masks, the tags' content and placement, splits,
the artefact-free train split, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from isnet_kernels.data import DataError, MaskedImageFolder, splits, write_biased_digits
from isnet_kernels.data.biased_tags import NEUTRAL_TAG, SPLITS, TAG_VALUE_RANGE, TAGS, _glyphs, write_biased_tags

from .test_biased_digits import _read

SIZE = 40
PER_CLASS = {"per_class_train": 3, "per_class_val": 1, "per_class_test": 2}
CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def tags_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("biased_tags")
    summary = write_biased_tags(root, size=SIZE, seed=3, progress=False, **PER_CLASS)
    return root, summary


def _rows(root: Path) -> dict[tuple[str, str], dict[str, str]]:
    """artefacts.csv by (split, path under the split)."""
    with open(root / "artefacts.csv", newline="") as f:
        return {(r["split"], r["path"].split("/", 1)[1]): r for r in csv.DictReader(f)}


def _box(row: dict[str, str]) -> tuple[slice, slice]:
    return slice(int(row["y0"]), int(row["y1"])), slice(int(row["x0"]), int(row["x1"]))


def test_layout_counts_and_summary(tags_root):
    root, summary = tags_root
    assert splits(root) == sorted(SPLITS)
    expected = {"train": 30, "val": 10, "test_biased": 20, "test_unbiased": 20, "test_confounding": 20,
                "train_clean": 30}
    assert summary["counts"] == expected and json.loads((root / "info.json").read_text())["counts"] == expected
    assert summary["size"] == SIZE and summary["seed"] == 3 and summary["classes"] == CLASSES
    assert summary["tags"]["classes"] == list(TAGS) and len(set(TAGS)) == 10 and NEUTRAL_TAG not in TAGS
    assert not any(ch.isdigit() for tag in (*TAGS, NEUTRAL_TAG) for ch in tag)  # no digit drawn as a tag
    assert "test_confounding" in (root / "README.txt").read_text()
    for split, n in expected.items():
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        assert sorted(p.name for p in image_dir.iterdir()) == CLASSES
        images = sorted(p.relative_to(image_dir) for p in image_dir.rglob("*.png"))
        assert len(images) == n and images == sorted(p.relative_to(mask_dir) for p in mask_dir.rglob("*.png"))
    assert len(_rows(root)) == sum(expected.values())


def test_read_back_with_the_folder_dataset(tags_root):
    root, _ = tags_root
    ds = MaskedImageFolder(root, "test_confounding")
    assert ds.classes == CLASSES and len(ds) == 20
    ds.verify(progress=False)
    image, mask, label = ds[len(ds) - 1]
    assert label == 9 and image.shape == mask.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_masks_are_binary_the_digit_is_there_and_the_tag_is_background(tags_root):
    root, _ = tags_root
    for (split, rel), row in _rows(root).items():
        image = _read(root / "images" / split / rel)
        mask = _read(root / "masks" / split / rel)
        assert set(np.unique(mask).tolist()) == {0, 255}
        fg = mask > 0
        assert (image[fg] > 200).sum() >= 10  # bright digit strokes inside the mask
        if split == "train_clean":
            assert row["tag"] == "" and int(row["tag_class"]) == -1
            continue
        ys, xs = _box(row)
        grown = np.zeros_like(fg)
        grown[max(ys.start - 1, 0):ys.stop + 1, max(xs.start - 1, 0):xs.stop + 1] = True
        assert not (grown & fg).any()  # one pixel at least between the tag and the digit's mask
        assert 0 < ys.start and ys.stop < SIZE and 0 < xs.start and xs.stop < SIZE


def _tag_drawn(tagged: np.ndarray, clean: np.ndarray, row: dict[str, str]) -> None:
    """``tagged`` is ``clean`` with the text of ``row`` composited inside its box at one grey level in range."""
    box = _box(row)
    outside = np.ones_like(clean, dtype=bool)
    outside[box] = False
    assert np.array_equal(tagged[outside], clean[outside])
    g = _glyphs(row["tag"], int(row["font_size"]))
    assert g.shape == tagged[box].shape
    t, c = tagged[box].astype(np.float64) / 255, clean[box].astype(np.float64) / 255
    assert (g > 0.5).sum() >= 3
    value = float((g * (t - c * (1 - g))).sum() / (g * g).sum())  # least squares for v in t = c (1 - g) + v g
    assert TAG_VALUE_RANGE[0] - 0.01 <= value <= TAG_VALUE_RANGE[1] + 0.01
    np.testing.assert_allclose(t, c * (1 - g) + value * g, atol=2.5 / 255)


def test_train_clean_is_train_without_the_tag_and_the_tag_is_the_class_text(tags_root):
    """train = train_clean with the own class's text drawn in its box (the glyphs of that text at that font size,
    at one grey level), equal everywhere else; same masks and scans."""
    root, _ = tags_root
    rows = _rows(root)
    clean = [rel for split, rel in rows if split == "train_clean"]
    assert len(clean) == 30
    for rel in clean:
        row = rows[("train", rel)]
        label = int(row["label"])
        assert row["tag"] == TAGS[label] and int(row["tag_class"]) == label
        _tag_drawn(_read(root / "images" / "train" / rel), _read(root / "images" / "train_clean" / rel), row)
        assert np.array_equal(_read(root / "masks" / "train" / rel), _read(root / "masks" / "train_clean" / rel))
        assert row["scan"] == rows[("train_clean", rel)]["scan"]


def test_tags_encode_the_class_as_each_split_says(tags_root):
    root, _ = tags_root
    confounders = set()
    for (split, _), row in _rows(root).items():
        label, tag_class = int(row["label"]), int(row["tag_class"])
        if split in ("train", "val", "test_biased"):
            assert row["tag"] == TAGS[label] and tag_class == label
        elif split == "test_unbiased":
            assert row["tag"] == NEUTRAL_TAG and tag_class == -1
        elif split == "test_confounding":
            assert tag_class != label and row["tag"] == TAGS[tag_class]
            confounders.add((label, tag_class))
        if split != "train_clean":  # the footprint is that of the recorded text at the recorded size
            ys, xs = _box(row)
            assert _glyphs(row["tag"], int(row["font_size"])).shape == (ys.stop - ys.start, xs.stop - xs.start)
    assert len(confounders) > 10


def test_test_splits_hold_the_same_images_up_to_the_tag(tags_root):
    """Same digit on the same background: equal outside the two tags' boxes; same masks and scans."""
    root, _ = tags_root
    rows = _rows(root)
    sizes = set()
    for rel in [rel for split, rel in rows if split == "test_unbiased"]:
        ref = _read(root / "images" / "test_unbiased" / rel)
        for other in ("test_biased", "test_confounding"):
            image = _read(root / "images" / other / rel)
            keep = np.ones_like(ref, dtype=bool)
            keep[_box(rows[("test_unbiased", rel)])] = False
            keep[_box(rows[(other, rel)])] = False
            assert np.array_equal(image[keep], ref[keep])
            assert not np.array_equal(image, ref)
            assert np.array_equal(_read(root / "masks" / other / rel), _read(root / "masks" / "test_unbiased" / rel))
            assert rows[(other, rel)]["scan"] == rows[("test_unbiased", rel)]["scan"]
            sizes.add(int(rows[(other, rel)]["font_size"]))
    assert len(sizes) >= 3  # varied sizes


def test_backgrounds_are_textured_and_positions_vary(tags_root):
    root, _ = tags_root
    rows = _rows(root)
    corners = set()
    for (split, rel), row in rows.items():
        if split != "train_clean":
            corners.add((int(row["y0"]), int(row["x0"])))
            continue
        image = _read(root / "images" / split / rel)
        background = image[_read(root / "masks" / split / rel) == 0]
        assert background.std() > 2 and 10 <= background.min() and background.max() <= 120  # faint, not flat
    assert len(corners) > len(rows) // 3


def test_train_val_and_test_digits_are_different_scans(tags_root):
    root, summary = tags_root
    target = load_digits().target
    scans: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for (split, _), row in _rows(root).items():
        assert target[int(row["scan"])] == int(row["label"])
        scans["test" if split.startswith("test") else split.removesuffix("_clean")].add(int(row["scan"]))
    assert not scans["train"] & scans["test"] and not scans["train"] & scans["val"] and not scans["val"] & scans["test"]
    assert summary["scans"]["train"] + summary["scans"]["val"] + summary["scans"]["test"] == len(target)


def test_same_seed_same_bytes_other_seed_other_images(tags_root, tmp_path):
    root, _ = tags_root
    write_biased_tags(tmp_path / "again", size=SIZE, seed=3, progress=False, **PER_CLASS)
    write_biased_tags(tmp_path / "other", size=SIZE, seed=4, progress=False, **PER_CLASS)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "info.json")
    assert len(files) > 250
    for rel in files:
        assert (tmp_path / "again" / rel).read_bytes() == (root / rel).read_bytes(), rel
    differing = sum((tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes() for rel in files)
    assert differing > len(files) // 2


def test_without_train_clean_and_other_sizes(tags_root, tmp_path):
    root, _ = tags_root
    summary = write_biased_tags(tmp_path / "a", size=SIZE, seed=3, progress=False, train_clean=False, **PER_CLASS)
    assert "train_clean" not in summary["counts"] and not (tmp_path / "a" / "images" / "train_clean").exists()
    for rel in sorted(p.relative_to(tmp_path / "a" / "images") for p in (tmp_path / "a" / "images").rglob("*.png")):
        assert (tmp_path / "a" / "images" / rel).read_bytes() == (root / "images" / rel).read_bytes(), rel
    for size in (32, 64):
        s = write_biased_tags(tmp_path / f"s{size}", size=size, per_class_train=1, per_class_val=1,
                              per_class_test=1, progress=False)
        image, mask, _ = MaskedImageFolder(tmp_path / f"s{size}", "test_confounding")[0]
        assert image.shape == mask.shape == (1, size, size) and s["size"] == size


def test_argument_checks_and_overwrite(tmp_path):
    with pytest.raises(ValueError, match="at least 32"):
        write_biased_tags(tmp_path, size=24, progress=False)
    with pytest.raises(ValueError, match="per_class_test"):
        write_biased_tags(tmp_path, per_class_test=0, progress=False)
    assert not (tmp_path / "images").exists()
    write_biased_tags(tmp_path / "t", per_class_train=1, per_class_val=1, per_class_test=1, progress=False)
    with pytest.raises(DataError, match="already holds a data set"):
        write_biased_tags(tmp_path / "t", per_class_train=1, per_class_val=1, per_class_test=1, progress=False)
    write_biased_tags(tmp_path / "t", per_class_train=1, per_class_val=1, per_class_test=1, progress=False,
                      overwrite=True)
    write_biased_digits(tmp_path / "d", per_class_train=1, per_class_val=1, per_class_test=1, progress=False)
    with pytest.raises(DataError, match="no info.json of a biased-tags set"):
        write_biased_tags(tmp_path / "d", per_class_train=1, per_class_val=1, per_class_test=1, progress=False,
                          overwrite=True)
    assert (tmp_path / "d" / "images" / "train").exists()  # the other kind of set was not deleted
