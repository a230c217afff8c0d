"""Tests for ``isnet_kernels.data.biased_scenes``: layout, masks, which scene each split puts behind a class, the
bias fraction and the groups, the artefact-free train split, the photo seed, determinism and argument checks."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isnet_kernels.cli import main as cli_main
from isnet_kernels.data import DataError, MaskedImageFolder, splits

from ..optional import require

require("skimage")

from isnet_kernels.data.biased_scenes import PHOTOGRAPHS, SPLITS, write_biased_scenes  # noqa: E402

SIZE = 32
PER_CLASS = {"per_class_train": 20, "per_class_val": 2, "per_class_test": 3}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("biased_scenes")
    return root, write_biased_scenes(root, size=SIZE, seed=1, bias=0.8, contrast=1.0, progress=False, **PER_CLASS)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "artefacts.csv", newline="") as f:
        return list(csv.DictReader(f))


def _png(root: Path, kind: str, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / kind / rel), dtype=np.float32) / 255.0


def test_layout_counts_and_summary(scenes):
    root, info = scenes
    assert splits(root) == sorted(SPLITS)
    expected = {"train": 200, "val": 20, "test_biased": 30, "test_unbiased": 30, "test_confounding": 30,
                "train_clean": 200}
    assert info["counts"] == expected and json.loads((root / "info.json").read_text())["counts"] == expected
    photos = info["photographs"]
    assert len(photos["classes"]) == 10 and set(photos["classes"]) | set(photos["neutral"]) == set(PHOTOGRAPHS)
    assert not set(photos["classes"]) & set(photos["neutral"])
    image, mask, label = MaskedImageFolder(root, "test_confounding")[0]
    assert image.shape == (1, SIZE, SIZE) and mask.shape == (1, SIZE, SIZE)
    assert 0 < float(mask.mean()) < 0.5


def test_each_split_puts_the_scene_its_documentation_says(scenes):
    root, info = scenes
    classes = info["photographs"]["classes"]
    by_split: dict[str, list[dict[str, str]]] = {}
    for row in _rows(root):
        by_split.setdefault(row["split"], []).append(row)
        scene = int(row["scene_class"])
        assert row["photograph"] == (classes[scene] if scene >= 0 else row["photograph"])
    assert all(int(r["scene_class"]) == int(r["label"]) for r in by_split["test_biased"])
    assert all(int(r["scene_class"]) == -1 and r["photograph"] in info["photographs"]["neutral"]
               for r in by_split["test_unbiased"])
    assert all(int(r["scene_class"]) not in (-1, int(r["label"])) for r in by_split["test_confounding"])
    aligned = np.mean([int(r["scene_class"]) == int(r["label"]) for r in by_split["train"]])
    assert 0.7 <= aligned <= 0.9  # bias 0.8 over 200 images
    clean = np.mean([int(r["scene_class"]) == int(r["label"]) for r in by_split["train_clean"]])
    assert clean < 0.3  # independent of the label: about 1 in 10
    groups = Counter(r["group"] for r in by_split["train"])
    assert sum(groups.values()) == 200 and all(g.split(":")[1] in ("aligned", "conflicting") for g in groups)
    assert info["groups"]["counts"]["train"] == dict(groups)


def test_the_digit_is_foreground_and_the_scene_fills_the_background(scenes):
    root, _ = scenes
    rows = [r for r in _rows(root) if r["split"] in ("test_biased", "test_confounding")]
    spread = []
    for row in rows:
        image, mask = _png(root, "images", row["path"]), _png(root, "masks", row["path"]) > 0.5
        assert set(np.unique(_png(root, "masks", row["path"]))) <= {0.0, 1.0}
        assert image[mask].max() > 0.9  # the white digit
        spread.append(float(image[~mask].std()))
    assert np.median(spread) > 0.05  # textured scenes (a dark sky or a white page may be nearly flat)


def test_test_splits_differ_only_in_the_scene(scenes):
    root, _ = scenes
    rel = "0/0000.png"
    masks = [_png(root, "masks", f"{s}/{rel}") for s in ("test_biased", "test_unbiased", "test_confounding")]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    images = [_png(root, "images", f"{s}/{rel}") for s in ("test_biased", "test_unbiased", "test_confounding")]
    on_digit = masks[0] > 0.5
    change = np.abs(images[0] - images[2])  # own scene vs another class's: the digit stays, the scene changes
    assert change[on_digit].mean() < change[~on_digit].mean()


def test_photo_seed_changes_the_scenes_and_seed_reproduces_bytes(scenes, tmp_path):
    root, info = scenes
    again = write_biased_scenes(tmp_path / "a", size=SIZE, seed=1, bias=0.8, contrast=1.0, progress=False,
                                **PER_CLASS)
    assert (tmp_path / "a" / "images" / "train" / "3" / "0001.png").read_bytes() == \
        (root / "images" / "train" / "3" / "0001.png").read_bytes()
    other = write_biased_scenes(tmp_path / "b", size=SIZE, seed=1, photo_seed=7, progress=False, **PER_CLASS)
    assert other["photographs"]["classes"] != again["photographs"]["classes"] and other["photo_seed"] == 7


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(DataError, match="bias"):
        write_biased_scenes(tmp_path, bias=1.5, progress=False)
    with pytest.raises(DataError, match="size"):
        write_biased_scenes(tmp_path, size=8, progress=False)
    with pytest.raises(DataError, match="contrast"):
        write_biased_scenes(tmp_path, contrast=0.0, progress=False)


def test_contrast_weakens_the_digit(tmp_path):
    kw = dict(size=SIZE, seed=2, progress=False, per_class_train=1, per_class_val=1, per_class_test=1,
              train_clean=False)
    full, faint = tmp_path / "full", tmp_path / "faint"
    info = write_biased_scenes(full, **kw)
    assert info["contrast"] == 1.0 and info["scene"] == 0.85  # the defaults
    write_biased_scenes(faint, contrast=0.5, **kw)
    weaker = 0.0
    for c in range(10):
        rel = f"test_biased/{c}/0000.png"
        mask = _png(full, "masks", rel) > 0.5
        a, b = _png(full, "images", rel), _png(faint, "images", rel)
        np.testing.assert_allclose(a[~mask], b[~mask], atol=1 / 255)  # the same scene
        assert (a[mask] >= b[mask] - 1 / 255).all()  # c d (1 - background) grows with c
        weaker += float((a - b)[mask].sum())
    assert weaker > 0


def test_command_line_writes_it(tmp_path, capsys):
    code = cli_main(["data", "biased-scenes", str(tmp_path / "s"), "--size", "24", "--per-class", "2",
                     "--per-class-val", "1", "--per-class-test", "1", "--bias", "1.0", "--photo-seed", "5",
                     "--contrast", "0.7", "--scene", "0.8", "--quiet"])
    assert code in (0, None)
    info = json.loads((tmp_path / "s" / "info.json").read_text())
    assert info["bias"] == 1.0 and info["photo_seed"] == 5 and info["counts"]["train"] == 20
    assert info["contrast"] == 0.7 and info["scene"] == 0.8
    assert "biased scenes" in capsys.readouterr().out


def test_command_line_names_the_flag(tmp_path, capsys):
    code = cli_main(["data", "biased-scenes", str(tmp_path / "s"), "--bias", "2", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--bias" in err and "bias=" not in err


def test_scene_range_is_the_same_for_every_class(tmp_path):
    write_biased_scenes(tmp_path / "s", size=SIZE, seed=0, scene=0.5, contrast=1.0, progress=False, per_class_train=2,
                        per_class_val=1, per_class_test=1, train_clean=False)
    for row in _rows(tmp_path / "s"):
        image, mask = _png(tmp_path / "s", "images", row["path"]), _png(tmp_path / "s", "masks", row["path"]) > 0.5
        assert image[~mask].max() <= 0.5 + 1 / 255, row  # each crop stretched to [0, 0.5], whatever its class
        assert image[~mask].max() >= 0.25, row
