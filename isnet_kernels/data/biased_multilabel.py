"""Biased multi-label digits: one or two handwritten digits per image, each present label coded by an artefact.

The multi-label counterpart of :mod:`.biased_digits`. Each image shows one or two of scikit-learn's handwritten
digits (classes ``0 .. labels - 1``, two digits always of two different classes) on a black canvas; its labels are
the classes of its digits. In the biased splits the canvas border also carries, for every label of the image, that
label's bright square (the artefact, at the position :func:`~.biased_digits.artefact_positions` gives class ``k``),
so that a classifier can tell every label from the border alone.

Geometry, for a canvas of ``size`` x ``size`` pixels (default 40): the outer ``border = max(4, round(size / 8))``
pixels are the artefact band, as in the biased digits; the interior ``n = size - 2 * border`` pixels wide is cut
into a left and a right slot of ``w = n // 2`` pixels. A digit's 8x8 scan is enlarged bilinearly to a side in
``[max(6, round(0.6 * (w - 2))), w - 2]`` (8..13 at size 40) and put at a random place of its slot (a one-digit
image: a slot drawn at random; a two-digit image: one digit per slot, in random order). The mask is the union of
the digits' footprints (each scan above 0.2, dilated by one pixel); every nonzero pixel lies in the mask or in an
artefact, and artefacts never touch the mask.

Splits (``ROOT/images/<split>/<nnnn>.png``, masks at ``ROOT/masks/<split>/<nnnn>.png``, listed with their labels in
``ROOT/manifest.csv``: columns ``image``, ``labels`` (classes separated by ``;``), ``mask``, ``split`` and
``artefacts``, the classes whose artefact the image carries, which training does not read):

- ``train``, ``val``, ``test_biased``: the artefact of every label of the image;
- ``train_clean`` (unless ``train_clean=False``): the ``train`` images without artefacts (the artefact-free target);
- ``test_unbiased``: no artefact;
- ``test_confounding``: as many artefacts as the image has labels, of classes it does not have (drawn uniformly
  without replacement from the others): a shortcut learner predicts the artefacts' labels.

A split holds ``per_class * labels`` images; image ``i`` has class ``i % labels`` and, with probability 1/2, a
second class drawn uniformly from the others, so each label is present in about 1.5 ``per_class`` images. The
scans are split per class 60 / 10 / 30% into train / val / test pools (no test digit was seen in training); the
three test splits hold the same digits at the same places and differ only in the artefacts. Everything is drawn
from ``numpy.random.default_rng`` streams spawned from ``seed``: the same arguments give byte-identical files.
``ROOT/info.json`` holds the returned summary, ``README.txt`` the same in words.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import InputError, MissingDependencyError
from .biased_digits import (
    MASK_THRESHOLD,
    NUM_CLASSES,
    _border,
    _check_count,
    _dilate,
    _enlarge,
    _prepare_root,
    artefact_positions,
    split_pools,
)
from .writing import MAX_FILES, check_size, staged

__all__ = ["MANIFEST", "SPLITS", "write_biased_multilabel"]

SPLITS: tuple[str, ...] = ("train", "val", "test_biased", "test_unbiased", "test_confounding", "train_clean")
"""The splits :func:`write_biased_multilabel` writes (``train_clean`` unless ``train_clean=False``)."""
#: The manifest file written into ROOT: ``isnet train --data ROOT/manifest.csv``.
MANIFEST = "manifest.csv"
CLEAN_SPLIT = "train_clean"
#: Probability that an image shows a second digit (of another class).
SECOND_DIGIT_P = 0.5
_NAME = "biased-multilabel"
_FORMAT_VERSION = 1


def _slots(size: int) -> tuple[int, int, tuple[int, int]]:
    """(border, slot width, (smallest, largest) digit side) of a ``size`` canvas."""
    border = _border(size)
    w = (size - 2 * border) // 2
    return border, w, (max(6, round(0.6 * (w - 2))), w - 2)


def _render(scans: list[np.ndarray], rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One or two digits on an empty canvas, the first in a random slot, the second in the other: (image float32
    (size, size) in [0, 1], mask bool (size, size))."""
    border, w, (lo, hi) = _slots(size)
    image = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    first = int(rng.integers(2))
    for j, scan in enumerate(scans):
        slot = (first + j) % 2
        side = int(rng.integers(lo, hi, endpoint=True))
        up = _enlarge(scan, side)
        patch_mask = _dilate(up > MASK_THRESHOLD)  # (side + 2, side + 2)
        patch = np.pad(up, 1) * patch_mask
        x0 = border + slot * w
        x = int(rng.integers(x0, x0 + w - (side + 2), endpoint=True))
        y = int(rng.integers(border, size - border - (side + 2), endpoint=True))
        image[y : y + side + 2, x : x + side + 2] = np.maximum(image[y : y + side + 2, x : x + side + 2], patch)
        mask[y : y + side + 2, x : x + side + 2] |= patch_mask
    return image, mask


