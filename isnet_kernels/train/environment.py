"""What a result was computed with: the CPU, its instruction set, the thread counts and the library versions.

Float results on a CPU depend on more than the seed: the instruction set the kernels dispatch to (AVX2, AVX-512),
the oneDNN version, the number of threads (summation order) and the versions of torch, numpy and this package.
Every result file (``run.json`` of a training run, the ``eval-*.json`` of ``isnet eval``, the demo's
``report.json``) records :func:`environment` under the key ``"environment"``, so that two results that differ can
be told apart by what they ran on.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from typing import Any

import numpy as np
import torch


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`); "" when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def _onednn_version() -> str | None:
    """oneDNN's version as ``torch.__config__.show()`` states it (None when torch was built without it)."""
    if not torch.backends.mkldnn.is_available():
        return None
    match = re.search(r"(?:oneDNN|MKL-DNN)\D*v?(\d+\.\d+(?:\.\d+)?)", torch.__config__.show())
    return match.group(1) if match else "available"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(num_workers: int = 0) -> int:
    """The intra-op thread count of a run that does not fix one (``--threads``): the process's current count
    (PyTorch's default: the cores) less the DataLoader workers, which need a core each, and at least 1.

    More threads than free cores is the trap: PyTorch's OpenMP threads wait for each other at every operation, and
    a thread whose core is taken by a worker or another program stalls all of them (an epoch of the biased digits
    took 8 s with 2 threads and 2 workers on 2 cores, 1.4 s with 1 thread). Importing :mod:`isnet_kernels` before
    torch also sets ``OMP_WAIT_POLICY=PASSIVE`` (unless it is set) so that waiting threads yield their core.
    """
    return max(1, torch.get_num_threads() - max(0, int(num_workers)))


def environment() -> dict[str, Any]:
    """The machine and software a result was computed with (module docstring), as plain JSON values.

    Keys: ``cpu`` (model name), ``cpu_capability`` (the instruction set PyTorch's CPU kernels use,
    ``torch.backends.cpu.get_cpu_capability()``), ``cores`` (usable by this process), ``threads`` and
    ``interop_threads`` (PyTorch's, now), ``omp_wait_policy`` (``OMP_WAIT_POLICY``), ``torch``, ``onednn``,
    ``numpy``, ``isnet_kernels``, ``python``, ``platform``, ``cuda`` (the device's name, or None).
    """
    from .. import __version__

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # older torch
        capability = None
    return {
        "cpu": cpu_model(),
        "cpu_capability": capability,
        "cores": _cores(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "onednn": _onednn_version(),
        "numpy": np.__version__,
        "isnet_kernels": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
