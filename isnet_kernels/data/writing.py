"""Writing a data set so that nothing is left half-done, after checking that its size is what the user meant.

A writer (:func:`~isnet_kernels.data.write_biased_digits`, :func:`~isnet_kernels.data.write_biased_tags`):

1. estimates the files and bytes it will write (:func:`estimate`) and refuses, before writing anything, a set of
   more than ``max_files`` files (default :data:`MAX_FILES`) or larger than the free space of the disk
   (:func:`check_size`; ``max_files=None``, ``isnet data ... --yes``, writes it anyway);
2. writes every file into a hidden folder beside the target, ``.<ROOT name>.partial-<PID>`` (:func:`staged`);
3. moves the complete set into place at the end: the hidden folder is renamed to ``ROOT`` when ``ROOT`` does not
   exist or is empty (one atomic rename), else its entries replace those of the set written there before,
   ``info.json`` first.

An interrupted write (Ctrl-C, an error, a full disk) deletes its hidden folder; a killed one (``kill -9``, a power
cut) leaves it, and the next writer of the same ``ROOT`` deletes it (its process no longer runs). ``ROOT`` itself
never holds a partial set.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

#: The most files a writer writes without being told to (``max_files``; ``isnet data ... --yes``): 13 times the
#: default biased-digits set (15,400 files).
MAX_FILES = 200_000
#: What a data set writer puts in its root, in the order they are moved into place (``info.json`` first, so that a
#: set whose move was cut short is recognised as one and ``overwrite`` replaces it).
ENTRIES = ("info.json", "images", "masks", "README.txt", "artefacts.csv")
#: Bytes a writer adds to its image files: ``info.json``, ``README.txt`` and a row of ``artefacts.csv`` per image.
_EXTRA_BYTES, _ROW_BYTES = 16_384, 64


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _block_size(path: Path) -> int:
    try:
        return os.statvfs(_existing_ancestor(path)).f_frsize or 4096
    except (AttributeError, OSError):  # not POSIX
        return 4096


def estimate(images: int, size: int, root: str | os.PathLike[str]) -> tuple[int, int]:
    """Files and bytes on disk of a set of ``images`` grey ``size`` x ``size`` PNGs with their masks, written to
    ``root``: an 8-bit grey PNG holds at most its pixels plus about 256 bytes of headers, and each file takes
    whole blocks of the file system (4 KiB on most), so small images cost a block each."""
    block = _block_size(Path(root))
    per_file = math.ceil((size * size + 256) / block) * block
    return 2 * images + 3, 2 * images * per_file + images * _ROW_BYTES + _EXTRA_BYTES


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def check_size(root: str | os.PathLike[str], images: int, size: int, max_files: int | None) -> tuple[int, int]:
    """Refuse (:class:`DataError`, with the estimate) a set of more than ``max_files`` files or larger than the free
    space where ``root`` goes; ``max_files=None`` checks nothing. Returns :func:`estimate`."""
    files, nbytes = estimate(images, size, root)
    if max_files is None:
        return files, nbytes
    what = f"{images:,} images of {size}x{size} px with their masks: {files:,} files, about {_human(nbytes)}"
    if files > max_files:
        raise DataError(f"{root} would get {what}, more than the {max_files:,} files written without asking; "
                        "pass --yes (max_files=None) to write it, or fewer images per class")
    where = _existing_ancestor(Path(root))
    free = shutil.disk_usage(where).free
    if nbytes > free:
        raise DataError(f"{root} would get {what}, but {where} has {_human(free)} free; free space, choose "
                        "another folder or fewer images per class (--yes writes it anyway)")
    return files, nbytes


def _stage_pattern(root: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(root.name)}\.(partial|old)-(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine (one we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_stages(root: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden folders beside ``root`` that writers killed while writing left (their process no longer
    runs, or it is this one); returns them."""
    root = Path(root).absolute()
    pattern = _stage_pattern(root)
    removed = []
    try:
        entries = list(root.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        pid = int(match[2])
        if pid != os.getpid() and pid_alive(pid):
            continue  # another writer at work
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _commit(stage: Path, root: Path) -> None:
    """Move the complete set in ``stage`` into ``root`` (module docstring, step 3)."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        os.replace(stage, root)
        return
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    old.mkdir()
    for name in ENTRIES:  # the set written there before (the writer checked that overwrite allows it)
        if (root / name).exists():
            os.replace(root / name, old / name)
    for name in ENTRIES:
        if (stage / name).exists():
            os.replace(stage / name, root / name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged(root: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden folder beside ``root`` to write a data set into; moved into ``root`` when the block ends, deleted
    when it raises (module docstring)."""
    root = Path(root).absolute()
    remove_stale_stages(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = root.parent / f".{root.name}.partial-{os.getpid()}"
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _commit(stage, root)
