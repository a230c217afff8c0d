"""Data sets with a foreground mask per image, for training classifiers that must ignore backgrounds.

Public API
----------
MaskedImageFolder(root, split, *, size=None, channels=None, masks=True)
    ``ROOT/images/<split>/<class>/<name>.png`` with masks at ``ROOT/masks/<split>/<class>/<name>.png``, as a
    Dataset of ``(image (C, H, W) in [0, 1], mask (1, H, W) in {0, 1}, label)``.
splits(root) -> list of the split folder names of a data set.
write_biased_digits(root, *, size=32, per_class_train=300, per_class_val=20, per_class_test=50, seed=0)
    Write real handwritten digits with a class-coding artefact in the background, in that layout, with the
    train / val / test_biased / test_unbiased / test_confounding splits.
artefact_positions(size) -> where each class's artefact sits in the biased digits.
DataError
    Bad data on disk; the message names the file and the fix.
"""

from __future__ import annotations

from .biased_digits import artefact_positions, write_biased_digits
from .errors import DataError
from .folder import MaskedImageFolder, splits

__all__ = ["DataError", "MaskedImageFolder", "artefact_positions", "splits", "write_biased_digits"]
