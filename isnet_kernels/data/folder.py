"""Image classification data with a foreground mask per image, read from a plain folder layout.

Layout (any tool can write it)::

    ROOT/images/<split>/<class>/<name>.png     the image (grayscale or colour)
    ROOT/masks/<split>/<class>/<name>.png      its foreground mask, at the same relative path

``<split>`` is any folder name (``train``, ``val``, ``test``, ...), ``<class>`` one folder per class. Classes
are numbered in the sorted order of their folder names, so class ``i`` is ``classes[i]`` in every split that
holds the same class folders. Images may sit in sub-folders of a class folder; the mask then sits at the same
relative path under ``masks/``. Image and mask files may be ``.png``, ``.jpg``, ``.jpeg`` or ``.bmp`` (any
letter case); a mask is looked up by the image's relative path and stem, preferring the image's own extension.
Hidden files and folders (names starting with ``.``) and files with other extensions are ignored.

Symbolic links: a link to an image file is read as that file. A link to a folder (a split, a class or a
sub-folder) is followed only when it points inside the data set folder and to a folder the walk has not entered
yet; a link out of the data set, or back to a folder on the way (a loop) or already walked (a second path to the
same images, which would count them twice), is a :class:`DataError` naming the link, never followed in silence.

By default a mask pixel is foreground when it is nonzero in any colour channel (an alpha channel is ignored), so a
black-and-white PNG, a 0/1 label map or a colour annotation all work; label maps (trimaps), soft masks and masks
that mark the background take a :class:`~.masks.MaskConvention` (``mask_convention=``; ``--mask-foreground``,
``--mask-threshold``, ``--mask-invert``). Masks should be stored lossless (PNG, BMP): JPEG compression leaves faint
nonzero noise around the edges, which counts as foreground (:func:`~.masks.check_masks` warns).

The ISNet uses the mask to tell foreground (the object the label is about) from background: its heatmap loss
penalises relevance outside the mask. Missing or wrong masks therefore fail loudly, with the file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import InputError
from .errors import DataError
from .masks import MaskConvention, decode_mask, mask_values

__all__ = ["IMAGE_EXTENSIONS", "MaskedImageFolder", "splits"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
"""File extensions read as images and masks (compared in lower case)."""

_EXTENSIONS_TEXT = ", ".join(IMAGE_EXTENSIONS)

# Pillow modes read as one channel; every other mode is converted to RGB. 16-bit and 32-bit integer modes are
# scaled by 1/65535 (16-bit grey levels, as medical PNGs hold), float mode "F" is taken as already in [0, 1].
_GREY_8BIT_MODES = frozenset({"1", "L", "LA", "La"})
_GREY_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_root(root: Path) -> Path:
    """``ROOT/images``, after checking that it exists."""
    if not root.is_dir():
        raise DataError(
            f"data set folder {root} does not exist (or is not a folder); expected the layout "
            f"ROOT/images/<split>/<class>/<name>.png with masks at ROOT/masks/<split>/<class>/<name>.png"
        )
    images = root / "images"
    if not images.is_dir():
        raise DataError(
            f"{root} has no 'images' folder ({images}); expected the layout "
            f"ROOT/images/<split>/<class>/<name>.png with masks at ROOT/masks/<split>/<class>/<name>.png"
        )
    return images


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _linked_folder(link: str, root: str, visited: set[str]) -> str | None:
    """The real path of the folder a symbolic link ``link`` points to, when the walk may follow it (inside the data
    set folder ``root``, not visited yet); None for a link to something that is not a folder. Raises
    :class:`DataError` for a link out of the data set or to a folder already visited (a loop, or a second path)."""
    target = os.path.realpath(link)
    if not os.path.isdir(target):
        return None
    if not _inside(target, root):
        raise DataError(f"{link} is a symbolic link to {target}, outside the data set folder {root}; data folders are "
                        "read without following links out of the data set: move or copy that folder into the data "
                        "set, or remove the link")
    if target in visited:
        raise DataError(f"{link} is a symbolic link to {target}, a folder already read on this path (a loop, or a "
                        "second path to the same images, which would count them twice or under another class): "
                        "remove the link")
    return target


def _subfolders(folder: Path, root: Path | None = None) -> list[str]:
    """Names of the non-hidden sub-folders of ``folder``, sorted; a sub-folder that is a symbolic link must point
    to a folder inside ``root`` (default: ``folder``'s parent) that is not ``folder`` or above it."""
    real = os.path.realpath(folder)
    base = os.path.realpath(root if root is not None else folder.parent)
    ancestors = {real, *(str(p) for p in Path(real).parents if _inside(str(p), base))}
    names = []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False) or (entry.is_symlink() and _linked_folder(entry.path, base, ancestors)):
            names.append(entry.name)
    return sorted(names)


