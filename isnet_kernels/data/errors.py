"""The exception raised for bad data on disk. Each message names the file or folder and the fix."""

from __future__ import annotations

from ..errors import ISNetError

__all__ = ["DataError"]


class DataError(ISNetError, ValueError):
    """A data set folder is missing, incomplete or holds a file that cannot be used.

    Raised by :class:`~isnet_kernels.data.MaskedImageFolder` (missing root or split folder, no class
    folders, an empty class folder, an image without a mask, a mask whose size differs from its image, an
    unreadable file, images of one split with differing sizes), by
    :class:`~isnet_kernels.data.ManifestDataset` (a row with a missing file, an empty or unknown label, a malformed
    box or one outside its image: the CSV's line and column named), by the mask check
    (:func:`~isnet_kernels.data.check_masks`: too many masks all foreground or all background, a mask holding
    none of the ``--mask-foreground`` values), by the importers (a file their layout lists that is missing) and by
    :func:`~isnet_kernels.data.write_biased_digits` (a target folder that already holds data). The message
    always names the offending path and says what to do about it.
    """