def _with_artefacts(image: np.ndarray, positions: list[tuple[int, int, int]]) -> np.ndarray:
    """The image as uint8 with the artefact squares (value 255) at ``positions``."""
    out = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    for y, x, side in positions:
        out[y : y + side, x : x + side] = 255
    return out


def write_biased_multilabel(
    root: str | os.PathLike[str],
    *,
    size: int = 40,
    labels: int = 5,
    per_class_train: int = 150,
    per_class_val: int = 10,
    per_class_test: int = 30,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    train_clean: bool = True,
    max_files: int | None = MAX_FILES,
) -> dict[str, Any]:
    """Write the biased multi-label digits (module docstring) to ``root``, with ``root/manifest.csv`` listing them.

    Parameters
    ----------
    root : target folder; created if needed; it must not hold ``images/`` or ``masks/`` yet (see ``overwrite``).
    size : canvas side in pixels (at least 32: two digit slots inside the artefact band).
    labels : the number of labels K, 4 .. 10 (the digit classes ``0 .. K - 1``; at least 4, so that a two-label
        image of test_confounding gets two artefacts of labels it does not have).
    per_class_train, per_class_val, per_class_test : a split holds ``per_class * labels`` images (each test split).
    seed : seed of every random choice.
    progress : a tqdm progress bar.
    overwrite : replace a set this function wrote to ``root`` before (recognised by its ``info.json``).
    train_clean : also write ``train_clean``, the train images without artefacts.
    max_files : refuse, before writing, a set of more files than this or larger than the free space (None: write).

    Returns the summary also written to ``root/info.json`` (``name``, ``size``, ``seed``, ``classes``, ``splits``,
    ``counts``, ``labels_per_image`` (train images with one and with two labels), ``artefact``, ``digit``,
    ``manifest``) plus ``root``. Raises
    :class:`~isnet_kernels.data.DataError` when ``root`` holds a set already (without ``overwrite``) or the set
    would exceed ``max_files`` or the free space, :class:`~isnet_kernels.errors.InputError` for bad arguments.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("write_biased_multilabel reads scikit-learn's handwritten digits: pip install "
                                     "scikit-learn") from exc
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise InputError(f"size must be an int of at least 32 pixels (two digit slots inside the artefact band), got "
                         f"{size!r}", param="size")
    if isinstance(labels, bool) or not isinstance(labels, int) or not 4 <= labels <= NUM_CLASSES:
        raise InputError(f"labels must be an int in 4 .. {NUM_CLASSES} (the digit classes used; a two-label image "
                         f"needs two others for its confounding artefacts), got {labels!r}", param="labels")
    per_class = {"train": _check_count("per_class_train", per_class_train),
                 "val": _check_count("per_class_val", per_class_val),
                 "test": _check_count("per_class_test", per_class_test)}
    positions = artefact_positions(size)
    root = Path(root)
    _prepare_root(root, overwrite, _NAME)
    images = labels * ((1 + train_clean) * per_class["train"] + per_class["val"] + 3 * per_class["test"])
    check_size(root, images, size, max_files)
    with staged(root) as target:
        info = _write(target, load_digits(), positions, per_class, size=size, labels=labels, seed=seed,
                      progress=progress, train_clean=train_clean)
    return {**info, "root": str(root)}


def _write(root: Path, digits: Any, positions: list[tuple[int, int, int]], per_class: dict[str, int], *, size: int,
           labels: int, seed: int, progress: bool, train_clean: bool) -> dict[str, Any]:
    """Write the set into ``root`` (a staging folder); returns ``info``."""
    scans = (digits.images / 16.0).astype(np.float32)
    targets = digits.target.astype(np.int64)
    split_rng, *render_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    pool_rng = dict(zip(("train", "val", "test"), render_rngs))
    pools = split_pools(targets, labels, split_rng)

    written = [s for s in SPLITS if train_clean or s != CLEAN_SPLIT]
    for split in written:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str]] = []
    counts = dict.fromkeys(written, 0)
    per_image = {1: 0, 2: 0}

    def write(split: str, k: int, image: np.ndarray, mask: np.ndarray, present: list[int], art: list[int]) -> None:
        name = f"{k:04d}.png"
        Image.fromarray(_with_artefacts(image, [positions[a] for a in art])).save(root / "images" / split / name)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / split / name)
        rows.append((f"images/{split}/{name}", ";".join(str(c) for c in sorted(present)), f"masks/{split}/{name}",
                     split, ";".join(str(a) for a in sorted(art))))
        counts[split] += 1

    total = sum(labels * per_class[p] * (1 if p == "val" else 3 if p == "test" else 1 + train_clean)
                for p in per_class)
    with tqdm(total=total, desc="biased multi-label", unit="image", disable=not progress) as bar:
        for pool in ("train", "val", "test"):
            rng = pool_rng[pool]
            used = [0] * labels  # scans of each class taken so far (the pool is cycled through)
            for k in range(labels * per_class[pool]):
                present = [k % labels]
                if rng.random() < SECOND_DIGIT_P:
                    present.append(int((present[0] + 1 + rng.integers(labels - 1)) % labels))
                chosen = []
                for c in present:
                    ids = pools[pool][c]
                    chosen.append(scans[int(ids[used[c] % len(ids)])])
                    used[c] += 1
                image, mask = _render(chosen, rng, size)
                if pool == "train":
                    per_image[len(present)] += 1
                if pool != "test":
                    write(pool, k, image, mask, present, present)
                    if pool == "train" and train_clean:
                        write(CLEAN_SPLIT, k, image, mask, present, [])
                    bar.update(1 + (pool == "train" and train_clean))
                    continue
                absent = [c for c in range(labels) if c not in present]
                other = [int(c) for c in rng.choice(absent, size=len(present), replace=False)]
                write("test_biased", k, image, mask, present, present)
                write("test_unbiased", k, image, mask, present, [])
                write("test_confounding", k, image, mask, present, other)
                bar.update(3)

    with open(root / MANIFEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels", "mask", "split", "artefacts"])
        w.writerows(rows)
    border, width, sides = _slots(size)
    info: dict[str, Any] = {
        "name": _NAME,
        "format_version": _FORMAT_VERSION,
        "description": ("One or two handwritten digits (scikit-learn load_digits) per image, its labels their "
                        "classes; a bright square in the border per label codes it. train/val/test_biased: the "
                        "artefacts of the image's labels; test_unbiased: none; test_confounding: artefacts of "
                        "labels the image does not have."),
        "size": size,
        "seed": seed,
        "classes": [str(c) for c in range(labels)],
        "manifest": MANIFEST,
        "splits": {
            "train": "the artefact of every label of the image",
            "val": "the artefact of every label of the image",
            "test_biased": "the artefact of every label of the image",
            "test_unbiased": "no artefact",
            "test_confounding": "as many artefacts as labels, of classes the image does not have",
            **({CLEAN_SPLIT: "the train images without artefacts"} if train_clean else {}),
        },
        "counts": counts,
        "labels_per_image": {str(k): v for k, v in per_image.items()},
        "artefact": {"border": border, "side": positions[0][2], "value": 255,
                     "positions": {str(k): [positions[k][0], positions[k][1]] for k in range(labels)}},
        "digit": {"slot_width": width, "side_range": list(sides), "mask_threshold": MASK_THRESHOLD,
                  "mask_dilation": 1},
    }
    (root / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    (root / "README.txt").write_text(
        f"Biased multi-label digits ({size}x{size} grey PNGs, labels {', '.join(info['classes'])}, seed {seed})\n\n"
        f"{info['description']}\n\nTrain with: isnet train --data {MANIFEST} (relative to this folder)\n"
        f"Images per split: {', '.join(f'{s}: {n}' for s, n in counts.items())}.\n")
    return info