def splits(root: str | os.PathLike[str]) -> list[str]:
    """The splits of a data set: the sorted names of the folders in ``ROOT/images``.

    Raises
    ------
    DataError
        ``root`` or ``ROOT/images`` does not exist.
    """
    return _subfolders(_check_root(Path(root)), Path(root))


def _image_files(class_dir: Path, root: Path, visited: set[str]) -> list[str]:
    """Relative paths (with ``/``) of the image files under ``class_dir``, recursively, sorted.

    Links to folders are followed only inside the data set folder ``root`` and to folders not entered yet
    (``visited``, shared by the class folders of a split, plus the folders from ``root`` down): a loop, a second
    path to a folder or a link out of the data set is a :class:`DataError` (module docstring). Links to files are
    read as files."""
    base = os.path.realpath(root)
    start = os.path.realpath(class_dir)
    visited.update(str(p) for p in Path(start).parents if _inside(str(p), base))
    if class_dir.is_symlink():
        _linked_folder(str(class_dir), base, visited)
    elif start in visited:
        raise DataError(f"{class_dir} was read already through a symbolic link to it (its images would count twice, "
                        "under two classes): remove the link")
    visited.add(start)
    found: list[str] = []

    def walk(folder: str, rel: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                visited.add(os.path.realpath(entry.path))
                walk(entry.path, path)
            elif entry.is_symlink():
                target = _linked_folder(entry.path, base, visited)
                if target is not None:
                    visited.add(target)
                    walk(entry.path, path)
                elif _is_image_name(entry.name):
                    found.append(path)  # a link to a file (or a dangling one: an error naming it when read)
            elif _is_image_name(entry.name) and entry.is_file():
                found.append(path)

    walk(str(class_dir), "")
    return sorted(found)


def _channels_of_mode(mode: str) -> int:
    """How many channels an image of this Pillow mode is read with: 1 for grey modes, else 3."""
    return 1 if mode in _GREY_8BIT_MODES or mode in _GREY_WIDE_MODES or mode == "F" else 3


def _image_array(im: Image.Image) -> np.ndarray:
    """Pixels of an opened image as a float32 (H, W, C) array in [0, 1], C = ``_channels_of_mode(im.mode)``.

    8-bit modes are divided by 255 (grey modes read as one channel, an alpha channel is dropped, palette and
    other colour modes are converted to RGB), 16-bit and 32-bit integer grey levels by 65535, and float
    images are clipped to [0, 1].
    """
    mode = im.mode
    if mode in _GREY_WIDE_MODES:
        a = np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
    elif mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    else:
        a = np.asarray(im.convert("L" if mode in _GREY_8BIT_MODES else "RGB"), dtype=np.float32) / 255.0
    return a[..., None] if a.ndim == 2 else a


def _normalise_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be None, an int or a pair (H, W) of ints, got {size!r}", param="size") from None
    if h <= 0 or w <= 0 or tuple(size) != (h, w):
        raise InputError(f"size must be positive integers (H, W), got {size!r}", param="size")
    return h, w


class MaskedImageFolder(Dataset):
    """One split of a masked image folder (``ROOT/images/<split>``, ``ROOT/masks/<split>``) as a Dataset.

    Item ``i`` is ``(image, mask, label)``:

    - ``image``: float32 tensor (C, H, W) with values in [0, 1] (8-bit pixels divided by 255);
    - ``mask``: float32 tensor (1, H, W) with values in {0, 1}; 1 marks foreground (nonzero mask pixels);
    - ``label``: int, the index of the image's class folder in :attr:`classes`.

    With ``masks=False`` no masks are looked for and item ``i`` is ``(image, label)``.

    Parameters
    ----------
    root : str or path
        The data set folder, holding ``images/`` and (unless ``masks=False``) ``masks/``.
    split : str
        The split folder name, one of :func:`splits` ``(root)``.
    size : int or (H, W), optional
        Resize every image and its mask to this size when loaded: the image bilinearly (antialiased when
        shrinking), the mask by nearest neighbour, so it stays binary. Without ``size`` the images are kept
        at their own size, and all images of the split must share one size (checked when each is loaded),
        so that a DataLoader can stack them into a batch.
    channels : 1 or 3, optional
        Convert every image to this many channels: grey to RGB by repeating the channel, RGB to grey by the
        luma weights 0.299 R + 0.587 G + 0.114 B (as Pillow's ``convert("L")``). Without it each image keeps
        its own channel count (1 for grey images, 3 for everything else, alpha dropped), and all images of
        the split must share it.
    masks : bool, default True
        Whether to read masks. Every image must have one; this is checked (by path only) here.
    mask_convention : MaskConvention, optional
        Which mask pixels are foreground (:mod:`.masks`); default: nonzero pixels.

    Attributes
    ----------
    classes : list of str
        Class folder names, sorted; ``label`` indexes it.
    class_to_idx : dict of str to int
        Class folder name to label.
    samples : list of (str, str or None, int)
        ``(image_path, mask_path, label)`` per item, in order (class, then relative path). ``mask_path`` is
        None when ``masks=False``.
    targets : list of int
        The label of every item (for samplers that balance classes).

    Raises
    ------
    DataError
        Here: the root, ``ROOT/images``, the split or its mask folder is missing, the split has no class
        folders, a class folder holds no images, or an image has no mask. When an item is loaded (and by
        :meth:`verify` for every item): a file cannot be read, a mask's size differs from its image's, or
        (without ``size`` / ``channels``) an image's size or channel count differs from the split's first
        image. Every message names the file and the fix.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        size: int | Sequence[int] | None = None,
        channels: int | None = None,
        masks: bool = True,
        mask_convention: MaskConvention | None = None,
    ) -> None:
        if channels not in (None, 1, 3):
            raise InputError(f"channels must be None, 1 or 3, got {channels!r}", param="channels")
        self.root = Path(root)
        self.split = str(split)
        self.size = _normalise_size(size)
        self.channels = channels
        self.masks = bool(masks)
        self.mask_convention = mask_convention or MaskConvention()

        images_root = _check_root(self.root)
        image_dir = images_root / self.split
        if not image_dir.is_dir():
            available = _subfolders(images_root, self.root)
            raise DataError(
                f"split folder {image_dir} does not exist; the splits of {self.root} are "
                f"{available if available else '(none)'}: pick one of them or create the folder"
            )
        if image_dir.is_symlink():  # a split folder that is a link: inside the data set only
            _linked_folder(str(image_dir), os.path.realpath(self.root), {os.path.realpath(images_root)})
        self.classes: list[str] = _subfolders(image_dir, self.root)
        if not self.classes:
            raise DataError(
                f"split folder {image_dir} holds no class folders; put the images of each class in their own "
                f"sub-folder: {image_dir}/<class>/<name>.png"
            )
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}

        mask_dir = self.root / "masks" / self.split
        if self.masks and not mask_dir.is_dir():
            raise DataError(
                f"mask folder {mask_dir} does not exist; write each image's mask at the same relative path "
                f"under {self.root / 'masks'} (e.g. {mask_dir}/<class>/<name>.png), or read the images without "
                f"masks (MaskedImageFolder(..., masks=False), from Python)"
            )

        self.samples: list[tuple[str, str | None, int]] = []
        visited: set[str] = set()  # real paths of the folders read, across the split's classes
        mask_index: dict[Path, dict[str, list[str]]] = {}  # folder -> stem -> mask file names there
        for label, cls in enumerate(self.classes):
            files = _image_files(image_dir / cls, self.root, visited)
            if not files:
                raise DataError(
                    f"class folder {image_dir / cls} holds no images ({_EXTENSIONS_TEXT}); add its images or "
                    f"remove the folder"
                )
            for rel in files:
                image_path = image_dir / cls / rel
                mask_path = self._find_mask(mask_dir / cls, rel, image_path, mask_index) if self.masks else None
                self.samples.append((str(image_path), mask_path, label))
        self.targets: list[int] = [s[2] for s in self.samples]
        self._reference: tuple[str, tuple[int, int], int] | None = None  # first image: path, (H, W), channels

    @staticmethod
    def _find_mask(mask_class_dir: Path, rel: str, image_path: Path, index: dict[Path, dict[str, list[str]]]) -> str:
        """Path of the mask of image ``rel`` (relative to its class folder): same relative path and stem."""
        rel_dir, name = os.path.split(rel)
        folder = mask_class_dir / rel_dir if rel_dir else mask_class_dir
        if folder not in index:
            stems: dict[str, list[str]] = {}
            if folder.is_dir():
                for entry in os.scandir(folder):
                    if _is_image_name(entry.name) and entry.is_file():
                        stems.setdefault(os.path.splitext(entry.name)[0], []).append(entry.name)
            index[folder] = stems
        stem, ext = os.path.splitext(name)
        candidates = index[folder].get(stem)
        if not candidates:
            expected = folder / f"{stem}.png"
            where = "" if folder.is_dir() else f" (the folder {folder} does not exist)"
            raise DataError(
                f"no mask for image {image_path}: expected {expected} (or the same stem with "
                f"{_EXTENSIONS_TEXT}){where}; write the mask there, or read the images "
                f"without masks (MaskedImageFolder(..., masks=False), from Python)"
            )
        order = [ext.lower(), *IMAGE_EXTENSIONS]  # the image's own extension first
        best = min(candidates, key=lambda n: (order.index(os.path.splitext(n)[1].lower()), n))
        return str(folder / best)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} images, "
            f"{len(self.classes)} classes, size={self.size}, channels={self.channels}, masks={self.masks})"
        )

    # -- loading -------------------------------------------------------------------------------------------

    def _reference_image(self) -> tuple[str, tuple[int, int], int]:
        """Path, (H, W) and channel count of the split's first image, read from its header only."""
        if self._reference is None:
            path = self.samples[0][0]
            try:
                with Image.open(path) as im:
                    self._reference = (path, (im.height, im.width), _channels_of_mode(im.mode))
            except Exception as exc:
                raise DataError(f"cannot read image file {path}: {exc}; replace or delete the file") from exc
        return self._reference

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Image (H, W, C) float32 array, mask (H, W) bool array (or None) and label of item ``index``, checked."""
        image_path, mask_path, label = self.samples[index]
        try:
            with Image.open(image_path) as im:
                mode = im.mode
                image = _image_array(im)
        except Exception as exc:
            raise DataError(f"cannot read image file {image_path}: {exc}; replace or delete the file") from exc
        height, width, c = image.shape
        if self.size is None or self.channels is None:
            first, (h0, w0), c0 = self._reference_image()
            if self.size is None and (height, width) != (h0, w0):
                raise DataError(
                    f"image {image_path} has size (H, W) = ({height}, {width}) but the first image of split "
                    f"{self.split!r}, {first}, has ({h0}, {w0}); images are batched together, so they need one "
                    f"size: pass size=(H, W) to resize every image and mask when it is loaded"
                )
            if self.channels is None and c != c0:
                raise DataError(
                    f"image {image_path} has {c} channel(s) (mode {mode}) but the first image of split "
                    f"{self.split!r}, {first}, has {c0}; images are batched together, so they need one channel "
                    f"count: pass channels=1 or channels=3 to convert every image when it is loaded"
                )
        mask = self._mask_for(index, (height, width)) if mask_path is not None else None
        return image, mask, label

    def _mask_for(self, index: int, image_hw: tuple[int, int]) -> np.ndarray:
        """The foreground of item ``index`` as a bool array of its image's size ``image_hw``, checked."""
        image_path, mask_path, _ = self.samples[index]
        mask = self.read_mask(index, values=False)[0]
        if mask.shape != image_hw:
            raise DataError(
                f"mask {mask_path} has size (H, W) = {mask.shape} but its image {image_path} has "
                f"{image_hw}; a mask must be the size of its image: re-export it, or resize it with "
                f"nearest-neighbour interpolation"
            )
        return mask

    def read_mask(self, index: int, values: bool = True) -> tuple[np.ndarray, np.ndarray | None, str]:
        """The foreground (bool (H, W), at the file's size), the distinct pixel values (None without ``values``)
        and the path of item ``index``'s mask, without reading its image (:func:`~.masks.check_masks`)."""
        mask_path = self.samples[index][1]
        if mask_path is None:
            raise DataError(f"{self!r} was opened without masks (masks=False)")
        try:
            with Image.open(mask_path) as im:
                return (decode_mask(im, self.mask_convention, mask_path), mask_values(im) if values else None,
                        mask_path)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read mask file {mask_path}: {exc}; replace or delete the file") from exc

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int] | tuple[Tensor, int]:
        image_np, mask_np, label = self._read(index)
        image = torch.from_numpy(image_np).permute(2, 0, 1)  # (C, H, W)
        if self.channels == 1 and image.shape[0] == 3:  # luma before resizing: one channel to resize
            weights = image.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            image = (image * weights).sum(dim=0, keepdim=True)
        if self.size is not None and tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)
            image = image[0].clamp_(0.0, 1.0)
        if self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        image = image.contiguous()
        if mask_np is None:
            return image, label
        mask = torch.from_numpy(mask_np.astype(np.float32))[None]  # (1, H, W)
        if self.size is not None and tuple(mask.shape[-2:]) != self.size:
            mask = F.interpolate(mask[None], size=self.size, mode="nearest-exact")[0]
        return image, mask, label

    def verify(self, progress: bool = True) -> None:
        """Read every image and mask of the split and check it, stopping at the first bad file.

        Checks what loading an item checks (the file can be decoded, the mask has its image's size and,
        without ``size`` / ``channels``, every image has the split's size and channel count), for all items,
        so bad data is found before training rather than in the middle of an epoch.

        Parameters
        ----------
        progress : bool, default True
            Show a tqdm progress bar.

        Raises
        ------
        DataError
            The first bad file, named in the message with the fix.
        """
        for i in tqdm(range(len(self)), desc=f"verify {self.split}", unit="image", disable=not progress):
            self._read(i)
