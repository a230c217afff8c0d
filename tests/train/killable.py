"""A training process for the fault-injection tests (run as a script): it prints where it is, so that a test can
kill it at a chosen moment, and can slow its file writes down so that a kill lands inside one.

``python killable.py CONFIG_JSON [--resume] [--pause SECONDS] [--fsize BYTES]``

- prints ``step E S`` after every training step (epoch from 0, batches done) and ``write NAME`` when a file of
  the run starts to be written (``NAME`` the temporary file's name), each flushed at once;
- ``--pause``: every write of a run file is cut in chunks of 256 bytes with a pause after each, so that a write
  takes a while;
- ``--fsize``: the file-size limit (``RLIMIT_FSIZE``) of the process, with SIGXFSZ ignored, so that a larger write
  fails with EFBIG as on a full disk;
- exits 0 when the run finished, 128 + the signal's number when it was stopped by one, 2 (one line on stderr,
  as the ``isnet`` command) on an :class:`~isnet_kernels.ISNetError`.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--fsize", type=int)
    args = parser.parse_args()

    import isnet_kernels as ik
    from isnet_kernels.train import TrainConfig, Trainer, files

    real_open = open

    class SlowFile:
        def __init__(self, f):
            self.f = f

        def write(self, data) -> int:
            view = memoryview(data).cast("B")
            for start in range(0, len(view), 256):
                self.f.write(view[start:start + 256])
                time.sleep(args.pause)
            return len(view)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    def tracing_open(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        if "w" in mode:
            print(f"write {path.name if hasattr(path, 'name') else path}", flush=True)
            if args.pause:
                return SlowFile(f)
        return f

    files.open = tracing_open  # the module's writes go through it (a global of the module shadows the builtin)

    def report(trainer, epoch: int, step: int) -> None:
        print(f"step {epoch} {step}", flush=True)

    if args.fsize is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    config = TrainConfig(**json.loads(args.config))
    try:
        result = Trainer(config, resume=args.resume, callbacks=[report]).fit()
    except ik.ISNetError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 128 + int(result.signal) if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
