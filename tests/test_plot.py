"""Tests for ``isnet_kernels.plot``: colours, overlays and the PNG grid."""

import numpy as np
import pytest
import torch
from PIL import Image

from isnet_kernels.plot import heatmap_to_rgb, overlay, save_heatmap_grid


def test_heatmap_to_rgb_shape_dtype():
    rgb = heatmap_to_rgb(torch.randn(5, 7))
    assert rgb.shape == (5, 7, 3)
    assert rgb.dtype == np.uint8


def test_positive_is_red_negative_is_blue():
    h = torch.tensor([[2.0, -2.0], [0.5, -0.5]])
    rgb = heatmap_to_rgb(h).astype(int)
    r, g, b = rgb[0, 0]
    assert (r, g, b) == (255, 0, 0)  # the largest positive value is full red
    r, g, b = rgb[0, 1]
    assert (r, g, b) == (0, 0, 255)  # the largest negative value is full blue
    r, g, b = rgb[1, 0]
    assert r > g and r > b and g == b  # weaker positive: light red
    r, g, b = rgb[1, 1]
    assert b > r and b > g and r == g  # weaker negative: light blue


def test_scale_is_symmetric_around_zero():
    # +1 and -1 get the same colour strength, whatever else is in the map.
    rgb = heatmap_to_rgb(torch.tensor([[1.0, -1.0, 0.25]])).astype(int)
    assert rgb[0, 0, 1] == rgb[0, 1, 1] == 0
    assert rgb[0, 0, 0] == rgb[0, 1, 2] == 255
    # the scale is the largest |value|: a map that is mostly negative keeps positive values light
    rgb = heatmap_to_rgb(torch.tensor([[0.1, -1.0]])).astype(int)
    assert rgb[0, 0, 0] == 255 and rgb[0, 0, 1] > 200


def test_zero_map_is_white():
    rgb = heatmap_to_rgb(torch.zeros(4, 4))
    assert (rgb == 255).all()
    rgb = heatmap_to_rgb(np.full((3, 3), np.nan))
    assert (rgb == 255).all()


def test_channels_are_summed():
    h = torch.zeros(3, 2, 2)
    h[0, 0, 0] = 1.0
    h[1, 0, 0] = -3.0  # the pixel's total is -2: blue
    h[2, 1, 1] = 1.0
    rgb = heatmap_to_rgb(h).astype(int)
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    assert rgb[1, 1, 0] == 255 and rgb[1, 1, 2] < 255
    assert np.array_equal(heatmap_to_rgb(h), heatmap_to_rgb(h.sum(0)))


def test_rejects_bad_shape():
    with pytest.raises(ValueError, match="heatmap must have shape"):
        heatmap_to_rgb(torch.zeros(2, 2, 2, 2))


def test_overlay_blends():
    image = torch.zeros(1, 2, 2)  # black
    h = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    out = overlay(image, h, alpha=0.5)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    out = out.astype(int)
    assert tuple(out[0, 0]) == (128, 0, 0)
    assert tuple(out[0, 1]) == (0, 0, 128)
    assert tuple(out[1, 1]) == (128, 128, 128)
    assert (overlay(image, h, alpha=0.0) == 0).all()
    assert np.array_equal(overlay(image, h, alpha=1.0), heatmap_to_rgb(h))
    with pytest.raises(ValueError):
        overlay(image, h, alpha=1.5)
    with pytest.raises(ValueError):
        overlay(torch.zeros(1, 3, 3), h)


def test_overlay_accepts_channels_last_uint8():
    image = np.full((4, 4, 3), 255, dtype=np.uint8)
    out = overlay(image, torch.zeros(4, 4), alpha=0.3)
    assert (out == 255).all()


def _assert_png(path, size):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size
        pixels = np.asarray(im.convert("RGB")).astype(int)
    return pixels


def test_save_heatmap_grid_writes_png(tmp_path):
    images = torch.rand(3, 1, 8, 8)
    heatmaps = torch.randn(3, 1, 8, 8)
    path = save_heatmap_grid(images, heatmaps, tmp_path / "sub" / "grid.png", titles=["a", "b", "c"])
    assert path.exists()
    pixels = _assert_png(path, (2 * 200, 3 * 200))  # 2 columns x 3 rows of 2-inch panels at 100 dpi
    # the heatmap column contains both strongly red and strongly blue pixels
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 80) & (pixels[..., 1] < 80)
    assert red.any() and blue.any()


def test_save_heatmap_grid_with_masks_and_maps(tmp_path):
    images = torch.rand(2, 3, 16, 16)
    heatmaps = torch.randn(2, 2, 3, 16, 16)  # (B, M, C, H, W): two map columns
    masks = torch.zeros(2, 16, 16)
    masks[:, 4:12, 4:12] = 1
    path = save_heatmap_grid(images, heatmaps, tmp_path / "grid.png", masks=masks, dpi=50)
    _assert_png(path, (4 * 100, 2 * 100))  # image, 2 maps, overlay + mask


def test_save_heatmap_grid_per_row(tmp_path):
    # 5 image | heatmap groups, 2 per row: 3 rows of 4 panels, the last row half empty
    path = save_heatmap_grid(torch.rand(5, 1, 8, 8), torch.randn(5, 1, 8, 8), tmp_path / "g.png", per_row=2, dpi=40)
    _assert_png(path, (4 * 80, 3 * 80))
    with pytest.raises(ValueError, match="per_row"):
        save_heatmap_grid(torch.rand(1, 1, 8, 8), torch.randn(1, 1, 8, 8), tmp_path / "h.png", per_row=0)


def test_save_heatmap_grid_all_zero_heatmaps(tmp_path):
    path = save_heatmap_grid([np.zeros((8, 8))], [np.zeros((8, 8))], tmp_path / "zero.png")
    _assert_png(path, (400, 200))


def test_save_heatmap_grid_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="heatmaps"):
        save_heatmap_grid(torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="titles"):
        save_heatmap_grid(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), tmp_path / "x.png", titles=["a"])
    assert not (tmp_path / "x.png").exists()
