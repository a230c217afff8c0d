"""Benchmark set-up: two intra-op threads, the real torchvision (for zennit), and the machine's state in the JSON.

Run from the repository root, one suite per JSON file (see docs/performance.md), e.g.
``python -m pytest benchmarks/test_bench_explain.py -q --benchmark-json=benchmarks/results/explain.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402

torch.set_num_threads(bench_common.THREADS)
bench_common.import_torchvision()

_LOAD_AT_START: list[float] = []


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def pytest_sessionstart(session) -> None:
    _LOAD_AT_START[:] = _loadavg() or []


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    """Add what the timings depend on: core counts, torch and its threads, and the load during the run."""
    try:
        import zennit

        zennit_version = getattr(zennit, "__version__", None)
    except Exception:
        zennit_version = None
    if zennit_version is None:
        try:
            from importlib.metadata import version

            zennit_version = version("zennit")
        except Exception:
            zennit_version = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        from isnet_kernels.backends import dispatch

        backend_status = {name: ok for name, (ok, _) in dispatch.backend_status().items()}
    except Exception:
        backend_status = None
    cuda = bench_common.DEVICE.type == "cuda"
    machine_info["bench"] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_config_parallel": torch.__config__.parallel_info().splitlines()[:3],
        "zennit_version": zennit_version,
        "loadavg_start": _LOAD_AT_START or None,
        "loadavg_end": _loadavg(),
        "batch": bench_common.BATCH,
        "image_size": bench_common.SIZE,
        "dtype": "float32",
        "device": str(bench_common.DEVICE),
        "device_name": bench_common.describe_device(),
        "cuda_version": torch.version.cuda if cuda else None,
        "backends_available": backend_status,
    }
