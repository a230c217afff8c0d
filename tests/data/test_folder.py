"""Tests for ``isnet_kernels.data.folder``: reading, resizing, channel conversion and every bad-data error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from isnet_kernels.data import DataError, MaskedImageFolder, splits


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _half_mask(h: int = 6, w: int = 8, value: int = 255) -> np.ndarray:
    """Foreground on the left half."""
    m = np.zeros((h, w), dtype=np.uint8)
    m[:, : w // 2] = value
    return m


def _pair(root: Path, split: str, cls: str, name: str, image: np.ndarray, mask: np.ndarray | None = None) -> Path:
    """Write an image and (unless ``mask`` is None) its mask as PNG at the same relative path."""
    path = _save(root / "images" / split / cls / name, image)
    if mask is not None:
        _save(root / "masks" / split / cls / Path(name).with_suffix(".png"), mask)
    return path


def _grey(value: int, h: int = 6, w: int = 8) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


@pytest.fixture
def grey_root(tmp_path: Path) -> Path:
    """Two classes given out of order ("zebra", "ant"), two grey images each, masks in several encodings."""
    _pair(tmp_path, "train", "zebra", "a.png", _grey(10), _half_mask())
    _pair(tmp_path, "train", "zebra", "b.png", _grey(20), _half_mask(value=1))  # 0/1 label map
    _pair(tmp_path, "train", "ant", "c.png", _grey(30), _half_mask())
    rgb_mask = np.zeros((6, 8, 3), dtype=np.uint8)
    rgb_mask[:, :4, 2] = 7  # only the blue channel marks the foreground
    _pair(tmp_path, "train", "ant", "d.png", _grey(255), rgb_mask)
    _pair(tmp_path, "val", "ant", "e.png", _grey(0), _half_mask())
    return tmp_path


def test_splits_lists_split_folders_sorted(grey_root):
    (grey_root / "images" / ".cache").mkdir()
    (grey_root / "images" / "notes.txt").write_text("not a split")
    assert splits(grey_root) == ["train", "val"]
    assert splits(str(grey_root)) == ["train", "val"]


def test_grey_images_labels_and_binary_masks(grey_root):
    ds = MaskedImageFolder(grey_root, "train")
    assert ds.classes == ["ant", "zebra"] and ds.class_to_idx == {"ant": 0, "zebra": 1}
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1]
    assert [Path(p).name for p, _, _ in ds.samples] == ["c.png", "d.png", "a.png", "b.png"]
    assert all(Path(m).parent.parts[-3:] == ("masks", "train", Path(p).parent.name) for p, m, _ in ds.samples)
    expected_mask = torch.zeros(1, 6, 8)
    expected_mask[..., :4] = 1.0
    for i, value in enumerate([30, 255, 10, 20]):
        image, mask, label = ds[i]
        assert image.shape == (1, 6, 8) and image.dtype == torch.float32
        assert torch.allclose(image, torch.full((1, 6, 8), value / 255.0))
        assert mask.dtype == torch.float32 and torch.equal(mask, expected_mask)  # 255, 1 and blue-only masks
        assert label == ds.targets[i]
    ds.verify(progress=False)


def test_rgb_images_and_channel_conversion(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    _pair(tmp_path, "train", "x", "a.png", rgb, _half_mask(5, 7))
    image, _, _ = MaskedImageFolder(tmp_path, "train")[0]
    assert image.shape == (3, 5, 7)
    assert torch.allclose(image, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    grey, _, _ = MaskedImageFolder(tmp_path, "train", channels=1)[0]
    luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255  # Pillow's own conversion
    assert grey.shape == (1, 5, 7) and np.abs(grey[0].numpy() - luma).max() <= 1 / 255 + 1e-6

    _pair(tmp_path, "other", "x", "g.png", _grey(51, 5, 7), _half_mask(5, 7))
    three, _, _ = MaskedImageFolder(tmp_path, "other", channels=3)[0]
    assert three.shape == (3, 5, 7) and torch.allclose(three, torch.full((3, 5, 7), 0.2))
    with pytest.raises(ValueError, match="channels"):
        MaskedImageFolder(tmp_path, "other", channels=2)


def test_size_resizes_image_bilinear_and_mask_nearest(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (12, 1))
    _pair(tmp_path, "train", "x", "a.png", ramp, _half_mask(12, 16))
    image, mask, _ = MaskedImageFolder(tmp_path, "train", size=(6, 6))[0]  # 16 -> 6 columns: not a whole ratio
    assert image.shape == (1, 6, 6) and mask.shape == (1, 6, 6)
    # nearest neighbour: output column j reads input column floor((j + 0.5) * 16 / 6) = 1, 4, 6 | 9, 12, 14
    assert torch.equal(mask[0, :, :3], torch.ones(6, 3)) and torch.equal(mask[0, :, 3:], torch.zeros(6, 3))
    row = image[0, 0]
    assert bool((row[1:] > row[:-1]).all()) and 0.0 <= float(row.min()) and float(row.max()) <= 1.0
    assert torch.allclose(image[0], row.expand(6, 6))  # rows stay equal
    up, up_mask, _ = MaskedImageFolder(tmp_path, "train", size=24)[0]
    assert up.shape == up_mask.shape == (1, 24, 24)
    assert set(up_mask.unique().tolist()) == {0.0, 1.0} and float(up_mask.mean()) == 0.5  # still binary
    stripes = np.zeros((8, 16), dtype=np.uint8)
    stripes[:, ::4] = 255  # one bright column in four
    _pair(tmp_path, "stripes", "x", "s.png", stripes, _half_mask(8, 16))
    quarter, _, _ = MaskedImageFolder(tmp_path, "stripes", size=(2, 4))[0]
    # antialiased shrinking averages over each output pixel's footprint, so the mean brightness 1/4 survives;
    # sampling (nearest, or bilinear without antialias) would see only bright or only dark columns
    assert torch.allclose(quarter[..., 1:3], torch.full((1, 2, 2), 0.25), atol=0.01)


def test_mixed_sizes_need_size(tmp_path):
    _pair(tmp_path, "train", "x", "a.png", _grey(1), _half_mask())
    odd = _pair(tmp_path, "train", "y", "b.png", _grey(2, 10, 10), _half_mask(10, 10))
    ds = MaskedImageFolder(tmp_path, "train")
    ds[0]
    with pytest.raises(DataError, match=r"pass size=\(H, W\)") as info:
        ds[1]
    assert str(odd) in str(info.value) and "(10, 10)" in str(info.value)
    with pytest.raises(DataError, match="b.png"):
        ds.verify(progress=False)
    batch = next(iter(DataLoader(MaskedImageFolder(tmp_path, "train", size=(6, 8)), batch_size=2)))
    assert batch[0].shape == (2, 1, 6, 8) and batch[1].shape == (2, 1, 6, 8) and batch[2].tolist() == [0, 1]


def test_mixed_channels_need_channels(tmp_path):
    _pair(tmp_path, "train", "x", "a.png", _grey(1), _half_mask())
    colour = _pair(tmp_path, "train", "y", "b.png", np.zeros((6, 8, 3), dtype=np.uint8), _half_mask())
    with pytest.raises(DataError, match="channels=1 or channels=3") as info:
        MaskedImageFolder(tmp_path, "train")[1]
    assert str(colour) in str(info.value)
    assert MaskedImageFolder(tmp_path, "train", channels=3)[0][0].shape == (3, 6, 8)


def test_other_formats_nested_folders_and_mask_choice(tmp_path):
    _pair(tmp_path, "train", "x", "sub/deep.jpg", np.zeros((6, 8, 3), dtype=np.uint8), _half_mask())  # png mask
    _save(tmp_path / "images" / "train" / "x" / "b.bmp", _grey(40))
    _save(tmp_path / "masks" / "train" / "x" / "b.bmp", _half_mask())  # same extension: preferred
    _save(tmp_path / "masks" / "train" / "x" / "b.png", np.zeros((6, 8), dtype=np.uint8))
    _save(tmp_path / "images" / "train" / "x" / "C.PNG", _grey(50), format="PNG")
    _save(tmp_path / "masks" / "train" / "x" / "C.jpeg", _half_mask(), format="JPEG")
    (tmp_path / "images" / "train" / "x" / "notes.txt").write_text("ignored")
    ds = MaskedImageFolder(tmp_path, "train", channels=3)  # a colour JPEG among grey images
    names = [(Path(p).name, Path(m).name) for p, m, _ in ds.samples]
    assert names == [("C.PNG", "C.jpeg"), ("b.bmp", "b.bmp"), ("deep.jpg", "deep.png")]
    assert float(ds[1][1].sum()) == 24.0  # the .bmp mask was read, not the empty .png one
    assert ds[2][0].shape == ds[0][0].shape == (3, 6, 8)


def test_sixteen_bit_grey_levels(tmp_path):
    levels = np.full((6, 8), 32768, dtype=np.uint16)
    _pair(tmp_path, "train", "x", "a.png", levels, _half_mask())
    image, _, _ = MaskedImageFolder(tmp_path, "train")[0]
    assert image.shape == (1, 6, 8) and torch.allclose(image, torch.full_like(image, 32768 / 65535))


def test_without_masks(tmp_path):
    _pair(tmp_path, "test", "x", "a.png", _grey(255))
    ds = MaskedImageFolder(tmp_path, "test", masks=False)
    assert ds.samples[0][1] is None
    item = ds[0]
    assert len(item) == 2 and item[1] == 0 and torch.equal(item[0], torch.ones(1, 6, 8))
    ds.verify(progress=False)


# ---- bad data: every error names the file or folder and the fix -----------------------------------------


def test_missing_root_and_images_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        MaskedImageFolder(missing, "train")
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="no 'images' folder"):
        splits(tmp_path)


def test_missing_split_lists_the_splits(grey_root):
    with pytest.raises(DataError) as info:
        MaskedImageFolder(grey_root, "test")
    message = str(info.value)
    assert str(grey_root / "images" / "test") in message and "['train', 'val']" in message


def test_split_without_classes(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no class folders") as info:
        MaskedImageFolder(tmp_path, "train")
    assert str(tmp_path / "images" / "train") in str(info.value)


def test_empty_class_folder(grey_root):
    empty = grey_root / "images" / "train" / "empty_class"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images") as info:
        MaskedImageFolder(grey_root, "train")
    assert str(empty) in str(info.value) and "remove the folder" in str(info.value)


def test_missing_mask(grey_root):
    image = _pair(grey_root, "train", "ant", "lonely.png", _grey(3))
    (grey_root / "masks" / "train" / "ant" / "lonely.txt").write_text("not a mask")  # only image files count
    with pytest.raises(DataError, match="no mask for image") as info:
        MaskedImageFolder(grey_root, "train")
    message = str(info.value)
    assert str(image) in message and str(grey_root / "masks" / "train" / "ant" / "lonely.png") in message
    assert "masks=False" in message
    assert len(MaskedImageFolder(grey_root, "train", masks=False)) == 5


def test_missing_mask_folders(tmp_path):
    _pair(tmp_path, "train", "x", "a.png", _grey(1))
    with pytest.raises(DataError, match="mask folder .* does not exist") as info:
        MaskedImageFolder(tmp_path, "train")
    assert str(tmp_path / "masks" / "train") in str(info.value)
    _pair(tmp_path, "train", "y", "b.png", _grey(1), _half_mask())  # masks/train exists, masks/train/x not
    with pytest.raises(DataError, match="does not exist") as info:
        MaskedImageFolder(tmp_path, "train")
    assert str(tmp_path / "masks" / "train" / "x") in str(info.value)


def test_mask_size_differs_from_its_image(grey_root):
    mask = _save(grey_root / "masks" / "train" / "zebra" / "b.png", _half_mask(6, 9))
    ds = MaskedImageFolder(grey_root, "train", size=(6, 8))  # resizing does not excuse a wrong mask
    ds[2]
    with pytest.raises(DataError, match="must be the size of its image") as info:
        ds[3]
    message = str(info.value)
    assert str(mask) in message and str(grey_root / "images" / "train" / "zebra" / "b.png") in message
    with pytest.raises(DataError, match="zebra.b.png"):
        ds.verify(progress=False)


@pytest.mark.parametrize("what", ["image", "mask"])
def test_unreadable_files(grey_root, what):
    bad = grey_root / f"{what}s" / "train" / "zebra" / "a.png"
    bad.write_bytes(b"this is not a PNG file")
    ds = MaskedImageFolder(grey_root, "train")  # construction looks at paths only
    ds[0]
    with pytest.raises(DataError, match=f"cannot read {what} file") as info:
        ds[2]
    assert str(bad) in str(info.value) and "replace or delete" in str(info.value)


def test_truncated_image(grey_root):
    rng = np.random.default_rng(1)
    path = _pair(grey_root, "val", "ant", "e.png", rng.integers(0, 256, (64, 64), dtype=np.uint8), _half_mask(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read image file") as info:
        MaskedImageFolder(grey_root, "val")[0]
    assert str(path) in str(info.value)


def test_verify_stops_at_the_first_bad_file(grey_root):
    first_bad = grey_root / "masks" / "train" / "zebra" / "a.png"
    first_bad.write_bytes(b"broken")
    (grey_root / "images" / "train" / "zebra" / "b.png").write_bytes(b"broken too")
    ds = MaskedImageFolder(grey_root, "train")
    with pytest.raises(DataError) as info:
        ds.verify(progress=False)
    assert str(first_bad) in str(info.value) and "b.png" not in str(info.value)


def test_bad_arguments(grey_root):
    for size in [0, (6,), (6, -1), "big", (6.5, 8)]:
        with pytest.raises(ValueError, match="size"):
            MaskedImageFolder(grey_root, "train", size=size)
