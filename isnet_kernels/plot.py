"""Heatmap figures: a diverging colour map, image overlays and a PNG grid of image | heatmap panels.

Relevance is signed. Positive relevance (evidence for the explained class) is drawn red, negative relevance
(evidence against it) blue, and zero white. Each map is scaled by its own largest absolute value, so the
colour scale is symmetric around zero and a map that is zero everywhere is drawn white.

The figures are drawn with matplotlib's Agg canvas directly; this module never touches ``pyplot`` or the
global backend, so it is safe to call from training loops, threads and headless machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

ArrayLike = Tensor | np.ndarray

__all__ = ["heatmap_grid_array", "heatmap_to_rgb", "overlay", "save_heatmap_grid"]


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """A float64 numpy copy of a tensor or array (detached, on the CPU)."""
    if isinstance(x, Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _heatmap_2d(heatmap: ArrayLike) -> np.ndarray:
    """A heatmap as a finite (H, W) float64 array; a (C, H, W) map is summed over its channels."""
    h = _to_numpy(heatmap)
    if h.ndim == 3:
        h = h.sum(axis=0)
    if h.ndim != 2:
        raise InputError(f"heatmap must have shape (H, W) or (C, H, W), got {tuple(h.shape)}")
    return np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)


def heatmap_to_rgb(heatmap: ArrayLike, vmax: float | None = None) -> np.ndarray:
    """Colour a relevance map with a diverging red (positive) / white (zero) / blue (negative) scale.

    Parameters
    ----------
    heatmap : Tensor or ndarray, shape (H, W) or (C, H, W)
        Signed relevance. A (C, H, W) map is summed over channels first (relevance is additive).
    vmax : float, optional
        The absolute value drawn at full colour. Defaults to the map's largest absolute value, so the
        scale is symmetric around zero. Values beyond ``vmax`` are clipped.

    Returns
    -------
    ndarray, shape (H, W, 3), dtype uint8
        RGB image. A value ``v`` in [0, 1] of ``heatmap / vmax`` becomes ``(1, 1 - v, 1 - v)`` (red),
        a value in [-1, 0] becomes ``(1 + v, 1 + v, 1)`` (blue). A map that is zero everywhere (or has
        no finite non-zero value) is white. NaN and infinite entries are drawn as zero.
    """
    h = _heatmap_2d(heatmap)
    scale = float(np.abs(h).max()) if vmax is None else float(vmax)
    if not np.isfinite(scale) or scale <= 0.0:
        v = np.zeros_like(h)
    else:
        v = np.clip(h / scale, -1.0, 1.0)
    pos = np.clip(v, 0.0, 1.0)
    neg = np.clip(-v, 0.0, 1.0)
    rgb = np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)


def _image_rgb(image: ArrayLike) -> np.ndarray:
    """An image as an (H, W, 3) float array in [0, 1].

    Accepts (H, W), (1, H, W), (3, H, W) (channels first, as tensors are), (H, W, 1) or (H, W, 3). uint8
    arrays are divided by 255; float images already in [0, 1] are kept; anything else (for example a
    normalised input) is min-max scaled for display.
    """
    is_uint8 = isinstance(image, np.ndarray) and image.dtype == np.uint8
    img = _to_numpy(image)
    # Tensors are channels first; arrays are channels first only when the last axis cannot be channels.
    if img.ndim == 3 and img.shape[0] in (1, 3) and (isinstance(image, Tensor) or img.shape[-1] not in (1, 3)):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise InputError(
            f"image must have shape (H, W), (C, H, W) or (H, W, C) with C in (1, 3), got {tuple(img.shape)}"
        )
    img = np.nan_to_num(img)
    if is_uint8:
        img = img / 255.0
    else:
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.clip(img, 0.0, 1.0)


def overlay(image: ArrayLike, heatmap: ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """Blend a coloured heatmap over an image.

    Parameters
    ----------
    image : Tensor or ndarray
        Shape (H, W), (C, H, W) or (H, W, C) with C in (1, 3); floats in [0, 1] (other ranges are min-max
        scaled for display) or uint8.
    heatmap : Tensor or ndarray, shape (H, W) or (C, H, W)
        Signed relevance of the same height and width, coloured by :func:`heatmap_to_rgb`.
    alpha : float, default 0.5
        Weight of the heatmap: 0 returns the image, 1 the coloured heatmap.

    Returns
    -------
    ndarray, shape (H, W, 3), dtype uint8
        ``(1 - alpha) * image + alpha * heatmap_to_rgb(heatmap)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    img = _image_rgb(image)
    heat = heatmap_to_rgb(heatmap).astype(np.float64) / 255.0
    if img.shape[:2] != heat.shape[:2]:
        raise InputError(f"image is {img.shape[:2]} but heatmap is {heat.shape[:2]}; they must match")
    out = (1.0 - alpha) * img + alpha * heat
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _rows(x: ArrayLike | Sequence[ArrayLike]) -> list[ArrayLike]:
    """Split a batch (tensor or array with a leading row axis) or a sequence into a list of rows."""
    if isinstance(x, (Tensor, np.ndarray)):
        return [x[i] for i in range(x.shape[0])]
    return list(x)


