"""How a mask file's pixels say which part of an image is foreground, and the check that masks can penalise anything.

Conventions (:class:`MaskConvention`; ``isnet train`` / ``eval`` / ``data inspect`` flags in brackets):

- default: a pixel is foreground when it is nonzero in any colour channel (an alpha channel is ignored);
- ``foreground=(1,)`` [``--mask-foreground 1``]: the mask is a label map (grey or palette indices) and the pixels
  whose value is one of ``foreground`` are foreground; an Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border)
  takes ``1``, or ``1,3`` to count its border in. A mask with none of those values is a :class:`DataError`, never
  an empty mask;
- ``threshold=T`` [``--mask-threshold T``]: a soft mask (CUB's segmentations, or any mask stored as JPEG): the
  grey level scaled to [0, 1] (the largest colour channel for colour masks) is foreground when ``>= T``;
- ``invert=True`` [``--mask-invert``]: the mask marks the background (the convention of several Right for the
  Right Reasons code bases); applied after the rules above.

Masks are checked when a data set is opened for training (:func:`check_masks`): a mask that is foreground
everywhere or background everywhere gives the heatmap loss nothing to penalise. The share of such masks is
reported per split with an example file, and above ``max_share`` (5% by default, ``--mask-check``) training
refuses to start, naming the likely cause and the option that fixes it. Masks stored lossily (JPEG) get a warning
naming ``--mask-threshold``: compression noise near the edges counts as foreground under the default rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .errors import DataError

__all__ = ["DEFAULT_MAX_SHARE", "LOSSY_EXTENSIONS", "MaskConvention", "MaskReport", "MaskWarning", "check_masks",
           "decode_mask", "mask_report", "parse_foreground"]

#: Share of a split's masks that may be all foreground or all background before training refuses to start.
DEFAULT_MAX_SHARE = 0.05
#: Mask file extensions stored with lossy compression.
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
#: Distinct values listed in a hint; masks with more are soft or lossy.
_FEW_VALUES = 16


class MaskWarning(UserWarning):
    """Masks that are probably read wrongly (stored as JPEG, read without ``--mask-threshold``)."""


def parse_foreground(values: str | int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,3"`` (or ``1``, ``[1, 3]``) as the sorted tuple ``(1, 3)``; None stays None. A value that is not a
    non-negative integer is an :class:`~isnet_kernels.InputError` for ``mask_foreground``."""
    if values is None or values == "":
        return None
    if isinstance(values, str):
        items: list = [v.strip() for v in values.replace(";", ",").split(",") if v.strip()]
    elif isinstance(values, int) and not isinstance(values, bool):
        items = [values]
    else:
        items = list(values)
    out = []
    for item in items:
        try:
            number = int(item)
        except (TypeError, ValueError):
            number = -1
        if number < 0 or isinstance(item, bool) or (isinstance(item, float) and item != number):
            raise InputError(f"mask_foreground must be pixel values (non-negative integers separated by commas, e.g. "
                             f"1 or 1,3), got {values!r}", param="mask_foreground")
        out.append(number)
    if not out:
        raise InputError(f"mask_foreground must name at least one pixel value, got {values!r}",
                         param="mask_foreground")
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class MaskConvention:
    """Which mask pixels are foreground (module docstring). ``foreground`` and ``threshold`` exclude each other."""

    foreground: tuple[int, ...] | None = None
    threshold: float | None = None
    invert: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "foreground", parse_foreground(self.foreground))
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                    or not 0 < self.threshold <= 1:
                raise InputError(f"mask_threshold must be a number in (0, 1], got {self.threshold!r}",
                                 param="mask_threshold")
            if self.foreground is not None:
                raise InputError("mask_foreground and mask_threshold exclude each other: pixel values of a label "
                                 "map, or a threshold on a soft mask's grey level", param="mask_threshold")
        object.__setattr__(self, "invert", bool(self.invert))

    @classmethod
    def from_options(cls, foreground: str | Sequence[int] | None = None, threshold: float | None = None,
                     invert: bool = False) -> MaskConvention:
        """From the command line's values (``"1,3"``, ``0.5``, ``True``)."""
        return cls(parse_foreground(foreground), threshold, invert)

    def describe(self) -> str:
        """The convention in the command line's terms (``"--mask-foreground 1"``; ``"nonzero"`` by default)."""
        parts = []
        if self.foreground is not None:
            parts.append("--mask-foreground " + ",".join(map(str, self.foreground)))
        if self.threshold is not None:
            parts.append(f"--mask-threshold {self.threshold:g}")
        if self.invert:
            parts.append("--mask-invert")
        return " ".join(parts) or "nonzero pixels are foreground"

    def to_dict(self) -> dict:
        return {"foreground": list(self.foreground) if self.foreground else None, "threshold": self.threshold,
                "invert": self.invert}


