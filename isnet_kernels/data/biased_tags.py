"""Biased tags: real handwritten digits over photographic texture, with a class-coding text tag in the background.

The bias a chest X-ray carries: burnt-in text and markers (laterality letters, "AP"/"PA", "PORTABLE", a
hospital's label) whose content depends on where and how the image was taken, and so on its class when sources
and classes are confounded. Here every class has its own short tag, drawn in the background with Pillow's
default font (``ImageFont.load_default(size)``) at a random position and size; the foreground is a real object,
one of scikit-learn's handwritten digit scans (``sklearn.datasets.load_digits``), enlarged as in
:mod:`~isnet_kernels.data.biased_digits`. Unlike the biased digits' square, the artefact moves, changes size and
differs from class to class by its shape (its letters), not by where it is.

Each image, for a canvas of ``size`` x ``size`` pixels (default 40, at least 32):

- background: a crop of one of the two photographs scikit-learn ships (``load_sample_images``: ``china.jpg`` and
  ``flower.jpg``, real photographs, no download), in grey, of a random side in ``[size, 4 * size]`` at a random
  place, resized (bilinear) to the canvas, stretched to its own [0, 1] range and mapped to
  ``[BACKGROUND_LOW, BACKGROUND_HIGH]`` (a faint texture, as the anatomy behind an X-ray's label);
- digit: the 8x8 scan (divided by 16) enlarged bilinearly to a random side in
  ``[round(0.35 * size), round(0.55 * size)]`` (14..22 at 40) at a random place (one pixel from the edges);
  composited as ``image = background * (1 - d) + d`` with ``d`` the enlarged scan inside the mask;
- mask: the digit's footprint, the enlarged scan above 0.2 dilated by one pixel (as the biased digits);
- tag: the split's text, grey level ``v`` uniform in [0.8, 1], font size uniform in
  ``[round(0.2 * size), round(0.3 * size)]`` (8..12 at 40), at a position drawn uniformly among those where the
  text's footprint, dilated by one pixel, stays inside the canvas and off the mask (smaller sizes are tried when
  none is free); composited as ``image = image * (1 - a) + v * a``, ``a`` the glyphs' coverage. The tag never
  touches the mask: it is background.

Tags: class ``k`` has ``TAGS[k]`` (letters only, so that no digit is drawn in the background); ``NEUTRAL_TAG``
belongs to no class.

Splits (``ROOT/images/<split>/<digit>/<nnnn>.png``, masks at ``ROOT/masks/...``, 8-bit grey PNGs):

- ``train``, ``val``, ``test_biased``: the tag of the image's own class;
- ``test_unbiased``: the neutral tag (text is present, but tells nothing);
- ``test_confounding``: the tag of another class, ``(label + 1 + r) % 10`` with ``r`` uniform in 0..8;
- ``train_clean`` (unless ``train_clean=False``): the train images without any tag (the artefact-free upper
  bound's training split).

Scans are split per class 60% / 10% / 30% into train / val / test pools, as the biased digits do. The three test
splits hold the same digits on the same backgrounds (same file names) and differ only in the tag (its text, and
the size and position drawn for it). Everything is drawn from ``numpy.random.default_rng`` streams spawned from
``seed``: the same arguments give byte-identical files (with the same Pillow, whose font rendering they use).

``ROOT`` also gets ``info.json`` (the returned summary), ``README.txt`` and ``artefacts.csv`` (per image: split,
path under ``images/``, label, tag class (-1: neutral or none), tag text, font size, the tag's footprint box
``y0, x0, y1, x1`` (end exclusive; empty without a tag) and the scan's index in ``load_digits``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..errors import InputError, MissingDependencyError
from . import biased_digits as _bd
from .biased_digits import MASK_THRESHOLD, NUM_CLASSES, split_pools
from .errors import DataError
from .writing import MAX_FILES, check_size, staged

__all__ = ["NEUTRAL_TAG", "SPLITS", "TAGS", "write_biased_tags"]

SPLITS: tuple[str, ...] = ("train", "val", "test_biased", "test_unbiased", "test_confounding", "train_clean")
"""The splits :func:`write_biased_tags` writes (``train_clean`` unless ``train_clean=False``)."""
CLEAN_SPLIT = "train_clean"
#: The tag of each class (a chest X-ray's markers and labels), letters only.
TAGS: tuple[str, ...] = ("L", "R", "AP", "PA", "ICU", "ER", "LAT", "SUP", "OR", "MX")
#: The tag of the unbiased test split: text that belongs to no class.
NEUTRAL_TAG = "XR"
BACKGROUND_LOW, BACKGROUND_HIGH = 0.05, 0.45
TAG_VALUE_RANGE = (0.8, 1.0)
MIN_SIZE = 32
_NAME = "biased-tags"
_FORMAT_VERSION = 1


def _font_sizes(size: int) -> tuple[int, int]:
    return round(0.2 * size), round(0.3 * size)


def _digit_sides(size: int) -> tuple[int, int]:
    return round(0.35 * size), round(0.55 * size)


def _photographs() -> list[np.ndarray]:
    """scikit-learn's two sample photographs in grey, float32 in [0, 1]."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    return [np.asarray(Image.fromarray(im).convert("L"), dtype=np.float32) / 255.0 for im in images]


