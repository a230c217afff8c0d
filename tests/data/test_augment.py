"""Augmentation with torchvision's transforms.v2: the mask follows the image through every transform, draws are a
function of (seed, epoch, image), and a missing torchvision is one clear error."""

from __future__ import annotations

import sys

import pytest
import torch

from isnet_kernels.data.augment import Augmented, item_seed, load_v2, standard_transform
from isnet_kernels.errors import MissingDependencyError


def _pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose bright pixels are exactly its mask's foreground: an off-centre L-shaped object, so that flips
    and crops move it visibly."""
    mask = torch.zeros(1, size, size)
    mask[0, 4:20, 3:11] = 1
    mask[0, 14:20, 11:24] = 1
    image = (0.1 + 0.8 * mask).expand(3, -1, -1).clone()
    return image, mask


def _aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    """Every clearly bright pixel is foreground, every clearly dark one background; the rest (edges blurred by the
    image's bilinear resampling) are few."""
    grey = image.mean(0)
    fg = mask[0] > 0.5
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert fg[grey > 0.75].all() and not fg[grey < 0.25].any()
    assert ((grey > 0.5) != fg).float().mean() < 0.06


def test_each_transform_keeps_the_mask_on_its_image() -> None:
    v2, tv = load_v2()
    image, mask = _pair()
    # the crop: image bilinear, mask nearest at pixel centres; several draws, each must move the object
    crop = standard_transform((32, 32), 3).transforms[0]
    moved = 0
    for seed in range(16):
        torch.manual_seed(seed)
        x, m = crop(tv.Image(image), tv.Mask(mask))
        _aligned(x, m)
        moved += not torch.equal(m, mask)
    assert moved >= 14
    # the flip: exact
    x, m = v2.RandomHorizontalFlip(p=1.0)(tv.Image(image), tv.Mask(mask))
    assert torch.equal(m, mask.flip(-1)) and torch.equal(x.as_subclass(torch.Tensor), image.flip(-1))
    _aligned(x, m)
    # the colour jitter: the image only
    torch.manual_seed(0)
    x, m = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)(tv.Image(image), tv.Mask(mask))
    assert torch.equal(m, mask) and not torch.equal(x.as_subclass(torch.Tensor), image)
    _aligned(x, m)
    # the whole pipeline, colour and grey
    for channels in (3, 1):
        pipeline = standard_transform((32, 32), channels)
        for seed in range(5):
            torch.manual_seed(seed)
            x, m = pipeline(tv.Image(image[:channels]), tv.Mask(mask))
            assert x.shape == (channels, 32, 32) and m.shape == (1, 32, 32)
            _aligned(x.expand(3, -1, -1), m)


class _Items(torch.utils.data.Dataset):
    classes = ["a"]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        image, mask = _pair()
        return image, mask, index


def test_draws_depend_on_seed_epoch_and_image_only() -> None:
    data = Augmented(_Items(), seed=3)
    torch.manual_seed(0)
    a = data[1]
    state = torch.get_rng_state()
    torch.manual_seed(12345)  # the process's random state does not matter, and is not consumed
    b = data[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2] == 1
    torch.manual_seed(0)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(data[2][1], a[1]) or not torch.equal(data[2][0], a[0])  # another image, other draws
    data.set_epoch(1)
    c = data[1]
    assert not torch.equal(c[0], a[0])
    again = Augmented(_Items(), seed=3)
    again.set_epoch(1)
    assert torch.equal(again[1][0], c[0])  # a new process (a resumed run) draws the same
    assert Augmented(_Items(), seed=4)[1][0].ne(a[0]).any()
    assert data.classes == ["a"] and len(data) == 4
    assert item_seed(0, 0, 1) != item_seed(0, 1, 0) != item_seed(1, 0, 0)
    none = Augmented(_Items(), "none")
    assert torch.equal(none[0][0], _pair()[0])


def test_missing_torchvision_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(MissingDependencyError, match="--augment standard needs torchvision .*--augment none") as exc:
        Augmented(_Items(), "standard")
    assert exc.value.params == ("augment",) and "\n" not in str(exc.value)
    Augmented(_Items(), "none")  # no torchvision needed
