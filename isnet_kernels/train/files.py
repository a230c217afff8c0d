"""Writing the files of a run so that nothing is lost: atomic replacement, one-line reasons, stale temporaries.

Every file of a run directory (checkpoints, ``config.json``, metrics, ``run.json``, evaluation results) is
written by :func:`write_atomic`: the bytes go to a hidden temporary file beside the target, ``.<name>.tmp-<PID>``,
are flushed to the disk, and the temporary file then replaces the target in one ``os.replace``. A crash, a full
disk or ``kill -9`` at any moment leaves either the old file or the new one, never a truncated one; a failed write
is a :class:`~.errors.TrainError` whose message names the cause (no space left, a file-size limit, permission
denied, a read-only file system) and says that the previous file is intact.

A process killed while writing leaves its temporary file behind; :func:`remove_stale_temporaries` deletes those
whose process no longer runs (the trainer calls it when it opens a run directory).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from ..data.writing import pid_alive
from .errors import TrainError

#: ``.<name>.tmp-<PID>``: the temporary files :func:`write_atomic` writes.
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")

#: Bytes per ``write`` call of :func:`write_atomic`.
CHUNK = 1 << 20

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file-size limit allows (ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


def reason(exc: OSError) -> str:
    """Why a write failed, in words (``"no space left on the device"``, ``"permission denied"``, ...)."""
    text = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno or 0)
    return f"{text} ({code})" if code else text


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """The hidden temporary file :func:`write_atomic` writes ``path`` through, in this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview | str, *,
                 what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (module docstring); ``what`` names the file in an error message.

    Raises :class:`~.errors.TrainError` naming the cause when the write fails; ``path`` is then untouched.
    """
    path = Path(path)
    payload = memoryview(data.encode() if isinstance(data, str) else data).cast("B")
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for start in range(0, len(payload), CHUNK):
                f.write(payload[start:start + CHUNK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        previous = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise TrainError(f"cannot write {what} {path}: {reason(exc)}; {previous}") from exc
    finally:
        try:
            tmp.unlink()
        except OSError:  # replaced (the usual case), never created, or the folder is read-only
            pass
    return path


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of :func:`write_atomic` in ``folder`` whose process no longer runs (a process
    killed while it wrote); returns the files deleted. Those of running processes, this one's included, stay."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no such folder (yet), or not readable: nothing to clean
        return removed
    for entry in entries:
        match = TEMPORARY.match(entry.name)
        if match is None or pid_alive(int(match["pid"])) or not entry.is_file():
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue
        except OSError:  # a read-only run folder: the files stay, the run can still be read
            continue
        removed.append(entry)
    return removed
