"""``python -m isnet_kernels.info``: versions, and which relevance backends can run here and why not."""

from __future__ import annotations

import os
import platform

import torch

from . import __version__
from .backends import dispatch


def report() -> str:
    """A human-readable report of the installation."""
    lines = [
        f"isnet-kernels {__version__}",
        f"python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs)",
        f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()})",
    ]
    try:
        import triton

        lines.append(f"triton {triton.__version__} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')})")
    except ImportError:
        lines.append("triton not installed")
    lines.append("backends:")
    for name, (ok, why) in dispatch.backend_status().items():
        lines.append(f"  {name:<9} {'available' if ok else 'unavailable'}: {why or 'ready'}")
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        try:
            chosen = dispatch.resolve(None, torch.device(device))
        except Exception as exc:  # a bad $ISNET_KERNELS_BACKEND
            chosen = f"error: {exc}"
        lines.append(f"auto ({device} tensors, ${dispatch.ENV_VAR}={os.environ.get(dispatch.ENV_VAR, 'unset')}): "
                     f"{chosen}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m isnet_kernels.info``: the report; ``--layers``: the supported-layer table (docs/layers.md's)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args == ["--layers"]:
        from .lrp import REGISTRY

        print(REGISTRY.markdown(), end="")
        return
    print(report())


if __name__ == "__main__":
    main()
