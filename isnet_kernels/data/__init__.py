"""Data sets with a foreground mask per image, for training classifiers that must ignore backgrounds.

Public API
----------
MaskedImageFolder(root, split, *, size=None, channels=None, masks=True)
    ``ROOT/images/<split>/<class>/<name>.png`` with masks at ``ROOT/masks/<split>/<class>/<name>.png``, as a
    Dataset of ``(image (C, H, W) in [0, 1], mask (1, H, W) in {0, 1}, label)``.
splits(root) -> list of the split folder names of a data set.
write_biased_digits(root, *, size=32, per_class_train=300, per_class_val=20, per_class_test=50, seed=0)
    Write real handwritten digits with a class-coding artefact in the background, in that layout, with the
    train / val / test_biased / test_unbiased / test_confounding splits, and train_clean (the train images
    without the artefact, for the artefact-free upper bound).
write_biased_tags(root, *, size=40, per_class_train=300, per_class_val=20, per_class_test=50, seed=0)
    The same digits over photographic texture, with a class-coding text tag drawn in the background (the bias of
    a chest X-ray's burnt-in labels); the same six splits (test_unbiased: a neutral tag).
write_biased_scenes(root, *, size=40, ..., seed=0, photo_seed=None, bias=0.95)
    The digits on real photographs (scikit-image's), one scene per class behind most training images: the whole
    background is the shortcut (Waterbirds' kind); groups (label, aligned) for worst-group accuracy.
write_biased_multilabel(root, *, size=40, labels=5, per_class_train=150, ..., seed=0)
    One or two digits per image, its labels their classes, an artefact per label in the border; the same six
    splits, listed in ``root/manifest.csv`` (a ``labels`` column) for multi-label training.
artefact_positions(size) -> where each class's artefact sits in the biased digits.
    Both writers estimate the files and bytes first and refuse a set of more than ``max_files`` files (200,000) or
    larger than the free space; they write into a hidden folder beside ``root`` and move the complete set into
    place, so an interrupted write leaves no partial set (:mod:`isnet_kernels.data.writing`).
MaskConvention(foreground=None, threshold=None, invert=False), check_masks(dataset, max_share=0.05)
    Which mask pixels are foreground (label maps such as trimaps, soft masks, masks marking the background), and
    the check that refuses masks that are all foreground or all background (:mod:`.masks`).
ManifestDataset(manifest, split, ...), open_dataset(data, split, ...), dataset_splits(data)
    A CSV manifest (image, label or labels, mask, box, split, group) as a data set (:mod:`.manifest`); open_dataset
    opens a manifest or a folder.
import_dataset(source, root, out), inspect_data(data)
    Manifests from the Oxford-IIIT Pet, CUB-200-2011 and Waterbirds layouts (:mod:`.importers`); a per-split
    report with a figure (:mod:`.inspect`).
Augmented(dataset, "standard", seed=0)
    torchvision transforms.v2 augmentation that moves the mask with the image (:mod:`.augment`).
DataError
    Bad data on disk; the message names the file and the fix.
"""

from __future__ import annotations

from .biased_digits import artefact_positions, write_biased_digits
from .biased_multilabel import write_biased_multilabel
from .biased_scenes import write_biased_scenes
from .biased_tags import write_biased_tags
from .errors import DataError
from .folder import MaskedImageFolder, splits
from .importers import import_dataset
from .inspect import inspect_data
from .manifest import ManifestDataset, dataset_splits, open_dataset
from .masks import MaskConvention, check_masks

__all__ = ["DataError", "ManifestDataset", "MaskConvention", "MaskedImageFolder", "artefact_positions",
           "check_masks", "dataset_splits", "import_dataset", "inspect_data", "open_dataset", "splits",
           "write_biased_digits", "write_biased_multilabel", "write_biased_scenes", "write_biased_tags"]
