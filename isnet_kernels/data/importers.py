"""Manifests (:mod:`.manifest`) written from the layouts public data sets ship, without copying their images.

``isnet data import SOURCE ROOT OUT`` (:func:`import_dataset`):

- ``oxford-pet``: ROOT holds ``images/<Breed>_<n>.jpg``, ``annotations/trimaps/<Breed>_<n>.png`` (1 pet,
  2 background, 3 border: train with ``--mask-foreground 1``, or ``1,3``) and ``annotations/trainval.txt`` /
  ``test.txt`` (``name class-id species breed-id``). Label: the breed (the name before the last ``_``); group:
  the species (cat, dog).
- ``cub``: ROOT is ``CUB_200_2011`` with ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
  ``bounding_boxes.txt`` (``id x y width height``), ``classes.txt`` and ``images/``; the segmentations (a separate
  download, soft masks: train with ``--mask-threshold 0.5``) are found at ``ROOT/segmentations`` or beside ROOT,
  or given (``segmentations=``). Every row gets its box; with segmentations also its mask (used over the box).
- ``waterbirds``: ROOT holds ``metadata.csv`` (``img_filename, y, split, place``: y 1 = waterbird, split 0/1/2 =
  train/val/test, place 1 = water) and the images. Waterbirds pastes CUB birds onto places at the CUB image's
  size, so CUB's segmentations are its masks (found as for ``cub``, or ``segmentations=``). Group:
  ``<label>_on_<place>`` (``waterbird_on_land``), Waterbirds' four groups.

Splits: a data set's own test split is ``test``; its training split is divided into ``train`` and ``val``
(``val_fraction`` of each class, chosen by ``seed``) unless it ships a validation split (Waterbirds). Paths in the
manifest are relative to its folder. The manifest is written atomically; an existing one is replaced only with
``overwrite``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import InputError
from .errors import DataError

__all__ = ["IMPORTERS", "import_cub", "import_dataset", "import_oxford_pet", "import_waterbirds"]

Row = dict[str, str]
FIELDS = ("image", "label", "mask", "box", "split", "group")


def _need(path: Path, what: str, source: str) -> Path:
    if not path.exists():
        raise DataError(f"{path} does not exist: {what} of the {source} layout; pass as ROOT the folder that holds "
                        "it, as the data set ships it")
    return path


def _table(path: Path, source: str, columns: int) -> dict[str, list[str]]:
    """A whitespace-separated file ``id value ...`` as ``{id: [values]}``."""
    out: dict[str, list[str]] = {}
    for n, line in enumerate(_need(path, path.name, source).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < columns:
            raise DataError(f"{path}, line {n}: expected {columns} fields, got {line!r}")
        out[fields[0]] = fields[1:]
    return out


def _hold_out(rows: list[Row], val_fraction: float, seed: int) -> None:
    """Mark ``val_fraction`` of each class of the ``train`` rows as ``val`` (at least one of a class of two or more;
    a permutation by ``seed``)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Row]] = {}
    for r in rows:
        if r["split"] == "train":
            by_class.setdefault(r["label"], []).append(r)
    for label in sorted(by_class):
        members = by_class[label]
        k = int(round(len(members) * val_fraction))
        if val_fraction > 0 and len(members) > 1:
            k = min(max(k, 1), len(members) - 1)
        for i in rng.permutation(len(members))[:k]:
            members[int(i)]["split"] = "val"


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()


def _write(out: Path, rows: list[Row], overwrite: bool) -> Path:
    if out.suffix.lower() != ".csv":
        raise InputError(f"the manifest must be a .csv file, got {out}", param="out")
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; pass --overwrite (overwrite=True) to replace it, or choose another file")
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=[f for f in FIELDS if any(r.get(f) for r in rows) or f in
                                              ("image", "label")], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text.getvalue())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {out}: {exc}") from exc
    return out


def _segmentations(root: Path, given: str | os.PathLike[str] | None) -> Path | None:
    if given is not None:
        return _need(Path(given), "the segmentations folder", "CUB")
    for candidate in (root / "segmentations", root.parent / "segmentations"):
        if candidate.is_dir():
            return candidate
    return None


def import_oxford_pet(root: str | os.PathLike[str], out: str | os.PathLike[str], *, val_fraction: float = 0.1,
                      seed: int = 0, overwrite: bool = False) -> dict:
    """The Oxford-IIIT Pet layout (module docstring) as a manifest at ``out``; returns :func:`_summary`."""
    root, out = Path(root), Path(out)
    images, trimaps = _need(root / "images", "images/", "Oxford-IIIT Pet"), \
        _need(root / "annotations" / "trimaps", "annotations/trimaps/", "Oxford-IIIT Pet")
    rows: list[Row] = []
    for listing, split in (("trainval.txt", "train"), ("test.txt", "test")):
        for name, (_, species, _) in _table(root / "annotations" / listing, "Oxford-IIIT Pet", 4).items():
            image = images / f"{name}.jpg"
            mask = trimaps / f"{name}.png"
            for path, what in ((image, "image"), (mask, "trimap")):
                if not path.is_file():
                    raise DataError(f"{root / 'annotations' / listing} lists {name}, but its {what} {path} does not "
                                    "exist")
            rows.append({"image": _rel(image, out), "label": name.rsplit("_", 1)[0], "mask": _rel(mask, out),
                         "split": split, "group": {"1": "cat", "2": "dog"}.get(species, species)})
    _hold_out(rows, val_fraction, seed)
    return _summary(_write(out, rows, overwrite), rows, "--mask-foreground 1 (the trimap's pet; 1,3 with its border)")