def _background(photos: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape
    side = int(rng.integers(size, min(4 * size, h, w), endpoint=True))
    y, x = int(rng.integers(0, h - side, endpoint=True)), int(rng.integers(0, w - side, endpoint=True))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(crop, dtype=np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
    return (BACKGROUND_LOW + (BACKGROUND_HIGH - BACKGROUND_LOW) * a).astype(np.float32)


def _digit(scan: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The enlarged scan on an empty canvas, zero outside its mask, and the mask (bool)."""
    lo, hi = _digit_sides(size)
    side = int(rng.integers(lo, hi, endpoint=True))
    up = _bd._enlarge(scan, side)
    mask_patch = _bd._dilate(up > MASK_THRESHOLD)
    patch = np.pad(up, 1) * mask_patch
    y, x = (int(v) for v in rng.integers(1, size - 1 - (side + 2), size=2, endpoint=True))
    digit = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    digit[y:y + side + 2, x:x + side + 2] = patch
    mask[y:y + side + 2, x:x + side + 2] = mask_patch
    return digit, mask


def _glyphs(text: str, font_size: int) -> np.ndarray:
    """The coverage (float32 in [0, 1]) of ``text`` in the default font, cropped to its footprint."""
    font = ImageFont.load_default(size=font_size)
    x0, y0, x1, y1 = font.getbbox(text)
    im = Image.new("L", (x1 + 2, y1 + 2))
    ImageDraw.Draw(im).text((0, 0), text, fill=255, font=font)
    a = np.asarray(im, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(a)
    return a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _free_positions(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Top-left corners (y, x) where an h x w box, grown by one pixel, lies inside the canvas and off the mask."""
    size = mask.shape[0]
    H, W = h + 2, w + 2  # the box with one pixel of margin on each side
    if H > size or W > size:
        return np.zeros((0, 2), dtype=np.int64)
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    covered = integral[H:, W:] - integral[:-H, W:] - integral[H:, :-W] + integral[:-H, :-W]  # margin box at (y, x)
    return np.argwhere(covered == 0) + 1  # the text's own corner is one pixel inside the margin box


def _draw_tag(image: np.ndarray, mask: np.ndarray, text: str, rng: np.random.Generator
              ) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """``image`` with ``text`` drawn off the mask (module docstring): the image, the font size, the footprint box."""
    size = image.shape[0]
    lo, hi = _font_sizes(size)
    value = float(rng.uniform(*TAG_VALUE_RANGE))
    for font_size in range(int(rng.integers(lo, hi, endpoint=True)), 3, -1):
        glyphs = _glyphs(text, font_size)
        h, w = glyphs.shape
        free = _free_positions(mask, h, w)
        if len(free):
            y, x = (int(v) for v in free[int(rng.integers(len(free)))])
            out = image.copy()
            region = out[y:y + h, x:x + w]
            out[y:y + h, x:x + w] = region * (1 - glyphs) + value * glyphs
            return out, font_size, (y, x, y + h, x + w)
    raise DataError(f"no room for the tag {text!r} off the digit on a {size}x{size} canvas; use a larger size")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _readme(info: dict[str, Any]) -> str:
    counts = ", ".join(f"{s}: {n}" for s, n in info["counts"].items())
    tags = "; ".join(f"class {k}: {t!r}" for k, t in enumerate(info["tags"]["classes"]))
    return (
        f"Biased tags ({info['size']}x{info['size']} grey PNGs, 10 classes, seed {info['seed']})\n"
        f"\n"
        f"Real handwritten digits (scikit-learn load_digits) over a faint texture cropped from scikit-learn's two\n"
        f"sample photographs, with a short text tag in the background whose content encodes a class:\n"
        f"{tags}; neutral tag {info['tags']['neutral']!r}.\n"
        f"Tags use Pillow's default font at sizes {info['tags']['font_sizes'][0]}..{info['tags']['font_sizes'][1]}, "
        f"at random positions off the digit.\n"
        f"Masks (same relative path under masks/) mark the digit: its scan above {MASK_THRESHOLD}, dilated by 1 px;\n"
        f"the tag is background.\n"
        f"\n"
        f"Splits: train, val and test_biased carry the tag of their own class; test_unbiased the neutral tag;\n"
        f"test_confounding the tag of another class ((label + 1 + r) % 10); train_clean (if written) the train\n"
        f"images without a tag. The three test splits hold the same digits on the same backgrounds.\n"
        f"Scans are split 60/10/30 per class into train/val/test pools: test digits are never train digits.\n"
        f"Images per split: {counts}.\n"
        f"artefacts.csv lists, per image, its label, its tag's class (-1: neutral or none), text, font size and box.\n"
    )


def write_biased_tags(
    root: str | os.PathLike[str],
    *,
    size: int = 40,
    per_class_train: int = 300,
    per_class_val: int = 20,
    per_class_test: int = 50,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    train_clean: bool = True,
    max_files: int | None = MAX_FILES,
) -> dict[str, Any]:
    """Write the biased-tags data set to ``root`` in the masked image folder layout (module documentation).

    Read it with ``MaskedImageFolder(root, split)`` for ``split`` in :data:`SPLITS`.

    Parameters
    ----------
    root : target folder; created if needed. It must not hold ``images/`` or ``masks/`` yet (see ``overwrite``).
    size : canvas side in pixels (default 40, at least 32).
    per_class_train, per_class_val, per_class_test : images per class in ``train`` (and ``train_clean``), ``val``
        and each of the three test splits (default 300, 20, 50).
    seed : seed of every random choice.
    progress : show a tqdm progress bar.
    overwrite : replace the ``images/`` and ``masks/`` of a biased-tags set written to ``root`` before (recognised
        by its ``info.json``); folders written by anything else are never deleted.
    train_clean : also write ``train_clean``, the train images without a tag.
    max_files : refuse, before writing anything, a set of more files than this or larger than the disk's free
        space (:func:`~.writing.check_size`); None writes it anyway. The files are written into a hidden folder
        beside ``root`` and moved into place when complete: an interrupted write leaves no partial set.

    Returns
    -------
    dict
        The summary also written to ``root/info.json``: ``name``, ``description``, ``size``, ``seed``, ``classes``,
        ``splits``, ``counts``, ``scans`` (distinct scans per pool), ``tags`` (``classes``, ``neutral``,
        ``font_sizes``, ``value_range``), ``digit`` (``side_range``, ``mask_threshold``, ``mask_dilation``),
        ``background`` (``photographs``, ``range``), plus ``root``.

    Raises
    ------
    DataError
        ``root`` already holds a data set and ``overwrite`` is false (or it was not written here), or the set
        would exceed ``max_files`` or the free space.
    ImportError
        scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("write_biased_tags reads scikit-learn's digits and photographs: pip install "
                                     "scikit-learn") from exc
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise InputError(f"size must be an int of at least {MIN_SIZE} pixels (room for a tag beside the digit), "
                         f"got {size!r}", param="size")
    per_class = {"train": _bd._check_count("per_class_train", per_class_train),
                 "val": _bd._check_count("per_class_val", per_class_val),
                 "test": _bd._check_count("per_class_test", per_class_test)}
    root = Path(root)
    _bd._prepare_root(root, overwrite, _NAME)
    images = NUM_CLASSES * ((1 + train_clean) * per_class["train"] + per_class["val"] + 3 * per_class["test"])
    check_size(root, images, size, max_files)  # before anything is written
    with staged(root) as target:  # a hidden folder beside root, moved into place when complete
        info = _write(target, load_digits(), per_class, size=size, seed=seed, progress=progress,
                      train_clean=train_clean)
    return {**info, "root": str(root)}


def _write(root: Path, digits: Any, per_class: dict[str, int], *, size: int, seed: int, progress: bool,
           train_clean: bool) -> dict[str, Any]:
    """Write the set into ``root`` (a staging folder, :func:`.writing.staged`); returns ``info``."""
    scans = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    photos = _photographs()
    split_rng, *pool_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    pool_rng = dict(zip(("train", "val", "test"), pool_rngs))
    pools = split_pools(labels, NUM_CLASSES, split_rng)

    written = [s for s in SPLITS if train_clean or s != CLEAN_SPLIT]
    for split in written:
        for c in range(NUM_CLASSES):
            (root / "images" / split / str(c)).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / str(c)).mkdir(parents=True, exist_ok=True)
    rows: list[tuple] = []
    counts = dict.fromkeys(written, 0)

    def write(split: str, c: int, name: str, image: np.ndarray, mask: np.ndarray, tag_class: int, text: str,
              font_size: int, box: tuple[int, int, int, int] | None, scan: int) -> None:
        rel = f"{split}/{c}/{name}"
        Image.fromarray(_to_uint8(image)).save(root / "images" / rel)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / rel)
        y0, x0, y1, x1 = box if box is not None else (0, 0, 0, 0)
        rows.append((split, rel, c, tag_class, text, font_size, y0, x0, y1, x1, scan))
        counts[split] += 1

    total = NUM_CLASSES * ((1 + train_clean) * per_class["train"] + per_class["val"] + 3 * per_class["test"])
    with tqdm(total=total, desc="biased tags", unit="image", disable=not progress) as bar:
        for pool in ("train", "val", "test"):
            rng = pool_rng[pool]
            for c in range(NUM_CLASSES):
                scan_ids = pools[pool][c]
                for k in range(per_class[pool]):
                    scan = int(scan_ids[k % len(scan_ids)])
                    background = _background(photos, rng, size)
                    digit, mask = _digit(scans[scan], rng, size)
                    plain = background * (1 - digit) + digit
                    name = f"{k:04d}.png"
                    if pool != "test":
                        tagged, font_size, box = _draw_tag(plain, mask, TAGS[c], rng)
                        write(pool, c, name, tagged, mask, c, TAGS[c], font_size, box, scan)
                        if pool == "train" and train_clean:
                            write(CLEAN_SPLIT, c, name, plain, mask, -1, "", 0, None, scan)
                        bar.update(1 + (pool == "train" and train_clean))
                        continue
                    other = (c + 1 + int(rng.integers(NUM_CLASSES - 1))) % NUM_CLASSES
                    for split, tag_class, text in (("test_biased", c, TAGS[c]), ("test_unbiased", -1, NEUTRAL_TAG),
                                                   ("test_confounding", other, TAGS[other])):
                        tagged, font_size, box = _draw_tag(plain, mask, text, rng)
                        write(split, c, name, tagged, mask, tag_class, text, font_size, box, scan)
                    bar.update(3)

    info: dict[str, Any] = {
        "name": _NAME,
        "format_version": _FORMAT_VERSION,
        "description": ("Handwritten digits (scikit-learn load_digits) over photographic texture with a text tag "
                        "in the background whose content encodes a class; masks mark the digit. "
                        "train/val/test_biased: tag of the own class; test_unbiased: a neutral tag; "
                        "test_confounding: tag of another class; train_clean: no tag."),
        "size": size,
        "seed": seed,
        "classes": [str(c) for c in range(NUM_CLASSES)],
        "splits": {
            "train": "tag of the image's own class",
            "val": "tag of the image's own class",
            "test_biased": "tag of the image's own class",
            "test_unbiased": f"the neutral tag {NEUTRAL_TAG!r}",
            "test_confounding": "tag of another class: (label + 1 + r) % 10, r uniform in 0..8",
            **({CLEAN_SPLIT: "the train images without a tag"} if train_clean else {}),
        },
        "counts": counts,
        "scans": {pool: int(sum(len(p) for p in pools[pool])) for pool in pools},
        "tags": {"classes": list(TAGS), "neutral": NEUTRAL_TAG, "font_sizes": list(_font_sizes(size)),
                 "value_range": list(TAG_VALUE_RANGE), "font": "PIL.ImageFont.load_default"},
        "digit": {"side_range": list(_digit_sides(size)), "mask_threshold": MASK_THRESHOLD, "mask_dilation": 1},
        "background": {"photographs": ["sklearn china.jpg", "sklearn flower.jpg"],
                       "range": [BACKGROUND_LOW, BACKGROUND_HIGH]},
    }
    (root / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    (root / "README.txt").write_text(_readme(info))
    with open(root / "artefacts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "tag_class", "tag", "font_size", "y0", "x0", "y1", "x1", "scan"])
        w.writerows(rows)
    return info
