"""What a data set holds, split by split, and a figure of a few images with their masks outlined: what to run first on
a new data set (``isnet data inspect DATA``).

:func:`inspect_data` reports per split the images per class, the image sizes, the distribution of the masks'
foreground fraction (min, quartiles, max) under the mask convention given, the masks that are all foreground or all
background (with an example file and, above ``max_share``, the likely cause and the fixing option, as training
would refuse them: :mod:`.masks`), masks stored as JPEG, and the groups of a manifest. Only image headers and the
masks are read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import DataError
from .manifest import dataset_splits, open_dataset
from .masks import DEFAULT_MAX_SHARE, MaskConvention, mask_report

__all__ = ["format_inspection", "inspect_data", "mask_overview_figure"]


def _sizes(dataset) -> Counter:
    sizes: Counter = Counter()
    for image, *_ in dataset.samples:
        try:
            with Image.open(image) as im:
                sizes[f"{im.width}x{im.height}"] += 1
        except Exception as exc:
            raise DataError(f"cannot read image file {image}: {exc}; replace or delete the file") from exc
    return sizes


def inspect_data(data: str | os.PathLike[str], splits: Sequence[str] | None = None, *,
                 mask_convention: MaskConvention | None = None, max_share: float = DEFAULT_MAX_SHARE,
                 figure: str | os.PathLike[str] | None = None, images: int = 8, progress: bool = False
                 ) -> dict[str, Any]:
    """The per-split report of the module docstring, as a JSON-able dict ``{"data", "mask_convention", "splits":
    {split: {...}}, "figure"}``; with ``figure``, a PNG of ``images`` images of the first split with their masks
    outlined (:func:`mask_overview_figure`)."""
    convention = mask_convention or MaskConvention()
    names = list(splits) if splits else dataset_splits(data)
    out: dict[str, Any] = {"data": str(data), "mask_convention": convention.describe(), "splits": {}, "figure": None}
    first = None
    for split in names:
        dataset = open_dataset(data, split, mask_convention=convention)
        first = first or dataset
        report = mask_report(split, len(dataset), dataset.read_mask, convention, progress)
        if getattr(dataset, "multilabel", False):  # every label of every image
            counts = Counter(dataset.class_to_idx[label] for row in dataset.rows for label in row.labels)
        else:
            counts = Counter(dataset.targets)
        groups = getattr(dataset, "groups", None)
        group_counts = dict(sorted(Counter(g for g in groups if g is not None).items())) if groups else {}
        out["splits"][split] = {
            "images": len(dataset),
            "classes": len(dataset.classes),
            "per_class": {c: counts.get(i, 0) for i, c in enumerate(dataset.classes)},
            "sizes": dict(_sizes(dataset).most_common()),
            "foreground_fraction": report.quartiles(),
            "all_foreground": len(report.all_foreground),
            "all_background": len(report.all_background),
            "all_foreground_example": report.all_foreground[0] if report.all_foreground else None,
            "all_background_example": report.all_background[0] if report.all_background else None,
            "jpeg_masks": len(report.lossy),
            "groups": group_counts,
            "problem": report.problem(max_share),
            "warning": report.lossy_warning(),
        }
    if figure is not None and first is not None:
        out["figure"] = str(mask_overview_figure(first, figure, images))
    return out


def mask_overview_figure(dataset, path: str | os.PathLike[str], images: int = 8, dpi: int = 100) -> Path:
    """A PNG of ``images`` items of ``dataset`` spread over it, each image with its mask's outline (red) and its
    class; matplotlib's Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, min(int(images), len(dataset)))
    picks = np.linspace(0, len(dataset) - 1, n).round().astype(int)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    for k, index in enumerate(picks):
        ax = fig.add_subplot(rows, cols, k + 1)
        image_path, _, label = dataset.samples[index]
        with Image.open(image_path) as im:
            pixels = np.asarray(im.convert("RGB"))
        mask = dataset.read_mask(int(index), values=False)[0]
        ax.imshow(pixels)
        if mask.any() and not mask.all() and mask.shape == pixels.shape[:2]:
            ax.contour(mask.astype(np.float32), levels=[0.5], colors="red", linewidths=1.2)
        state = " (all fg)" if mask.all() else " (no fg)" if not mask.any() else f" ({100 * mask.mean():.0f}% fg)"
        name = dataset.classes[label] if 0 <= label < len(dataset.classes) else "?"
        ax.set_title(f"{str(name)[:20]}{state}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _fraction(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def format_inspection(result: dict[str, Any], max_classes: int = 12) -> str:
    """:func:`inspect_data`'s result as text, a few lines per split."""
    lines = [f"{result['data']} (masks: {result['mask_convention']})"]
    for split, r in result["splits"].items():
        per_class = r["per_class"]
        counts = sorted(per_class.values())
        if len(per_class) <= max_classes:
            classes = ", ".join(f"{c} {n}" for c, n in per_class.items())
        else:
            classes = f"min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]} per class"
        lines.append(f"split {split}: {r['images']} images, {r['classes']} classes ({classes})")
        sizes = list(r["sizes"].items())
        shown = ", ".join(f"{s} ({n})" for s, n in sizes[:4]) + (f", ... ({len(sizes)} sizes)" if len(sizes) > 4
                                                                    else "")
        lines.append(f"  image sizes: {shown}")
        q = r["foreground_fraction"]
        lines.append("  foreground fraction: " + ", ".join(f"{k} {_fraction(v)}" for k, v in q.items()))
        share = 100 / max(r["images"], 1)
        fg = f"all foreground {r['all_foreground']} ({share * r['all_foreground']:.1f}%)"
        bg = f"all background {r['all_background']} ({share * r['all_background']:.1f}%)"
        example = r["all_foreground_example"] or r["all_background_example"]
        lines.append(f"  masks: {fg}, {bg}" + (f", e.g. {example}" if example else ""))
        if r["groups"]:
            lines.append("  groups: " + ", ".join(f"{g} {n}" for g, n in r["groups"].items()))
        if r["warning"]:
            lines.append(f"  warning: {r['warning']}")
        if r["problem"]:
            lines.append(f"  training would refuse this split: {r['problem']}")
    if result.get("figure"):
        lines.append(f"figure: {result['figure']}")
    return "\n".join(lines)
