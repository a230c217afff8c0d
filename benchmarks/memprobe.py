"""Peak extra resident memory of one heatmap call, measured in a fresh process.

Usage: ``python benchmarks/memprobe.py MODEL METHOD`` prints one JSON line
``{"peak_extra_mib": ..., "rss_before_mib": ..., "peak_rss_mib": ...}``.

What it measures: the process's resident set (RSS) high-water mark during one call, minus the RSS just before it.
The model, the input batch and (for zennit) the registered composite are built first and one warm-up call is
made; then the kernel's peak-RSS counter (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs``, the
call is made, and ``VmHWM - VmRSS(before)`` is reported. That is the memory the call needs on top of what stays
resident (activations, saved tensors, gradients, the heatmap, temporaries), as the OS sees it.

To make RSS follow PyTorch's CPU tensors closely, :func:`run_probe` starts the process with
``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=65536``: glibc then serves every buffer above 64 KiB
with its own ``mmap`` and returns it on free, instead of reusing freed heap memory left over from the warm-up
(which would hide part of the peak). Allocations below 64 KiB and any memory kept by oneDNN's caches are not
separated out. Linux only; on other systems (or if ``clear_refs`` is not writable) the fields are ``null``.

With ``BENCH_DEVICE=cuda`` the same fields come from PyTorch's CUDA caching allocator instead (bytes of tensors
allocated, not resident pages): ``torch.cuda.reset_peak_memory_stats`` before the measured call and
``max_memory_allocated - memory_allocated(loaded)`` after it; ``"memory": "cuda_allocated"`` says so.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("peak_extra_mib", "retained_mib", "loaded_rss_mib", "peak_rss_mib")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe(model_name: str, method: str) -> dict[str, float | None]:
    """Build everything, warm up once, and measure one call (in this process)."""
    sys.path.insert(0, str(HERE))
    import bench_common as bc
    import torch

    torch.set_num_threads(bc.THREADS)
    bc.import_torchvision()
    model = bc.make_model(model_name)
    x, target = bc.make_inputs()
    if bc.DEVICE.type == "cuda":
        return _probe_cuda(bc, model_name, method, model, x, target)
    with contextlib.ExitStack() as stack:
        fn = bc.make_method(method, model_name, model, x, target, stack)
        if not os.path.exists("/proc/self/status"):
            return dict.fromkeys(FIELDS)
        gc.collect()
        loaded = _status_kib("VmRSS")
        fn()  # warm-up: compiles isnet_kernels' program, initialises oneDNN
        gc.collect()
        if not _reset_peak():
            return dict.fromkeys(FIELDS)
        before = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
    mib = 1024.0
    return {"peak_extra_mib": (peak - loaded) / mib, "retained_mib": (before - loaded) / mib,
            "loaded_rss_mib": loaded / mib, "peak_rss_mib": peak / mib}


def _probe_cuda(bc, model_name, method, model, x, target) -> dict[str, float | str | None]:
    """The CUDA counterpart of :func:`probe`: the caching allocator's peak of allocated bytes."""
    import torch

    mib = 2.0**20
    with contextlib.ExitStack() as stack:
        fn = bc.timed(bc.make_method(method, model_name, model, x, target, stack))
        gc.collect()
        loaded = torch.cuda.memory_allocated(bc.DEVICE)
        fn()
        gc.collect()
        before = torch.cuda.memory_allocated(bc.DEVICE)
        torch.cuda.reset_peak_memory_stats(bc.DEVICE)
        out = fn()
        peak = torch.cuda.max_memory_allocated(bc.DEVICE)
        del out
    return {"peak_extra_mib": (peak - loaded) / mib, "retained_mib": (before - loaded) / mib,
            "loaded_rss_mib": loaded / mib, "peak_rss_mib": peak / mib, "memory": "cuda_allocated"}


def run_probe(model_name: str, method: str, timeout: float = 300.0) -> dict[str, float | None]:
    """Run :func:`probe` in a fresh interpreter with glibc's mmap threshold fixed; ``{}`` if that fails."""
    env = {**os.environ, **MALLOC_ENV}
    try:
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), model_name, method], env=env,
                             capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"memprobe {model_name} {method} failed: {exc}", file=sys.stderr)
        return {}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/memprobe.py MODEL METHOD")
    print(json.dumps(probe(sys.argv[1], sys.argv[2])))