def import_cub(root: str | os.PathLike[str], out: str | os.PathLike[str], *,
               segmentations: str | os.PathLike[str] | None = None, boxes_only: bool = False,
               val_fraction: float = 0.1, seed: int = 0, overwrite: bool = False) -> dict:
    """The CUB_200_2011 layout (module docstring) as a manifest at ``out``; ``boxes_only`` ignores segmentations."""
    root, out = Path(root), Path(out)
    source = "CUB-200-2011"
    paths = _table(root / "images.txt", source, 2)
    labels = _table(root / "image_class_labels.txt", source, 2)
    is_train = _table(root / "train_test_split.txt", source, 2)
    boxes = _table(root / "bounding_boxes.txt", source, 5)
    classes = {k: v[0] for k, v in _table(root / "classes.txt", source, 2).items()}
    seg = None if boxes_only else _segmentations(root, segmentations)
    rows: list[Row] = []
    for image_id in sorted(paths, key=int):
        rel = paths[image_id][0]
        image = root / "images" / rel
        if not image.is_file():
            raise DataError(f"{root / 'images.txt'} lists {rel} (id {image_id}), but {image} does not exist")
        try:
            label = classes[labels[image_id][0]]
            split = "train" if is_train[image_id][0] == "1" else "test"
            x, y, w, h = (float(v) for v in boxes[image_id][:4])
        except (KeyError, ValueError) as exc:
            raise DataError(f"image id {image_id} ({rel}) has no class, split or box in {root}'s tables ({exc})") \
                from None
        row = {"image": _rel(image, out), "label": label, "box": f"{x:g} {y:g} {x + w:g} {y + h:g}", "split": split}
        if seg is not None:
            mask = seg / Path(rel).with_suffix(".png")
            if not mask.is_file():
                raise DataError(f"no segmentation {mask} for image {rel}: the segmentations folder {seg} must hold "
                                "one PNG per image at the same relative path (or import boxes only: --boxes-only)")
            row["mask"] = _rel(mask, out)
        rows.append(row)
    _hold_out(rows, val_fraction, seed)
    hint = "--mask-threshold 0.5 (soft segmentations)" if seg is not None else "(boxes: no option needed)"
    return _summary(_write(out, rows, overwrite), rows, hint)


def import_waterbirds(root: str | os.PathLike[str], out: str | os.PathLike[str], *,
                      segmentations: str | os.PathLike[str] | None = None, overwrite: bool = False) -> dict:
    """The Waterbirds layout (module docstring) as a manifest at ``out``, its groups kept."""
    root, out = Path(root), Path(out)
    metadata = _need(root / "metadata.csv", "metadata.csv", "Waterbirds")
    seg = _segmentations(root, segmentations)
    if seg is None:
        raise DataError(f"no segmentations found for {root} (looked for {root / 'segmentations'} and "
                        f"{root.parent / 'segmentations'}): Waterbirds ships none; its masks are CUB-200-2011's "
                        "segmentations (segmentations.tgz): pass their folder with --segmentations DIR")
    rows: list[Row] = []
    with open(metadata, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"img_filename", "y", "split", "place"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{metadata} lacks the columns {sorted(missing)} (its columns: {reader.fieldnames})")
        for line_row in reader:
            n = reader.line_num
            rel = line_row["img_filename"]
            image = root / rel
            if not image.is_file():
                raise DataError(f"{metadata}, line {n}, column img_filename: {image} does not exist")
            split = {"0": "train", "1": "val", "2": "test"}.get(line_row["split"].strip())
            label = {"0": "landbird", "1": "waterbird"}.get(line_row["y"].strip())
            place = {"0": "land", "1": "water"}.get(line_row["place"].strip())
            if split is None or label is None or place is None:
                raise DataError(f"{metadata}, line {n}: y, split and place must be 0/1, 0/1/2 and 0/1, got "
                                f"{line_row['y']!r}, {line_row['split']!r}, {line_row['place']!r}")
            mask = seg / Path(rel).with_suffix(".png")
            if not mask.is_file():
                raise DataError(f"no segmentation {mask} for image {rel} ({metadata}, line {n}): the segmentations "
                                f"folder {seg} must hold one PNG per image at the same relative path")
            rows.append({"image": _rel(image, out), "label": label, "mask": _rel(mask, out), "split": split,
                         "group": f"{label}_on_{place}"})
    if not rows:
        raise DataError(f"{metadata} lists no images")
    return _summary(_write(out, rows, overwrite), rows, "--mask-threshold 0.5 (soft segmentations)")


def _summary(out: Path, rows: list[Row], hint: str) -> dict:
    """What an importer returns: the manifest, images per split, classes, groups, and the mask option to train
    with."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    return {"manifest": str(out), "images": len(rows), "counts": dict(sorted(counts.items())),
            "classes": len({r["label"] for r in rows}), "groups": sorted({r["group"] for r in rows if r.get("group")}),
            "mask_option": hint}


IMPORTERS: dict[str, Callable[..., dict]] = {"oxford-pet": import_oxford_pet, "cub": import_cub,
                                             "waterbirds": import_waterbirds}


def import_dataset(source: str, root: str | os.PathLike[str], out: str | os.PathLike[str], **options) -> dict:
    """``IMPORTERS[source](root, out, **options)``."""
    if source not in IMPORTERS:
        raise InputError(f"unknown source {source!r}; choose one of {', '.join(IMPORTERS)}", param="source")
    return IMPORTERS[source](root, out, **options)
