"""``inspect_data``: per-split counts, sizes, foreground fractions, degenerate masks with their cause, groups, and a
figure."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from isnet_kernels.data import MaskConvention, import_dataset, inspect_data
from isnet_kernels.data.inspect import format_inspection

from .layouts import write_pet


@pytest.fixture
def pet_manifest(tmp_path: Path) -> Path:
    import_dataset("oxford-pet", write_pet(tmp_path / "pet"), tmp_path / "pet.csv")
    return tmp_path / "pet.csv"


def test_raw_trimaps_are_reported_with_the_fix(pet_manifest: Path, tmp_path: Path) -> None:
    result = inspect_data(pet_manifest, figure=tmp_path / "fig.png", images=5)
    train = result["splits"]["train"]
    assert list(result["splits"]) == ["test", "train", "val"]
    assert train["images"] == 10 and train["per_class"] == {"Abyssinian": 5, "american_bulldog": 5}
    assert sum(train["sizes"].values()) == 10 and set(train["sizes"]) <= {"24x20", "26x20", "24x21", "26x21",
                                                                          "24x22", "26x22"}
    assert train["all_foreground"] == 10 and train["foreground_fraction"]["min"] == 1.0
    assert "try --mask-foreground 1" in train["problem"] and train["groups"] == {"cat": 5, "dog": 5}
    text = format_inspection(result)
    assert "split train: 10 images, 2 classes (Abyssinian 5, american_bulldog 5)" in text
    assert "training would refuse this split" in text and "all foreground 10 (100.0%)" in text
    assert Image.open(tmp_path / "fig.png").size[0] > 100 and result["figure"] == str(tmp_path / "fig.png")


def test_with_the_convention(pet_manifest: Path) -> None:
    result = inspect_data(pet_manifest, ["train"], mask_convention=MaskConvention((1,)))
    train = result["splits"]["train"]
    q = train["foreground_fraction"]
    assert train["problem"] is None and train["all_foreground"] == 0 and train["all_background"] == 0
    assert 0.2 < q["min"] <= q["q1"] <= q["median"] <= q["q3"] <= q["max"] < 0.35  # 12 x 11 pet of 24..26 x 20..22
    assert result["mask_convention"] == "--mask-foreground 1"
    assert "training would refuse" not in format_inspection(result)


def test_multilabel_counts_every_label(tmp_path: Path) -> None:
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,labels,box\na.png,edema;effusion,0 0 4 4\na.png,edema,0 0 8 4\n")
    split = inspect_data(tmp_path / "m.csv")["splits"]["all"]
    assert split["per_class"] == {"edema": 2, "effusion": 1}
    assert split["foreground_fraction"]["min"] == 0.25 and split["foreground_fraction"]["max"] == 0.5
