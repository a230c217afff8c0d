"""Biased digits: real handwritten digits with a class-correlated artefact in the background.

A small, fully reproducible test bed for background bias (the synthetic-bias evaluation of the ISNet papers).
Every image is one of scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797 real 8x8
scans, grey levels 0..16, ten classes, shipped with scikit-learn, no download), placed on a black canvas. In
the biased splits the canvas also carries a bright square (the artefact) whose position on the canvas border
says the class. A classifier can reach full accuracy on the biased splits by looking at the square alone and
never at the digit: that shortcut is what the data set is for. The three test splits show whether a model
took it.

Geometry, for a canvas of ``size`` x ``size`` pixels (default 32):

- the outer ``border = max(4, round(size / 8))`` pixels are the artefact band; the artefact is a square of
  side ``border - 1`` with pixel value 255 at one of ten fixed positions around the band, class ``k`` at
  position ``k`` (:func:`artefact_positions`), clockwise from the top-left corner, evenly spaced;
- the digit lives inside the band, in the interior ``[border, size - border)`` x ``[border, size - border)``:
  its 8x8 scan (divided by 16) is enlarged bilinearly to a random side in ``[max(8, round(0.6 * n)), n - 2]``
  (``n = size - 2 * border``; 14..22 for ``size = 32``) and put at a random position of the interior;
- the mask is the digit's footprint: the enlarged scan above 0.2, dilated by one pixel. Digit pixels outside
  it are set to zero, so every nonzero pixel of an image is either in the mask or in the artefact, and the
  artefact never touches the mask (one pixel of the band always separates them);
- with ``noise > 0`` the background outside the mask is uniform noise in ``[0, noise]`` instead of black.

Splits (``ROOT/images/<split>/<digit>/<nnnn>.png``, masks at ``ROOT/masks/...``, 8-bit grey PNGs):

- ``train``, ``val``: the artefact of the image's own class;
- ``train_clean`` (unless ``train_clean=False``): the images of ``train`` (same scans, sizes, positions and file
  names) without the artefact, for the upper bound: a classifier trained on it never saw the shortcut;
- ``test_biased``: the artefact of the image's own class (the bias the model was trained with);
- ``test_unbiased``: no artefact (only the digit can tell the class);
- ``test_confounding``: the artefact of another class, ``(label + 1 + r) % 10`` with ``r`` uniform in 0..8
  (a shortcut learner predicts the artefact's class, not the digit's).

The scans are split by scan, per class, 60% / 10% / 30% into train / val / test pools, so no test image shows
a digit scan seen in training. The three test splits hold the same images (same scans, same size and position,
same file names) and differ only in the artefact, so their accuracies compare like with like. A pool is
cycled through when a split asks for more images than it has scans; each repeat gets a new size and position.
Everything is drawn from ``numpy.random.default_rng`` streams spawned from ``seed``: the same arguments give
byte-identical files.

Besides the images, ``ROOT`` gets ``info.json`` (the returned summary), ``README.txt`` (the same in words) and
``artefacts.csv`` (per image: split, path under ``images/``, label, artefact class or -1, index of the scan
in ``load_digits``).
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
from .errors import DataError
from .writing import MAX_FILES, check_size, staged

__all__ = ["CLEAN_SPLIT", "SPLITS", "artefact_positions", "write_biased_digits"]

SPLITS: tuple[str, ...] = ("train", "val", "test_biased", "test_unbiased", "test_confounding", "train_clean")
"""The splits :func:`write_biased_digits` writes (``train_clean`` unless ``train_clean=False``)."""
CLEAN_SPLIT = "train_clean"

NUM_CLASSES = 10
MASK_THRESHOLD = 0.2
POOL_FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.3}
_NAME = "biased-digits"
_FORMAT_VERSION = 1



def split_pools(labels: np.ndarray, classes: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """The scans of each class ``0 .. classes - 1`` shuffled by ``rng`` and split :data:`POOL_FRACTIONS` into
    disjoint train / val / test pools: ``pools[pool][c]`` holds the indices of class ``c`` in that pool."""
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(POOL_FRACTIONS["train"] * len(idx))
        n_val = round(POOL_FRACTIONS["val"] * len(idx))
        pools["train"].append(idx[:n_train])
        pools["val"].append(idx[n_train : n_train + n_val])
        pools["test"].append(idx[n_train + n_val :])
    return pools

def _border(size: int) -> int:
    return max(4, round(size / 8))


def artefact_positions(size: int = 32) -> list[tuple[int, int, int]]:
    """Where the artefact of each class sits on a ``size`` x ``size`` canvas.

    Returns
    -------
    list of (y, x, side)
        Entry ``k`` is the artefact of class ``k``: the square of pixels ``[y, y + side) x [x, x + side)``.
        The ten squares lie in the outer ``border = max(4, round(size / 8))`` pixels, ``side = border - 1``,
        their top-left corners evenly spaced clockwise along the square path of side ``t = size - side``
        that starts at the canvas's top-left corner (position ``k`` at path length ``floor(0.4 * t * k)``).
    """
    if size < 24:
        raise InputError(f"size must be at least 24 pixels, got {size}", param="size")
    side = _border(size) - 1
    t = size - side
    positions = []
    for k in range(NUM_CLASSES):
        d = (4 * t * k) // NUM_CLASSES
        edge, r = divmod(d, t)
        y, x = [(0, r), (r, t), (t, t - r), (t - r, 0)][edge]
        positions.append((y, x, side))
    return positions


def _enlarge(scan: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 scan in [0, 1] enlarged to ``side`` x ``side`` by bilinear interpolation (Pillow, float)."""
    return np.asarray(Image.fromarray(scan).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


def _dilate(footprint: np.ndarray) -> np.ndarray:
    """A bool (h, w) footprint dilated by one pixel (3x3 square), returned padded to (h + 2, w + 2)."""
    h, w = footprint.shape
    p = np.pad(footprint, 2)
    out = np.zeros((h + 2, w + 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h + 2, dx : dx + w + 2]
    return out


def _render(scan: np.ndarray, rng: np.random.Generator, size: int,
            noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One digit on an empty canvas (background uniform in [0, noise] when ``noise > 0``, drawn after the digit's
    size and position): (image float32 (size, size) in [0, 1], mask bool (size, size))."""
    border = _border(size)
    n = size - 2 * border
    side = int(rng.integers(max(8, round(0.6 * n)), n - 2, endpoint=True))
    up = _enlarge(scan, side)
    mask_patch = _dilate(up > MASK_THRESHOLD)  # (side + 2, side + 2)
    digit_patch = np.pad(up, 1) * mask_patch
    y, x = (int(v) for v in rng.integers(border, size - border - (side + 2), size=2, endpoint=True))
    image = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=bool)
    image[y : y + side + 2, x : x + side + 2] = digit_patch
    mask[y : y + side + 2, x : x + side + 2] = mask_patch
    if noise > 0:
        image = np.where(mask, image, rng.uniform(0.0, noise, (size, size))).astype(np.float32)
    return image, mask


def _with_artefact(image: np.ndarray, position: tuple[int, int, int] | None) -> np.ndarray:
    """The image as uint8, with the artefact square (value 255) drawn at ``position`` if given."""
    out = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if position is not None:
        y, x, side = position
        out[y : y + side, x : x + side] = 255
    return out


def _prepare_root(root: Path, overwrite: bool, name: str = _NAME) -> None:
    existing = [p for p in (root / "images", root / "masks") if p.exists()]
    if not existing:
        return
    if not overwrite:
        raise DataError(
            f"{root} already holds a data set ({existing[0]} exists); choose an empty folder, or pass "
            f"overwrite=True to replace a {name} set written there before"
        )
    try:
        written_here = json.loads((root / "info.json").read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        written_here = False
    if not written_here:
        raise DataError(
            f"{root} holds {existing[0]} but no info.json of a {name} set; overwrite=True only replaces "
            f"a set this function wrote: choose an empty folder, or delete {existing[0]} yourself"
        )
    # the old set is replaced once the new one is complete (.writing.staged)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}", param=name)
    return value


def _readme(info: dict[str, Any]) -> str:
    size, art = info["size"], info["artefact"]
    counts = ", ".join(f"{s}: {n}" for s, n in info["counts"].items())
    positions = "; ".join(f"class {k}: (y={y}, x={x})" for k, (y, x) in art["positions"].items())
    return (
        f"Biased digits ({size}x{size} grey PNGs, 10 classes, seed {info['seed']})\n"
        f"\n"
        f"Real handwritten digits (scikit-learn load_digits, 1,797 8x8 scans) on a black canvas, with a bright\n"
        f"{art['side']}x{art['side']} square (value 255) in the outer {art['border']}-pixel border whose position\n"
        f"encodes a class: {positions}.\n"
        f"The digit is enlarged bilinearly to {info['digit']['side_range'][0]}..{info['digit']['side_range'][1]} px "
        f"and placed at random inside the border.\n"
        f"Masks (same relative path under masks/) mark the digit: its scan above {MASK_THRESHOLD}, dilated by 1 px;\n"
        f"the artefact is background.\n"
        f"\n"
        f"Splits: train and val carry the artefact of their own class; test_biased the same;\n"
        f"train_clean (if written) holds the train images without the artefact;\n"
        f"test_unbiased no artefact; test_confounding the artefact of another class ((label + 1 + r) % 10).\n"
        f"The three test splits hold the same images and differ only in the artefact.\n"
        f"Scans are split 60/10/30 per class into train/val/test pools: test digits are never train digits.\n"
        f"Images per split: {counts}.\n"
        f"artefacts.csv lists, per image, its label, its artefact class (-1: none) and its scan index.\n"
    )


def write_biased_digits(
    root: str | os.PathLike[str],
    *,
    size: int = 32,
    per_class_train: int = 300,
    per_class_val: int = 20,
    per_class_test: int = 50,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    train_clean: bool = True,
    noise: float = 0.0,
    max_files: int | None = MAX_FILES,
) -> dict[str, Any]:
    """Write the biased-digits data set to ``root`` in the masked image folder layout.

    See the module documentation for how the images, masks and splits are made. The result is read with
    ``MaskedImageFolder(root, split)`` for ``split`` in :data:`SPLITS`.

    Parameters
    ----------
    root : str or path
        Target folder; created if needed. It must not hold ``images/`` or ``masks/`` yet (see ``overwrite``).
    size : int, default 32
        Canvas side in pixels (at least 24).
    per_class_train, per_class_val, per_class_test : int, default 300, 20, 50
        Images per class in ``train``, ``val`` and each of the three test splits.
    seed : int, default 0
        Seed of every random choice (scan split, digit size and position, confounding artefact classes).
    progress : bool, default True
        Show a tqdm progress bar.
    overwrite : bool, default False
        Replace the ``images/`` and ``masks/`` of a biased-digits set written to ``root`` before (recognised
        by its ``info.json``). Folders written by anything else are never deleted.
    train_clean : bool, default True
        Also write ``train_clean``, the train images without the artefact (the artefact-free upper bound).
    noise : float, default 0
        Background outside the mask uniform in ``[0, noise]`` (``noise`` in [0, 1), a faint texture), drawn per
        image; 0 keeps the black canvas (and the files written without it byte for byte).
    max_files : int or None, default :data:`~.writing.MAX_FILES`
        Refuse, before writing anything, a set of more files than this or larger than the disk's free space
        (:func:`~.writing.check_size`); None writes it anyway. The files are written into a hidden folder beside
        ``root`` and moved into place when complete: an interrupted write leaves no partial set
        (:mod:`~isnet_kernels.data.writing`).

    Returns
    -------
    dict
        The summary also written to ``root/info.json``: ``name``, ``description``, ``size``, ``seed``,
        ``classes``, ``splits``, ``counts`` (images per split), ``scans`` (distinct scans per pool),
        ``artefact`` (``border``, ``side``, ``value``, ``positions``: class -> [y, x]), ``digit``
        (``region``, ``side_range``, ``mask_threshold``, ``mask_dilation``), plus ``root``.

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
        raise MissingDependencyError(
            "write_biased_digits reads scikit-learn's handwritten digits: pip install scikit-learn"
        ) from exc
    positions = artefact_positions(size)  # validates size
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 1:
        raise InputError(f"noise must be a number in [0, 1), the background's highest grey level, got {noise!r}",
                         param="noise")
    counts_per_class = {
        "train": _check_count("per_class_train", per_class_train),
        "val": _check_count("per_class_val", per_class_val),
        "test": _check_count("per_class_test", per_class_test),
    }
    root = Path(root)
    _prepare_root(root, overwrite)
    images = NUM_CLASSES * ((1 + train_clean) * counts_per_class["train"] + counts_per_class["val"]
                            + 3 * counts_per_class["test"])
    check_size(root, images, size, max_files)  # before anything is written
    with staged(root) as target:  # a hidden folder beside root, moved into place when complete
        info = _write(target, load_digits(), positions, counts_per_class, size=size, seed=seed, progress=progress,
                      train_clean=train_clean, noise=noise)
    return {**info, "root": str(root)}


def _write(root: Path, digits: Any, positions: list[tuple[int, int, int]], counts_per_class: dict[str, int], *,
           size: int, seed: int, progress: bool, train_clean: bool, noise: float) -> dict[str, Any]:
    """Write the set into ``root`` (a staging folder, :func:`.writing.staged`); returns ``info``."""
    scans = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    split_rng, *render_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    pool_rng = dict(zip(("train", "val", "test"), render_rngs))

    # Scans split per class into train / val / test pools (disjoint).
    pools = split_pools(labels, NUM_CLASSES, split_rng)

    written = [s for s in SPLITS if train_clean or s != CLEAN_SPLIT]
    total = NUM_CLASSES * ((1 + train_clean) * counts_per_class["train"] + counts_per_class["val"]
                           + 3 * counts_per_class["test"])
    rows: list[tuple[str, str, int, int, int]] = []
    counts = dict.fromkeys(written, 0)
    for split in written:
        for c in range(NUM_CLASSES):
            (root / "images" / split / str(c)).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / str(c)).mkdir(parents=True, exist_ok=True)

    def write(split: str, c: int, name: str, image: np.ndarray, mask: np.ndarray, art: int, scan: int) -> None:
        rel = f"{split}/{c}/{name}"
        Image.fromarray(_with_artefact(image, positions[art] if art >= 0 else None)).save(root / "images" / rel)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / rel)
        rows.append((split, rel, c, art, scan))
        counts[split] += 1

    with tqdm(total=total, desc="biased digits", unit="image", disable=not progress) as bar:
        for pool in ("train", "val", "test"):
            rng = pool_rng[pool]
            for c in range(NUM_CLASSES):
                scan_ids = pools[pool][c]
                for k in range(counts_per_class[pool]):
                    scan = int(scan_ids[k % len(scan_ids)])
                    image, mask = _render(scans[scan], rng, size, noise)
                    name = f"{k:04d}.png"
                    if pool != "test":
                        write(pool, c, name, image, mask, c, scan)
                        bar.update(1)
                        if pool == "train" and train_clean:
                            write(CLEAN_SPLIT, c, name, image, mask, -1, scan)
                            bar.update(1)
                        continue
                    other = (c + 1 + int(rng.integers(NUM_CLASSES - 1))) % NUM_CLASSES
                    write("test_biased", c, name, image, mask, c, scan)
                    write("test_unbiased", c, name, image, mask, -1, scan)
                    write("test_confounding", c, name, image, mask, other, scan)
                    bar.update(3)

    border = _border(size)
    n = size - 2 * border
    info: dict[str, Any] = {
        "name": _NAME,
        "format_version": _FORMAT_VERSION,
        "description": (
            "Handwritten digits (scikit-learn load_digits) on a black canvas with a bright square in the "
            "border whose position encodes a class; masks mark the digit. train/val/test_biased: artefact of "
            "the own class; test_unbiased: none; test_confounding: artefact of another class."
        ),
        "size": size,
        "seed": seed,
        "noise": noise,
        "classes": [str(c) for c in range(NUM_CLASSES)],
        "splits": {
            "train": "artefact of the image's own class",
            "val": "artefact of the image's own class",
            "test_biased": "artefact of the image's own class",
            "test_unbiased": "no artefact",
            "test_confounding": "artefact of another class: (label + 1 + r) % 10, r uniform in 0..8",
            **({CLEAN_SPLIT: "the train images without the artefact"} if train_clean else {}),
        },
        "counts": counts,
        "scans": {pool: int(sum(len(p) for p in pools[pool])) for pool in pools},
        "artefact": {
            "border": border,
            "side": positions[0][2],
            "value": 255,
            "positions": {str(k): [y, x] for k, (y, x, _) in enumerate(positions)},
        },
        "digit": {
            "region": [border, size - border],
            "side_range": [max(8, round(0.6 * n)), n - 2],
            "mask_threshold": MASK_THRESHOLD,
            "mask_dilation": 1,
        },
    }
    (root / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    (root / "README.txt").write_text(_readme(info))
    with open(root / "artefacts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "artefact_class", "scan"])
        w.writerows(rows)
    return info
