"""The biased multi-label digits: labels, artefacts per split, what the pixels hold, determinism, bad arguments."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isnet_kernels.data import ManifestDataset, artefact_positions, write_biased_multilabel
from isnet_kernels.errors import InputError


@pytest.fixture(scope="module")
def ml_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bml") / "set"
    write_biased_multilabel(root, labels=5, per_class_train=4, per_class_val=2, per_class_test=4, seed=1,
                            progress=False)
    return root


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _codes(text: str) -> list[int]:
    return [int(v) for v in text.split(";") if v]


def test_labels_and_artefacts_per_split(ml_set: Path) -> None:
    rows = _rows(ml_set)
    counts = {s: sum(r["split"] == s for r in rows) for s in {r["split"] for r in rows}}
    assert counts == {"train": 20, "train_clean": 20, "val": 10, "test_biased": 20, "test_unbiased": 20,
                      "test_confounding": 20}
    for r in rows:
        labels, art = _codes(r["labels"]), _codes(r["artefacts"])
        assert 1 <= len(labels) <= 2 and len(set(labels)) == len(labels)
        if r["split"] in ("train", "val", "test_biased"):
            assert art == labels
        elif r["split"] in ("train_clean", "test_unbiased"):
            assert art == []
        else:
            assert len(art) == len(labels) and not set(art) & set(labels)
    assert any(len(_codes(r["labels"])) == 2 for r in rows) and any(len(_codes(r["labels"])) == 1 for r in rows)
    # read as a multi-label manifest: 0/1 targets over the five labels
    data = ManifestDataset(ml_set / "manifest.csv", "train")
    assert data.multilabel and data.classes == ["0", "1", "2", "3", "4"]
    image, mask, target = data[1]
    assert target.tolist() == [float(str(k) in rows_of(ml_set, "train")[1]["labels"].split(";")) for k in range(5)]


def rows_of(root: Path, split: str) -> list[dict[str, str]]:
    return [r for r in _rows(root) if r["split"] == split]


def test_pixels(ml_set: Path) -> None:
    """Each artefact is its label's square at the biased digits' position; outside the mask and the artefacts an
    image is black; the mask never touches an artefact; the three test splits differ only in the artefacts."""
    positions = artefact_positions(40)
    splits = {s: rows_of(ml_set, s) for s in ("test_biased", "test_unbiased", "test_confounding")}
    for i in range(len(splits["test_biased"])):
        masks = [np.asarray(Image.open(ml_set / splits[s][i]["mask"])) > 0 for s in splits]
        assert all((m == masks[0]).all() for m in masks) and masks[0].any()
        images = {s: np.asarray(Image.open(ml_set / splits[s][i]["image"])) for s in splits}
        for s, image in images.items():
            art = np.zeros_like(masks[0])
            for k in _codes(splits[s][i]["artefacts"]):
                y, x, side = positions[k]
                assert (image[y:y + side, x:x + side] == 255).all()
                art[y:y + side, x:x + side] = True
            assert not (art & masks[0]).any()
            assert (image[~(art | masks[0])] == 0).all()
            assert (image[masks[0]] == images["test_unbiased"][masks[0]]).all()


def test_same_seed_same_bytes(ml_set: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_biased_multilabel(again, labels=5, per_class_train=4, per_class_val=2, per_class_test=4, seed=1,
                            progress=False)
    assert (again / "manifest.csv").read_bytes() == (ml_set / "manifest.csv").read_bytes()
    for r in _rows(ml_set)[::7]:
        assert (again / r["image"]).read_bytes() == (ml_set / r["image"]).read_bytes()
    other = tmp_path / "other"
    write_biased_multilabel(other, labels=5, per_class_train=4, per_class_val=2, per_class_test=4, seed=2,
                            progress=False)
    assert (other / "manifest.csv").read_bytes() != (ml_set / "manifest.csv").read_bytes()


@pytest.mark.parametrize("kwargs, match", [({"labels": 3}, "labels must be an int in 4 .. 10"),
                                           ({"labels": 11}, "labels must be"),
                                           ({"size": 24}, "at least 32"),
                                           ({"per_class_train": 0}, "per_class_train must be a positive int")])
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        write_biased_multilabel(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()
