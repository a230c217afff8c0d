"""Importers: manifests from miniature copies of the Oxford-IIIT Pet, CUB-200-2011 and Waterbirds layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from isnet_kernels.data import DataError, ManifestDataset, MaskConvention, check_masks, import_dataset
from isnet_kernels.data.manifest import dataset_splits

from .layouts import write_cub, write_pet, write_waterbirds


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_oxford_pet(tmp_path: Path) -> None:
    root = write_pet(tmp_path / "oxford-iiit-pet")
    info = import_dataset("oxford-pet", root, tmp_path / "out" / "pet.csv")
    assert info["counts"] == {"test": 4, "train": 10, "val": 2} and info["classes"] == 2
    assert info["groups"] == ["cat", "dog"] and "--mask-foreground 1" in info["mask_option"]
    rows = _rows(tmp_path / "out" / "pet.csv")
    assert rows[0]["image"] == "../oxford-iiit-pet/images/Abyssinian_1.jpg"
    assert rows[0]["mask"] == "../oxford-iiit-pet/annotations/trimaps/Abyssinian_1.png"
    assert {r["label"] for r in rows} == {"Abyssinian", "american_bulldog"}
    assert sum(r["split"] == "val" and r["label"] == "Abyssinian" for r in rows) == 1  # 10% of 6, at least one
    assert dataset_splits(tmp_path / "out" / "pet.csv") == ["test", "train", "val"]
    raw = ManifestDataset(tmp_path / "out" / "pet.csv", "train", size=16)
    with pytest.raises(DataError, match="pixel values 1, 2, 3 found.*try --mask-foreground 1"):
        check_masks(raw)
    pet = ManifestDataset(tmp_path / "out" / "pet.csv", "train", size=16, mask_convention=MaskConvention((1,)))
    report = check_masks(pet)
    assert not report.all_foreground and 0.2 < report.fractions.mean() < 0.4  # the pet's 12 x 11 of ~24 x 21
    image, mask, label = pet[0]
    assert image.shape == (3, 16, 16) and mask.shape == (1, 16, 16) and label == 0
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        import_dataset("oxford-pet", root, tmp_path / "out" / "pet.csv")
    assert import_dataset("oxford-pet", root, tmp_path / "out" / "pet.csv", overwrite=True, val_fraction=0)[
        "counts"] == {"test": 4, "train": 12}


def test_oxford_pet_missing_files(tmp_path: Path) -> None:
    root = write_pet(tmp_path / "pet")
    (root / "annotations" / "trimaps" / "Abyssinian_2.png").unlink()
    with pytest.raises(DataError, match="trainval.txt lists Abyssinian_2, but its trimap .* does not exist"):
        import_dataset("oxford-pet", root, tmp_path / "pet.csv")
    with pytest.raises(DataError, match="images/ of the Oxford-IIIT Pet layout"):
        import_dataset("oxford-pet", tmp_path / "nowhere", tmp_path / "pet.csv")


def test_cub_segmentations_and_boxes(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "CUB_200_2011")
    info = import_dataset("cub", root, tmp_path / "cub.csv")
    assert info["counts"] == {"test": 4, "train": 10, "val": 2} and "--mask-threshold 0.5" in info["mask_option"]
    rows = _rows(tmp_path / "cub.csv")
    assert rows[0]["label"] == "001.Black_footed_Albatross" and rows[0]["box"] == "4 5 20 17"
    assert rows[0]["mask"] == "segmentations/001.Black_footed_Albatross/Black_footed_Albatross_0000_1.png"
    seg = ManifestDataset(tmp_path / "cub.csv", "train", mask_convention=MaskConvention(threshold=0.5))
    soft = ManifestDataset(tmp_path / "cub.csv", "train")
    first_test = [r for r in rows if r["split"] == "train"][0]
    assert first_test["image"].endswith("_0000_1.jpg")
    assert seg[0][1].sum() == 15 * 12 and soft[0][1].sum() == 16 * 12  # the soft edge column is under 0.5
    info = import_dataset("cub", root, tmp_path / "boxes.csv", boxes_only=True)
    assert "mask" not in _rows(tmp_path / "boxes.csv")[0]
    boxes = ManifestDataset(tmp_path / "boxes.csv", "test")
    _, mask, _ = boxes[0]
    row = _rows(tmp_path / "boxes.csv")[6]
    x0, y0, x1, y1 = (int(float(v)) for v in row["box"].split())
    assert mask.sum() == (x1 - x0) * (y1 - y0) and mask[0, y0:y1, x0:x1].all()


def test_cub_errors(tmp_path: Path) -> None:
    root = write_cub(tmp_path / "CUB_200_2011")
    seg = next((tmp_path / "segmentations").rglob("*.png"))
    seg.unlink()
    with pytest.raises(DataError, match="no segmentation .* --boxes-only"):
        import_dataset("cub", root, tmp_path / "cub.csv")
    (root / "bounding_boxes.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match="bounding_boxes.txt, line 1: expected 5 fields"):
        import_dataset("cub", root, tmp_path / "cub.csv", boxes_only=True)


def test_waterbirds_groups(tmp_path: Path) -> None:
    root = write_waterbirds(tmp_path / "waterbird_complete95_forest2water2", tmp_path / "segmentations")
    info = import_dataset("waterbirds", root, tmp_path / "wb.csv")
    assert info["counts"] == {"test": 4, "train": 12, "val": 4}
    assert info["groups"] == ["landbird_on_land", "landbird_on_water", "waterbird_on_land", "waterbird_on_water"]
    ds = ManifestDataset(tmp_path / "wb.csv", "train", mask_convention=MaskConvention(threshold=0.5))
    assert ds.classes == ["landbird", "waterbird"]
    assert ds.groups.count("waterbird_on_water") == 5 and ds.groups.count("waterbird_on_land") == 1
    assert ds[0][1].sum() == 64
    with pytest.raises(DataError, match="Waterbirds ships none.*--segmentations DIR"):
        import_dataset("waterbirds", _without_segmentations(tmp_path, root), tmp_path / "wb2.csv")


def _without_segmentations(tmp_path: Path, root: Path) -> Path:
    """A copy of the Waterbirds folder somewhere no segmentations folder sits beside it."""
    import shutil

    copy = tmp_path / "elsewhere" / "wb"
    shutil.copytree(root, copy)
    return copy


def test_unknown_source(tmp_path: Path) -> None:
    from isnet_kernels.errors import InputError

    with pytest.raises(InputError, match="unknown source 'imagenet'"):
        import_dataset("imagenet", tmp_path, tmp_path / "x.csv")
