"""Write the machine a GPU check ran on: ``env.json`` and ``env.md`` in the folder given (GPU name, memory and
compute capability, driver, CUDA, torch, triton and Python versions, the commit). Runs on any machine: without a
CUDA device the GPU fields are null.

Usage: ``python benchmarks/gpu_env.py benchmarks/results/gpu``
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def describe() -> dict:
    """The machine and software, as a flat dict."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "triton": triton_version, "commit": _run(["git", "rev-parse", "--short", "HEAD"]),
           "gpu": None, "gpu_memory_gib": None, "compute_capability": None, "gpu_count": 0,
           "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count())
    if env["driver"]:
        env["driver"] = env["driver"].splitlines()[0]
    return env


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "benchmarks/results/gpu")
    out.mkdir(parents=True, exist_ok=True)
    env = describe()
    (out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    rows = "\n".join(f"| {k} | {v if v is not None else '-'} |" for k, v in env.items())
    (out / "env.md").write_text(f"# GPU check machine\n\n| field | value |\n|---|---|\n{rows}\n")
    print(json.dumps(env))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
