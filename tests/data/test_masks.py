"""Mask conventions (label maps, soft masks, inverted masks) and the check that refuses masks that penalise nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isnet_kernels.data import DataError, MaskConvention, MaskedImageFolder, check_masks
from isnet_kernels.data.masks import MaskWarning, decode_mask, parse_foreground
from isnet_kernels.errors import InputError


def _trimap(h: int = 6, w: int = 8) -> np.ndarray:
    """An Oxford-IIIT Pet trimap: 1 pet (a 2 x 4 block), 3 its border, 2 background."""
    t = np.full((h, w), 2, dtype=np.uint8)
    t[1:5, 1:7] = 3
    t[2:4, 2:6] = 1
    return t


def _folder(root: Path, masks: list[np.ndarray], ext: str = ".png", **save) -> Path:
    for k, mask in enumerate(masks):
        for kind, array in (("images", np.full(mask.shape[:2], 100, dtype=np.uint8)), ("masks", mask)):
            path = root / kind / "train" / "a" / f"{k}{ext if kind == 'masks' else '.png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path, **(save if kind == "masks" else {}))
    return root


def test_parse_foreground() -> None:
    assert parse_foreground("1") == (1,) and parse_foreground("3, 1") == (1, 3) and parse_foreground([2]) == (2,)
    assert parse_foreground(None) is None and parse_foreground("") is None
    for bad in ("x", "-1", "1.5", ","):
        with pytest.raises(InputError, match="mask_foreground") as exc:
            parse_foreground(bad)
        assert exc.value.params == ("mask_foreground",)
    with pytest.raises(InputError, match="exclude each other"):
        MaskConvention((1,), 0.5)
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        MaskConvention(threshold=0)


def test_trimap_conventions() -> None:
    im = Image.fromarray(_trimap())
    assert decode_mask(im, None, "t.png").all()  # the default: every trimap pixel is nonzero
    pet = decode_mask(im, MaskConvention((1,)), "t.png")
    assert pet.sum() == 8 and pet[2:4, 2:6].all()
    with_border = decode_mask(im, MaskConvention.from_options("1,3"), "t.png")
    assert with_border.sum() == 24 and with_border[1:5, 1:7].all()
    inverted = decode_mask(im, MaskConvention((1,), invert=True), "t.png")
    assert np.array_equal(inverted, ~pet)


def test_values_matching_no_foreground_is_an_error() -> None:
    im = Image.fromarray(_trimap())
    with pytest.raises(DataError, match=r"pixel values 1, 2, 3, none of them a --mask-foreground value \(255\)"):
        decode_mask(im, MaskConvention((255,)), "t.png")
    colour = np.zeros((4, 4, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match="colour image"):
        decode_mask(Image.fromarray(colour), MaskConvention((1,)), "c.png")


def test_palette_label_map_reads_indices() -> None:
    im = Image.fromarray(_trimap()).convert("P")  # indices stay the values 1, 2, 3
    im.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 0, 9, 9, 9] + [0] * 756)
    assert decode_mask(im, MaskConvention((1,)), "p.png").sum() == 8


def test_soft_mask_threshold_and_invert() -> None:
    soft = np.array([[0, 40, 128, 255]], dtype=np.uint8)
    im = Image.fromarray(soft)
    assert decode_mask(im, None, "s.png").tolist() == [[False, True, True, True]]
    assert decode_mask(im, MaskConvention(threshold=0.5), "s.png").tolist() == [[False, False, True, True]]
    assert decode_mask(im, MaskConvention(threshold=0.5, invert=True), "s.png").tolist() == \
        [[True, True, False, False]]
    rgb = np.zeros((1, 2, 3), dtype=np.uint8)
    rgb[0, 1, 2] = 200
    assert decode_mask(Image.fromarray(rgb), MaskConvention(threshold=0.5), "c.png").tolist() == [[False, True]]


def test_raw_pet_trimaps_refused_with_the_fix(tmp_path: Path) -> None:
    ds = MaskedImageFolder(_folder(tmp_path, [_trimap()] * 3), "train")
    with pytest.raises(DataError) as exc:
        check_masks(ds)
    message = str(exc.value)
    assert "3 of 3 masks of split 'train' (100.0%) are all foreground" in message
    assert "pixel values 1, 2, 3 found" in message and "try --mask-foreground 1" in message
    assert str(Path(ds.samples[0][1])) in message and exc.value.params == ("mask_check",)
    fixed = MaskedImageFolder(tmp_path, "train", mask_convention=MaskConvention((1,)))
    report = check_masks(fixed)
    assert report.images == 3 and not report.all_foreground and report.fractions.tolist() == [8 / 48] * 3
    _, mask, _ = fixed[0]
    assert mask.sum() == 8


def test_share_is_settable_and_reported(tmp_path: Path) -> None:
    good = np.zeros((6, 8), dtype=np.uint8)
    good[:, :4] = 255
    empty = np.zeros((6, 8), dtype=np.uint8)
    ds = MaskedImageFolder(_folder(tmp_path, [good] * 9 + [empty]), "train")
    lines: list[str] = []
    with pytest.raises(DataError, match="all background .*the masks are empty"):
        check_masks(ds, 0.05)
    report = check_masks(ds, 0.2, log=lines.append)
    assert report.share("all_background") == pytest.approx(0.1) and len(report.all_background) == 1
    assert "1 all background (10.0%)" in lines[0] and report.all_background[0] in lines[0]
    inverted = MaskedImageFolder(tmp_path, "train", mask_convention=MaskConvention(invert=True))
    with pytest.raises(DataError, match="all foreground .*--mask-invert is set"):
        check_masks(inverted, 0.05)


def test_jpeg_masks_warn_naming_the_threshold(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    ds = MaskedImageFolder(_folder(tmp_path, [mask] * 2, ext=".jpg", quality=50), "train")
    raw = Image.open(ds.samples[0][1])
    assert decode_mask(raw, None, "m.jpg").sum() > 64  # compression noise read as foreground
    with pytest.warns(MaskWarning, match="--mask-threshold"):
        report = check_masks(ds)
    assert len(report.lossy) == 2
    thresholded = MaskedImageFolder(tmp_path, "train", mask_convention=MaskConvention(threshold=0.5))
    assert decode_mask(raw, thresholded.mask_convention, "m.jpg").sum() == 64
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_masks(thresholded)