def _mask_rgb(mask: ArrayLike) -> np.ndarray:
    """A foreground mask (H, W) or (1, H, W) as an (H, W, 3) float image: white foreground, black background."""
    m = _to_numpy(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InputError(f"mask must have shape (H, W) or (1, H, W), got {tuple(m.shape)}")
    return np.repeat((np.nan_to_num(m) != 0).astype(np.float64)[..., None], 3, axis=-1)


def heatmap_grid_array(images: ArrayLike | Sequence[ArrayLike], heatmaps: ArrayLike | Sequence[ArrayLike],
                       masks: ArrayLike | Sequence[ArrayLike] | None = None, *, min_cell: int = 64,
                       gap: int = 2) -> np.ndarray:
    """One RGB array of image | mask | heatmap panels, a row per image: what a training logger shows (TensorBoard's
    ``add_image`` takes it with ``dataformats="HWC"``). No matplotlib: the panels are the pixels themselves.

    ``images`` N images (a (N, C, H, W) batch, or a sequence), drawn as :func:`overlay` draws them (min-max scaled
    when outside [0, 1]); ``heatmaps`` N maps (H, W) or (C, H, W), coloured by :func:`heatmap_to_rgb`;
    ``masks`` N masks (H, W) or (1, H, W) (white foreground; the column is left out when None). Each panel is
    enlarged by an integer factor (nearest neighbour) to at least ``min_cell`` pixels a side; panels are ``gap``
    white pixels apart. Returns an (rows, columns, 3) uint8 array.
    """
    image_rows, heat_rows = _rows(images), _rows(heatmaps)
    mask_rows = _rows(masks) if masks is not None else None
    n = len(image_rows)
    if n == 0:
        raise InputError("heatmap_grid_array needs at least one image")
    if len(heat_rows) != n or (mask_rows is not None and len(mask_rows) != n):
        raise InputError(f"got {n} images, {len(heat_rows)} heatmaps and "
                         f"{len(mask_rows) if mask_rows is not None else 'no'} masks; pass one of each per image")
    rows = []
    for i in range(n):
        panels = [_image_rgb(image_rows[i])]
        if mask_rows is not None:
            panels.append(_mask_rgb(mask_rows[i]))
        panels.append(heatmap_to_rgb(heat_rows[i]).astype(np.float64) / 255.0)
        shape = panels[0].shape[:2]
        if any(p.shape[:2] != shape for p in panels):
            raise InputError(f"image {i} is {shape} but its mask or heatmap is "
                             f"{[p.shape[:2] for p in panels[1:]]}; they must match")
        rows.append(panels)
    h, w = rows[0][0].shape[:2]
    if any(p.shape[:2] != (h, w) for r in rows for p in r):
        raise InputError("every image of a grid must have the same size")
    factor = max(1, -(-min_cell // max(min(h, w), 1)))
    ch, cw = h * factor, w * factor
    cols = len(rows[0])
    out = np.ones((n * ch + (n - 1) * gap, cols * cw + (cols - 1) * gap, 3))
    for i, panels in enumerate(rows):
        for j, p in enumerate(panels):
            y, x = i * (ch + gap), j * (cw + gap)
            out[y:y + ch, x:x + cw] = np.kron(p, np.ones((factor, factor, 1)))
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_heatmap_grid(
    images: ArrayLike | Sequence[ArrayLike],
    heatmaps: ArrayLike | Sequence[ArrayLike],
    path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
    masks: ArrayLike | Sequence[ArrayLike] | None = None,
    *,
    per_row: int = 1,
    cell_size: float = 2.0,
    dpi: int = 100,
) -> Path:
    """Write a PNG figure of image | heatmap(s) | (heatmap over image with the mask's outline) groups.

    Parameters
    ----------
    images : Tensor, ndarray or sequence
        N images, each (H, W), (C, H, W) or (H, W, C), for example a (N, C, H, W) batch.
    heatmaps : Tensor, ndarray or sequence
        N heatmaps, each (H, W) or (C, H, W) (one heatmap panel), or (M, C, H, W) (M heatmap panels, for
        the (B, M, C, H, W) output of ``LRP``). Each map gets its own colour scale, symmetric around zero.
    path : str or PathLike
        Output file (PNG). Parent folders are created.
    titles : sequence of str, optional
        One title per image, shown above it.
    masks : Tensor, ndarray or sequence, optional
        N foreground masks, each (H, W) or (1, H, W), 1 = foreground. Adds a panel with the first heatmap
        blended over the image and the mask's outline drawn on it.
    per_row : int, default 1
        Image groups side by side in one row of the figure.
    cell_size : float, default 2.0
        Width and height of one panel in inches.
    dpi : int, default 100
        Resolution. The PNG is exactly ``(columns * cell_size * dpi, rows * cell_size * dpi)`` pixels, with
        ``columns = per_row * panels per image`` and ``rows = ceil(N / per_row)``.

    Returns
    -------
    Path
        The written file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image_rows = _rows(images)
    heat_rows = _rows(heatmaps)
    mask_rows = _rows(masks) if masks is not None else None
    n = len(image_rows)
    if n == 0:
        raise InputError("save_heatmap_grid needs at least one image")
    if len(heat_rows) != n:
        raise InputError(f"got {n} images but {len(heat_rows)} heatmaps")
    if titles is not None and len(titles) != n:
        raise InputError(f"got {n} images but {len(titles)} titles")
    if mask_rows is not None and len(mask_rows) != n:
        raise InputError(f"got {n} images but {len(mask_rows)} masks")
    if per_row < 1:
        raise InputError(f"per_row must be a positive int, got {per_row}")

    heat_lists: list[list[ArrayLike]] = []
    for h in heat_rows:
        ndim = h.ndim if isinstance(h, (Tensor, np.ndarray)) else np.ndim(h)
        if ndim == 4:
            heat_lists.append(_rows(h))
        elif ndim in (2, 3):
            heat_lists.append([h])
        else:
            raise InputError(f"each heatmap must have shape (H, W), (C, H, W) or (M, C, H, W), got {ndim} dims")
    n_maps = max(len(hs) for hs in heat_lists)
    panels = 1 + n_maps + (1 if mask_rows is not None else 0)
    per_row = min(per_row, n)
    nrows, ncols = -(-n // per_row), per_row * panels

    fig = Figure(figsize=(ncols * cell_size, nrows * cell_size), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        row = axes[i // per_row, (i % per_row) * panels :]
        first_row = i < per_row
        img = _image_rgb(image_rows[i])
        row[0].imshow(img, interpolation="nearest")
        if titles is not None:
            row[0].set_title(str(titles[i]), fontsize=8)
        for m, h in enumerate(heat_lists[i]):
            row[1 + m].imshow(heatmap_to_rgb(h), interpolation="nearest")
            if first_row:
                row[1 + m].set_title("relevance" if n_maps == 1 else f"map {m}", fontsize=8)
        if mask_rows is not None:
            ax = row[panels - 1]
            ax.imshow(overlay(img, heat_lists[i][0]), interpolation="nearest")
            mask = _to_numpy(mask_rows[i])
            if mask.ndim == 3:
                mask = mask.max(axis=0)
            if mask.min() != mask.max():
                ax.contour(mask, levels=[0.5], colors="lime", linewidths=1.0)
            if first_row:
                ax.set_title("overlay + mask", fontsize=8)
    height = nrows * cell_size
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.05 / height, top=1 - 0.3 / height, wspace=0.05, hspace=0.2)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
