"""Tests for ``isnet_kernels.data.biased_digits``: layout, masks, artefacts, splits, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from isnet_kernels.data import DataError, MaskedImageFolder, artefact_positions, splits, write_biased_digits
from isnet_kernels.data.biased_digits import SPLITS

SIZE = 32
PER_CLASS = {"per_class_train": 4, "per_class_val": 2, "per_class_test": 3}
CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("biased_digits")
    summary = write_biased_digits(root, size=SIZE, seed=3, progress=False, **PER_CLASS)
    return root, summary


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _box(position: tuple[int, int, int]) -> tuple[slice, slice]:
    y, x, side = position
    return slice(y, y + side), slice(x, x + side)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "artefacts.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_layout_counts_and_summary(digits_root):
    root, summary = digits_root
    assert splits(root) == sorted(SPLITS)
    expected = {"train": 40, "val": 20, "test_biased": 30, "test_unbiased": 30, "test_confounding": 30,
                "train_clean": 40}
    assert summary["counts"] == expected
    assert summary["size"] == SIZE and summary["seed"] == 3 and summary["classes"] == CLASSES
    assert json.loads((root / "info.json").read_text())["counts"] == expected
    assert "test_confounding" in (root / "README.txt").read_text()
    for split, n in expected.items():
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        assert sorted(p.name for p in image_dir.iterdir()) == CLASSES
        images = sorted(p.relative_to(image_dir) for p in image_dir.rglob("*.png"))
        masks = sorted(p.relative_to(mask_dir) for p in mask_dir.rglob("*.png"))
        assert len(images) == n and images == masks  # one mask beside every image
        for c in CLASSES:
            assert len(list((image_dir / c).glob("*.png"))) == n // 10
    assert len(_rows(root)) == sum(expected.values())


def test_read_back_with_the_folder_dataset(digits_root):
    root, _ = digits_root
    ds = MaskedImageFolder(root, "train")
    assert ds.classes == CLASSES and len(ds) == 40
    ds.verify(progress=False)
    image, mask, label = ds[len(ds) - 1]
    assert label == 9
    assert image.shape == (1, SIZE, SIZE) and mask.shape == (1, SIZE, SIZE)
    assert image.dtype == torch.float32 and mask.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) == 1.0  # the artefact is full white
    images, masks, labels = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert images.shape == (8, 1, SIZE, SIZE) and masks.shape == (8, 1, SIZE, SIZE)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_masks_are_binary_and_cover_exactly_the_digit(digits_root):
    root, summary = digits_root
    positions = artefact_positions(SIZE)
    artefact_area = np.zeros((SIZE, SIZE), dtype=bool)
    for p in positions:
        artefact_area[_box(p)] = True
    lo, hi = summary["digit"]["region"]
    for row in _rows(root):
        image = _read(root / "images" / row["path"])
        mask = _read(root / "masks" / row["path"])
        assert set(np.unique(mask).tolist()) == {0, 255}
        fg = mask > 0
        assert not (fg & artefact_area).any()  # the artefact is background
        assert not fg[:lo].any() and not fg[hi:].any() and not fg[:, :lo].any() and not fg[:, hi:].any()
        # every bright pixel is digit (inside the mask) or artefact; the digit is really there
        assert not ((image > 0) & ~fg & ~artefact_area).any()
        assert (image[fg] > 127).sum() >= 10


def test_artefact_encodes_the_class_as_each_split_says(digits_root):
    root, _ = digits_root
    boxes = [_box(p) for p in artefact_positions(SIZE)]
    seen_confounders = set()
    for row in _rows(root):
        image = _read(root / "images" / row["path"])
        label, art = int(row["label"]), int(row["artefact_class"])
        lit = [k for k, b in enumerate(boxes) if (image[b] == 255).all()]
        dark = [k for k, b in enumerate(boxes) if (image[b] == 0).all()]
        assert len(lit) + len(dark) == 10  # every box is either fully drawn or empty
        if row["split"] in ("train", "val", "test_biased"):
            assert lit == [label] and art == label
        elif row["split"] in ("test_unbiased", "train_clean"):
            assert lit == [] and art == -1
        else:
            assert row["split"] == "test_confounding"
            assert lit == [art] and art != label
            seen_confounders.add((label, art))
    assert len(seen_confounders) > 10  # the confounding class is drawn at random, not one fixed shift


def test_test_splits_hold_the_same_images_up_to_the_artefact(digits_root):
    root, _ = digits_root
    boxes = [_box(p) for p in artefact_positions(SIZE)]
    for path in sorted((root / "images" / "test_unbiased").rglob("*.png")):
        rel = path.relative_to(root / "images" / "test_unbiased")
        unbiased = _read(path)
        for other in ("test_biased", "test_confounding"):
            image = _read(root / "images" / other / rel).copy()
            for b in boxes:
                image[b] = 0
            assert np.array_equal(image, unbiased)
            assert np.array_equal(_read(root / "masks" / other / rel), _read(root / "masks" / "test_unbiased" / rel))


def test_train_clean_is_train_without_the_artefact(digits_root):
    """Same scans, sizes, positions and file names as train; equal outside the artefact's square, which train
    lights and train_clean leaves black; same masks."""
    root, _ = digits_root
    positions = artefact_positions(SIZE)
    rows = {(r["split"], r["path"].split("/", 1)[1]): r for r in _rows(root)}
    clean_dir = root / "images" / "train_clean"
    clean = sorted(p.relative_to(clean_dir) for p in clean_dir.rglob("*.png"))
    assert len(clean) == 40
    for rel in clean:
        train = _read(root / "images" / "train" / rel)
        image = _read(root / "images" / "train_clean" / rel)
        label = int(rel.parts[0])
        box = _box(positions[label])
        assert (train[box] == 255).all() and (image[box] == 0).all()
        outside = np.ones_like(train, dtype=bool)
        outside[box] = False
        assert np.array_equal(train[outside], image[outside])
        assert np.array_equal(_read(root / "masks" / "train" / rel), _read(root / "masks" / "train_clean" / rel))
        assert rows[("train", str(rel))]["scan"] == rows[("train_clean", str(rel))]["scan"]


def test_without_train_clean_the_other_splits_are_unchanged(digits_root, tmp_path):
    root, _ = digits_root
    summary = write_biased_digits(tmp_path, size=SIZE, seed=3, progress=False, train_clean=False, **PER_CLASS)
    assert "train_clean" not in summary["counts"] and not (tmp_path / "images" / "train_clean").exists()
    for rel in sorted(p.relative_to(tmp_path / "images") for p in (tmp_path / "images").rglob("*.png")):
        assert (tmp_path / "images" / rel).read_bytes() == (root / "images" / rel).read_bytes(), rel


def test_train_val_and_test_digits_are_different_scans(digits_root):
    root, summary = digits_root
    target = load_digits().target
    scans: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for row in _rows(root):
        scan = int(row["scan"])
        assert target[scan] == int(row["label"])
        scans["test" if row["split"].startswith("test") else row["split"].removesuffix("_clean")].add(scan)
    assert not scans["train"] & scans["test"]
    assert not scans["train"] & scans["val"]
    assert not scans["val"] & scans["test"]
    assert len(scans["train"]) == 40  # 4 per class, fewer than each pool holds: no repeats
    assert summary["scans"]["train"] + summary["scans"]["val"] + summary["scans"]["test"] == len(target)


def test_same_seed_same_bytes_other_seed_other_images(digits_root, tmp_path):
    root, _ = digits_root
    again = write_biased_digits(tmp_path / "again", size=SIZE, seed=3, progress=False, **PER_CLASS)
    other = write_biased_digits(tmp_path / "other", size=SIZE, seed=4, progress=False, **PER_CLASS)
    assert again["counts"] == other["counts"]
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "info.json")
    assert len(files) > 300
    for rel in files:
        assert (tmp_path / "again" / rel).read_bytes() == (root / rel).read_bytes(), rel
    differing = sum((tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes() for rel in files)
    assert differing > len(files) // 2


@pytest.mark.parametrize("size", [24, 32, 48, 64])
def test_artefact_positions_are_distinct_and_outside_the_digit_region(size):
    positions = artefact_positions(size)
    border = max(4, round(size / 8))
    area = np.zeros((size, size), dtype=int)
    for y, x, side in positions:
        assert side == border - 1 >= 3
        assert 0 <= y <= size - side and 0 <= x <= size - side
        area[y : y + side, x : x + side] += 1
    assert area.max() == 1 and area.sum() == 10 * (border - 1) ** 2  # ten separate squares
    assert not area[border - 1 : size - border + 1, border - 1 : size - border + 1].any()  # one pixel of gap


def test_other_canvas_size(tmp_path):
    summary = write_biased_digits(
        tmp_path, size=48, per_class_train=1, per_class_val=1, per_class_test=1, seed=0, progress=False
    )
    assert summary["artefact"]["side"] == 5 and summary["digit"]["region"] == [6, 42]
    image, mask, label = MaskedImageFolder(tmp_path, "test_confounding")[0]
    assert image.shape == mask.shape == (1, 48, 48) and label == 0


def test_refuses_to_write_over_data(digits_root, tmp_path):
    root, _ = digits_root
    with pytest.raises(DataError, match="already holds a data set") as info:
        write_biased_digits(root, progress=False, **PER_CLASS)
    assert str(root / "images") in str(info.value) and "overwrite=True" in str(info.value)

    foreign = tmp_path / "foreign"
    (foreign / "images" / "train").mkdir(parents=True)
    keep = foreign / "images" / "train" / "keep.txt"
    keep.write_text("user data")
    with pytest.raises(DataError, match="no info.json"):
        write_biased_digits(foreign, overwrite=True, progress=False, **PER_CLASS)
    assert keep.read_text() == "user data"  # nothing was deleted


def test_overwrite_replaces_a_set_written_before(tmp_path):
    write_biased_digits(tmp_path, per_class_train=2, per_class_val=1, per_class_test=1, progress=False)
    summary = write_biased_digits(
        tmp_path, per_class_train=1, per_class_val=1, per_class_test=1, progress=False, overwrite=True
    )
    assert summary["counts"]["train"] == 10
    assert len(list((tmp_path / "images" / "train").rglob("*.png"))) == 10  # no stale files left


def test_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="at least 24"):
        write_biased_digits(tmp_path, size=16, progress=False)
    with pytest.raises(ValueError, match="per_class_val"):
        write_biased_digits(tmp_path, per_class_val=0, progress=False)
    assert not (tmp_path / "images").exists()


def test_noise_background(tmp_path: Path, digits_root: tuple[Path, dict]) -> None:
    """noise > 0: the background outside mask and artefact is uniform noise in [0, noise]; the first image of each
    pool keeps the digit, mask and artefact of the black-canvas set of the same seed."""
    root, _ = digits_root
    noisy = tmp_path / "noisy"
    info = write_biased_digits(noisy, size=SIZE, seed=3, progress=False, noise=0.3, **PER_CLASS)
    assert info["noise"] == 0.3
    image, mask = _read(noisy / "images/train/0/0000.png"), _read(noisy / "masks/train/0/0000.png") > 0
    black, black_mask = _read(root / "images/train/0/0000.png"), _read(root / "masks/train/0/0000.png") > 0
    assert np.array_equal(mask, black_mask) and np.array_equal(image[mask], black[mask])
    art = np.zeros_like(mask)
    art[_box(artefact_positions(SIZE)[0])] = True
    assert np.array_equal(image[art], black[art])
    background = image[~mask & ~art].astype(np.float64) / 255
    assert background.max() <= 0.3 + 1 / 255 and background.std() > 0.05 and black[~mask & ~art].max() == 0
    with pytest.raises(ValueError, match=r"noise must be a number in \[0, 1\)"):
        write_biased_digits(tmp_path / "bad", noise=1.5, progress=False)