def _label_map(im: Image.Image, path: str) -> np.ndarray:
    """The pixel values of a label map: grey levels, palette indices, or the common value of grey RGB pixels."""
    if im.mode in ("P", "PA"):
        return np.asarray(im.convert("P") if im.mode == "PA" else im)
    if im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im)
    if im.mode == "LA":
        return np.asarray(im)[..., 0]
    a = np.asarray(im.convert("RGB"))
    if not ((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()):
        raise DataError(f"mask {path} is a colour image: --mask-foreground VALUES reads a grey or palette label map; "
                        "convert the mask to one (a class index per pixel), or read it without --mask-foreground "
                        "(nonzero colour = foreground)")
    return a[..., 0]


def _grey_level(im: Image.Image) -> np.ndarray:
    """Grey level in [0, 1]: 8-bit divided by 255, 16-bit by 65535, float as is, colour: the largest channel."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    if im.mode == "1":
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("L", "LA"):
        a = np.asarray(im.convert("L"), dtype=np.float32)
    else:
        a = np.asarray(im.convert("RGB"), dtype=np.float32).max(axis=-1)
    return a / 255.0


def _nonzero(im: Image.Image) -> np.ndarray:
    """Nonzero in any colour channel, alpha ignored; palette indices are compared by the colours they stand for."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    a = np.asarray(im)
    if a.ndim == 2:
        return a != 0
    colour = [i for i, band in enumerate(im.getbands()) if band not in ("A", "a")]
    return (a[..., colour] != 0).any(axis=-1)


def mask_values(im: Image.Image) -> np.ndarray:
    """The distinct values of a mask read as a label map (or, for colour masks, their grey level 0..255)."""
    try:
        a = _label_map(im, "")
    except DataError:
        a = np.asarray(im.convert("L"))
    if a.dtype == np.uint8:
        return np.flatnonzero(np.bincount(a.ravel(), minlength=256))
    return np.unique(a)


def decode_mask(im: Image.Image, convention: MaskConvention | None, path: str | Path) -> np.ndarray:
    """The foreground of an opened mask under ``convention`` (None: the default) as a bool (H, W) array.

    Raises :class:`DataError` for a label-map convention whose values the mask holds none of (naming the values it
    holds), and for a colour mask read as a label map."""
    convention = convention or MaskConvention()
    if convention.foreground is not None:
        labels = _label_map(im, str(path))
        fg = np.isin(labels, convention.foreground)
        if not fg.any():
            found = ", ".join(map(str, mask_values(im)[:_FEW_VALUES]))
            raise DataError(f"mask {path} has pixel values {found}, none of them a --mask-foreground value "
                            f"({','.join(map(str, convention.foreground))}): pass the values that mark the object "
                            "(a mask without foreground is an error, not an empty mask)", param="mask_foreground")
    elif convention.threshold is not None:
        fg = _grey_level(im) >= convention.threshold
    else:
        fg = _nonzero(im)
    return ~fg if convention.invert else fg


@dataclass
class MaskReport:
    """Per split: every mask's foreground fraction, the masks with no background or no foreground, JPEG masks."""

    split: str
    convention: MaskConvention
    fractions: np.ndarray
    all_foreground: list[str] = field(default_factory=list)
    all_background: list[str] = field(default_factory=list)
    lossy: list[str] = field(default_factory=list)
    #: the distinct pixel values of the degenerate masks (union; None when more than 16: soft or lossy masks)
    values: tuple[int, ...] | None = ()

    @property
    def images(self) -> int:
        return int(self.fractions.size)

    def share(self, which: str) -> float:
        """Share of the split's masks that are ``"all_foreground"`` or ``"all_background"``."""
        return len(getattr(self, which)) / max(self.images, 1)

    def quartiles(self) -> dict[str, float]:
        """Min, quartiles and max of the foreground fraction (NaN for an empty split)."""
        names = ("min", "q1", "median", "q3", "max")
        if not self.images:
            return dict.fromkeys(names, float("nan"))
        return dict(zip(names, (float(v) for v in np.quantile(self.fractions, [0, 0.25, 0.5, 0.75, 1]))))

    def summary(self) -> str:
        """One line: all-foreground and all-background counts with an example file each."""
        parts = []
        for which, words in (("all_foreground", "all foreground"), ("all_background", "all background")):
            paths = getattr(self, which)
            example = f" (e.g. {paths[0]})" if paths else ""
            parts.append(f"{len(paths)} {words} ({100 * self.share(which):.1f}%){example}")
        return f"masks of split {self.split!r}: {self.images} images, " + ", ".join(parts)

    def lossy_warning(self) -> str | None:
        """The warning for JPEG masks read without a threshold, or None."""
        if not self.lossy or self.convention.threshold is not None:
            return None
        return (f"{len(self.lossy)} mask(s) of split {self.split!r} are stored as JPEG (e.g. {self.lossy[0]}): "
                "compression noise around the edges is read as foreground; pass --mask-threshold 0.5 (or store the "
                "masks as PNG)")

    def _cause(self, which: str) -> str:
        c, values = self.convention, self.values
        shown = "many values (a soft or lossy mask)" if values is None else \
            ("pixel values " if len(values) > 1 else "pixel value ") + ", ".join(map(str, values)) + " found"
        if c.invert:
            return f"{shown}; --mask-invert is set: drop it if the masks mark the foreground"
        if which == "all_foreground":
            if c.foreground is not None:
                return (f"{shown}; --mask-foreground {','.join(map(str, c.foreground))} covers the whole image: "
                        "name only the values that mark the object")
            if c.threshold is not None:
                return f"{shown}; raise --mask-threshold (now {c.threshold:g})"
            nonzero = [v for v in values or () if v != 0]
            if values is None:
                return f"{shown}, every pixel nonzero: try --mask-threshold 0.5"
            if len(nonzero) > 1:
                return (f"{shown}, every one nonzero, so every pixel counts as foreground (a label map or a trimap?): "
                        f"try --mask-foreground {nonzero[0]} (the value that marks the object)")
            return f"{shown}: the masks cover the whole image; if they mark the background, use --mask-invert"
        if c.foreground is not None:
            return f"{shown}; name the values that mark the object with --mask-foreground"
        if c.threshold is not None:
            return f"{shown}; lower --mask-threshold (now {c.threshold:g})"
        return f"{shown}: the masks are empty (every pixel 0); re-export them"

    def problem(self, max_share: float = DEFAULT_MAX_SHARE) -> str | None:
        """Why training on this split would be silent about its masks (the message), or None."""
        for which, words in (("all_foreground", "all foreground"), ("all_background", "all background")):
            paths = getattr(self, which)
            if paths and self.share(which) > max_share:
                return (f"{len(paths)} of {self.images} masks of split {self.split!r} ({100 * self.share(which):.1f}%) "
                        f"are {words} (e.g. {paths[0]}), more than the {100 * max_share:g}% allowed (--mask-check): "
                        f"the heatmap loss cannot penalise background relevance on them. Likely cause: "
                        f"{self._cause(which)}")
        return None


def mask_report(split: str, count: int, read: Callable[[int], tuple[np.ndarray, np.ndarray | None, str]],
                convention: MaskConvention | None = None, progress: bool = False) -> MaskReport:
    """Read ``count`` masks with ``read(i) -> (foreground bool array, distinct values or None, file name)`` into a
    :class:`MaskReport`."""
    from tqdm.auto import tqdm

    convention = convention or MaskConvention()
    fractions = np.zeros(count, dtype=np.float64)
    report = MaskReport(split, convention, fractions)
    values: set[int] = set()
    many = False
    for i in tqdm(range(count), desc=f"masks {split}", unit="mask", disable=not progress, leave=False):
        fg, distinct, name = read(i)
        fractions[i] = float(fg.mean()) if fg.size else 0.0
        if Path(name).suffix.lower() in LOSSY_EXTENSIONS:
            report.lossy.append(name)
        degenerate = fg.all() or not fg.any()
        if degenerate:
            (report.all_foreground if fg.all() else report.all_background).append(name)
            if distinct is not None:
                if len(distinct) > _FEW_VALUES:
                    many = True
                else:
                    values.update(int(v) for v in distinct)
    report.values = None if many else tuple(sorted(values))
    return report


def check_masks(dataset, max_share: float = DEFAULT_MAX_SHARE, *, progress: bool = False,
                log: Callable[[str], None] | None = None) -> MaskReport:
    """Read every mask of ``dataset`` (a data set with ``read_mask(i)`` and ``mask_convention``), report it
    (``log``), warn about JPEG masks (:class:`MaskWarning`) and raise :class:`DataError` when more than
    ``max_share`` of them are all foreground or all background (:meth:`MaskReport.problem`)."""
    report = mask_report(dataset.split, len(dataset), dataset.read_mask, dataset.mask_convention, progress)
    if log is not None:
        log(report.summary())
    lossy = report.lossy_warning()
    if lossy:
        warnings.warn(lossy, MaskWarning, stacklevel=2)
        if log is not None:
            log(f"warning: {lossy}")
    problem = report.problem(max_share)
    if problem:
        raise DataError(problem, param="mask_check")
    return report
