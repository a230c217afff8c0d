"""Biased scenes: real handwritten digits on real photographs, where the whole background is the shortcut.

The bias of Waterbirds (land birds photographed on land, water birds on water) and of chest X-rays whose hospital,
visible outside the lungs, predicts the finding: no artefact sits anywhere in particular, the scene itself goes
with the class. Each class ``k`` has its own photograph, ``class_photos[k]``; most training images of class ``k``
(the ``bias`` fraction, default 0.95) are drawn on a crop of it, the others on a crop of another class's photograph
(the minority groups). The foreground is one of scikit-learn's handwritten digit scans (``load_digits``), enlarged
as in :mod:`~isnet_kernels.data.biased_tags`; the mask is its footprint.

Each image, for a canvas of ``size`` x ``size`` pixels (default 40, at least 24):

- background: a crop of the photograph, in grey, of a random side in ``[size, 4 * size]`` (bounded by the
  photograph) at a random place, resized (bilinear) to the canvas and stretched to ``[0, scene]`` (default 0.85):
  the whole canvas is scene;
- digit: the 8x8 scan enlarged bilinearly to a side in ``[round(0.35 * size), round(0.55 * size)]`` at a random
  place, composited as ``image = background * (1 - c d) + c d``, ``d`` the enlarged scan inside the mask and ``c``
  the ``contrast`` (default 1). The two set how strong the shortcut is against the digit. Measured with SmallCNN,
  300 training images per class, 24 epochs, seed 0 (unbiased / confounding accuracy): at the defaults a plain
  classifier reaches 59% / 61% (97.6% with its own scenes) where the artefact-free one reaches 85% / 91%; with the
  scene at full range (``scene=1``) the plain classifier falls to 27% / 19%, but the artefact-free one learns
  nothing in 12 epochs (18%); with ``scene=0.75`` the digit is the easier cue and the plain classifier is not
  fooled (69% / 78%);
- mask: the digit's footprint (the enlarged scan above 0.2, dilated by one pixel).

Photographs: the real photographs scikit-image ships (``skimage.data``: no download), :data:`PHOTOGRAPHS`. The ten
class photographs and the neutral ones (the rest) are drawn from ``photo_seed`` (default: ``seed``), so two sets with
different photo seeds put other scenes behind the classes: a set of this kind that a study did not tune on.

Splits (``ROOT/images/<split>/<digit>/<nnnn>.png``, masks at ``ROOT/masks/...``, 8-bit grey PNGs):

- ``train``, ``val``: the class's own photograph with probability ``bias``, else another class's (uniform);
- ``test_biased``: the class's own photograph;
- ``test_unbiased``: a neutral photograph (one that belongs to no class);
- ``test_confounding``: another class's photograph, ``(label + 1 + r) % 10`` with ``r`` uniform in 0..8;
- ``train_clean`` (unless ``train_clean=False``): the train images on a crop of a class photograph drawn uniformly,
  independent of the label (the same scenes, no bias: the artefact-free upper bound's training split).

Groups (Waterbirds' convention): each image's group is ``(label, aligned)``, ``aligned`` true when its background is
its own class's photograph; 20 groups. Worst-group accuracy is the lowest accuracy over the groups of a split that
has them: ``test_biased`` holds the aligned groups and ``test_confounding`` the conflicting ones.

The three test splits hold the same digits at the same places and differ only in the scene. ``ROOT`` also gets
``info.json``, ``README.txt`` and ``artefacts.csv`` (per image: split, path under ``images/``, label, background
class (-1: neutral), photograph, group, the crop box ``y0, x0, side`` in the photograph, and the scan's index).
Everything is drawn from ``numpy.random.default_rng`` streams spawned from ``seed``: the same arguments give
byte-identical files.
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

from ..errors import MissingDependencyError
from . import biased_digits as _bd
from . import biased_tags as _bt
from .errors import DataError
from .writing import MAX_FILES, check_size, staged

SPLITS = ("train", "val", "test_biased", "test_unbiased", "test_confounding", "train_clean")
CLEAN_SPLIT = "train_clean"
NUM_CLASSES = 10
MIN_SIZE = 24
BACKGROUND_HIGH = 1.0
#: scikit-image's real photographs (``skimage.data.<name>()``), in this order before ``photo_seed`` shuffles them.
PHOTOGRAPHS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
               "immunohistochemistry", "moon", "retina", "rocket", "page", "clock", "cell", "text")
_NAME = "biased-scenes"
_FORMAT_VERSION = 1


def load_photographs(names: tuple[str, ...] = PHOTOGRAPHS) -> dict[str, np.ndarray]:
    """The named photographs of ``skimage.data`` in grey, float32 in [0, 1]."""
    try:
        import skimage.data
    except ImportError as exc:
        raise MissingDependencyError("the biased scenes are drawn on scikit-image's photographs: pip install "
                                     "scikit-image (or pip install 'isnet-kernels[data]')") from exc
    out = {}
    for name in names:
        a = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if a.ndim == 3:  # RGB(A): ITU-R 601 luma of the colour channels
            a = a[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out[name] = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
    return out


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int, high: float = BACKGROUND_HIGH
          ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A random square crop resized to the canvas and mapped to ``[0, high]``, and its box."""
    h, w = photo.shape
    side = int(rng.integers(min(size, h, w), min(4 * size, h, w), endpoint=True))
    y, x = int(rng.integers(0, h - side, endpoint=True)), int(rng.integers(0, w - side, endpoint=True))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(crop, dtype=np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
    return (high * a).astype(np.float32), (y, x, side)


def _readme(info: dict[str, Any]) -> str:
    counts = ", ".join(f"{s}: {n}" for s, n in info["counts"].items())
    scenes = "; ".join(f"class {k}: {p}" for k, p in enumerate(info["photographs"]["classes"]))
    return (
        f"Biased scenes ({info['size']}x{info['size']} grey PNGs, 10 classes, seed {info['seed']}, photo seed "
        f"{info['photo_seed']})\n\n"
        f"Real handwritten digits (scikit-learn load_digits) on crops of real photographs (scikit-image's), one\n"
        f"photograph per class: {scenes}.\n"
        f"train and val: the class's own photograph with probability {info['bias']}, else another class's.\n"
        f"test_biased: own photograph; test_unbiased: a neutral one ({', '.join(info['photographs']['neutral'])});\n"
        f"test_confounding: another class's; train_clean: a class photograph drawn independently of the label.\n"
        f"Masks mark the digit. Groups: (label, aligned) with aligned = the background is the own class's scene.\n"
        f"Images per split: {counts}.\n"
        f"artefacts.csv lists, per image, its label, background class (-1: neutral), photograph, group and crop.\n"
    )


def write_biased_scenes(
    root: str | os.PathLike[str],
    *,
    size: int = 40,
    per_class_train: int = 300,
    per_class_val: int = 20,
    per_class_test: int = 50,
    seed: int = 0,
    photo_seed: int | None = None,
    bias: float = 0.95,
    contrast: float = 1.0,
    scene: float = 0.85,
    progress: bool = True,
    overwrite: bool = False,
    train_clean: bool = True,
    max_files: int | None = MAX_FILES,
) -> dict[str, Any]:
    """Write the biased-scenes data set to ``root`` in the masked image folder layout (module documentation).

    Parameters
    ----------
    root : target folder; created if needed. It must not hold ``images/`` or ``masks/`` yet (see ``overwrite``).
    size : canvas side in pixels (default 40, at least 24).
    per_class_train, per_class_val, per_class_test : images per class in ``train`` (and ``train_clean``), ``val``
        and each of the three test splits (default 300, 20, 50).
    seed : seed of every random choice but the photographs' assignment.
    photo_seed : seed of which photographs belong to which class and which are neutral (default: ``seed``).
    bias : fraction of the train and val images of a class drawn on its own photograph, in [0, 1] (default 0.95).
    contrast : the digit's strength ``c`` in (0, 1]: ``image = background * (1 - c d) + c d`` (default 1).
    scene : the scene's range ``[0, scene]``, in (0, 1] (default 0.85).
    progress : show a tqdm progress bar.
    overwrite : replace a biased-scenes set written to ``root`` before (recognised by its ``info.json``).
    train_clean : also write ``train_clean``.
    max_files : refuse, before writing anything, a set of more files than this or larger than the disk's free
        space (:mod:`~isnet_kernels.data.writing`); None writes it anyway (``isnet data ... --yes``).

    Returns
    -------
    dict
        The summary also written to ``root/info.json`` (``name``, ``size``, ``seed``, ``photo_seed``, ``bias``,
        ``classes``, ``splits``, ``counts``, ``groups``, ``photographs``, ...), plus ``root``.

    Raises
    ------
    DataError
        A bad argument, or ``root`` already holding a data set (without ``overwrite``).
    MissingDependencyError
        scikit-image or scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("the biased scenes use scikit-learn's digits: pip install scikit-learn") from exc
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise DataError(f"size must be an integer of at least {MIN_SIZE} pixels, got {size!r}", param="size")
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not 0.0 <= bias <= 1.0:
        raise DataError(f"bias (the fraction of images on their own class's scene) must be between 0 and 1, got "
                        f"{bias!r}", param="bias")
    if isinstance(contrast, bool) or not isinstance(contrast, (int, float)) or not 0.0 < contrast <= 1.0:
        raise DataError(f"contrast (the digit's strength over the scene) must be in (0, 1], got {contrast!r}",
                        param="contrast")
    if isinstance(scene, bool) or not isinstance(scene, (int, float)) or not 0.0 < scene <= 1.0:
        raise DataError(f"scene (the background's range [0, scene]) must be in (0, 1], got {scene!r}", param="scene")
    per_class = {"train": _bd._check_count("per_class_train", per_class_train),
                 "val": _bd._check_count("per_class_val", per_class_val),
                 "test": _bd._check_count("per_class_test", per_class_test)}
    photo_seed = seed if photo_seed is None else photo_seed
    photos = load_photographs()
    order = [PHOTOGRAPHS[i] for i in np.random.default_rng(photo_seed).permutation(len(PHOTOGRAPHS))]
    class_photos, neutral = order[:NUM_CLASSES], order[NUM_CLASSES:]
    root = Path(root)
    _bd._prepare_root(root, overwrite, _NAME)
    images = NUM_CLASSES * ((1 + train_clean) * per_class["train"] + per_class["val"] + 3 * per_class["test"])
    check_size(root, images, size, max_files)  # before anything is written
    with staged(root) as target:  # a hidden folder beside root, moved into place when complete
        info = _write(target, load_digits(), photos, class_photos, neutral, per_class, size=size, seed=seed,
                      photo_seed=photo_seed, bias=bias, contrast=contrast, scene=scene, progress=progress,
                      train_clean=train_clean)
    return {**info, "root": str(root)}


def _write(root: Path, digits: Any, photos: dict[str, np.ndarray], class_photos: list[str], neutral: list[str],
           per_class: dict[str, int], *, size: int, seed: int, photo_seed: int, bias: float, contrast: float,
           scene: float, progress: bool, train_clean: bool) -> dict[str, Any]:
    """Write every file of the set into ``root`` (a staging folder); the summary (``info.json``)."""
    scans = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    split_rng, *pool_rngs = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    pool_rng = dict(zip(("train", "val", "test"), pool_rngs))
    pools = _bd.split_pools(labels, NUM_CLASSES, split_rng)

    written = [s for s in SPLITS if train_clean or s != CLEAN_SPLIT]
    for split in written:
        for c in range(NUM_CLASSES):
            (root / "images" / split / str(c)).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / str(c)).mkdir(parents=True, exist_ok=True)
    rows: list[tuple] = []
    counts = dict.fromkeys(written, 0)

    def other_class(rng: np.random.Generator, c: int) -> int:
        return (c + 1 + int(rng.integers(NUM_CLASSES - 1))) % NUM_CLASSES

    def write(split: str, c: int, name: str, digit: np.ndarray, mask: np.ndarray, scene_class: int, photo: str,
              rng: np.random.Generator, scan: int) -> None:
        background, (y, x, side) = _crop(photos[photo], rng, size, scene)
        image = background * (1 - contrast * digit) + contrast * digit
        rel = f"{split}/{c}/{name}"
        Image.fromarray(_bt._to_uint8(image)).save(root / "images" / rel)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / rel)
        group = f"{c}:{'aligned' if scene_class == c else 'conflicting'}"
        rows.append((split, rel, c, scene_class, photo, group, y, x, side, scan))
        counts[split] += 1

    total = NUM_CLASSES * ((1 + train_clean) * per_class["train"] + per_class["val"] + 3 * per_class["test"])
    with tqdm(total=total, desc="biased scenes", unit="image", disable=not progress) as bar:
        for pool in ("train", "val", "test"):
            rng = pool_rng[pool]
            for c in range(NUM_CLASSES):
                scan_ids = pools[pool][c]
                for k in range(per_class[pool]):
                    scan = int(scan_ids[k % len(scan_ids)])
                    digit, mask = _bt._digit(scans[scan], rng, size)
                    name = f"{k:04d}.png"
                    if pool != "test":
                        own = c if rng.random() < bias else other_class(rng, c)
                        write(pool, c, name, digit, mask, own, class_photos[own], rng, scan)
                        if pool == "train" and train_clean:
                            clean = int(rng.integers(NUM_CLASSES))
                            write(CLEAN_SPLIT, c, name, digit, mask, clean, class_photos[clean], rng, scan)
                        bar.update(1 + (pool == "train" and train_clean))
                        continue
                    other = other_class(rng, c)
                    write("test_biased", c, name, digit, mask, c, class_photos[c], rng, scan)
                    write("test_unbiased", c, name, digit, mask, -1, neutral[int(rng.integers(len(neutral)))], rng,
                          scan)
                    write("test_confounding", c, name, digit, mask, other, class_photos[other], rng, scan)
                    bar.update(3)

    group_counts: dict[str, dict[str, int]] = {}
    for split, _, _, scene_class, _, group, *_ in rows:
        if scene_class >= 0:
            group_counts.setdefault(split, {}).setdefault(group, 0)
            group_counts[split][group] += 1
    info: dict[str, Any] = {
        "name": _NAME,
        "format_version": _FORMAT_VERSION,
        "description": ("Handwritten digits (scikit-learn load_digits) on crops of real photographs "
                        "(scikit-image), one photograph per class behind most training images; masks mark the "
                        "digit. train/val: own class's scene with probability bias; test_biased: own scene; "
                        "test_unbiased: a neutral scene; test_confounding: another class's scene; train_clean: "
                        "a class scene independent of the label."),
        "size": size,
        "seed": seed,
        "photo_seed": photo_seed,
        "bias": float(bias),
        "contrast": float(contrast),
        "scene": float(scene),
        "classes": [str(c) for c in range(NUM_CLASSES)],
        "splits": {
            "train": f"own class's scene with probability {bias}, else another class's",
            "val": f"own class's scene with probability {bias}, else another class's",
            "test_biased": "own class's scene",
            "test_unbiased": "a neutral scene (a photograph of no class)",
            "test_confounding": "another class's scene: (label + 1 + r) % 10, r uniform in 0..8",
            **({CLEAN_SPLIT: "the train digits on a class scene drawn independently of the label"}
               if train_clean else {}),
        },
        "counts": counts,
        "groups": {"definition": "label:aligned when the background is the label's own scene, else "
                                 "label:conflicting", "counts": group_counts},
        "photographs": {"source": "skimage.data", "classes": class_photos, "neutral": neutral,
                        "range": [0.0, float(scene)]},
        "digit": {"side_range": list(_bt._digit_sides(size)), "mask_threshold": _bt.MASK_THRESHOLD,
                  "mask_dilation": 1},
    }
    (root / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    (root / "README.txt").write_text(_readme(info))
    with open(root / "artefacts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "label", "scene_class", "photograph", "group", "y0", "x0", "side", "scan"])
        w.writerows(rows)
    return info
