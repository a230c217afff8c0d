"""Memory bandwidth of the fused elementwise primitives on a CUDA GPU, against a ``torch.clone`` of the same bytes.

Each primitive of :class:`~isnet_kernels.ops.primitives.TorchPrimitives` that is memory-bound (``stab_divide``,
``mul_activation``, ``epsilon_backward_input``, ``epsilon_backward_stab``, ``residual_forward``,
``residual_backward``) runs at one large shape (B = 16 images, M maps, N = 2^20 elements each) on the backends
``torch`` (the plain-PyTorch specification), ``triton`` and ``cuda`` (when built). Its bytes are what it must read
and write at least (maps (B, M, N) and activations (B, N), once each, float32); its bandwidth is bytes / median
time (CUDA events, ``ROUNDS`` rounds after warm-up). The copy bandwidth is that of ``x.clone()`` on a buffer of
the same bytes (half read, half written). Target (issue of the CUDA kernels): every fused kernel at least 80% of
the copy bandwidth.

Usage (on a CUDA machine; ``make gpu-check`` runs it)::

    python benchmarks/bandwidth.py [--maps 1] [--out benchmarks/results/gpu]   # writes bandwidth.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from isnet_kernels.backends import dispatch

ROUNDS = 20
EPS = 1e-2


def _time(fn: Callable[[], object]) -> float:
    """Median seconds of ``fn()`` over ``ROUNDS`` rounds, after three warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def cases(B: int, M: int, N: int) -> dict[str, tuple[Callable, int]]:
    """Each primitive's call (a function of a primitives object) and its minimal bytes moved."""
    dev, f = "cuda", torch.float32
    R, G, V, s = (torch.randn(B, M, N, device=dev, dtype=f) for _ in range(4))
    a, z, x, fy = (torch.randn(B, N, device=dev, dtype=f) for _ in range(4))
    c = torch.randn(B, M, N, device=dev, dtype=f)
    y = x + fy
    Gx, Gf = G, torch.randn(B, M, N, device=dev, dtype=f)
    mapb, actb = B * M * N * 4, B * N * 4
    return {
        "stab_divide": (lambda p: p.stab_divide(R, z, EPS), 2 * mapb + actb),
        "mul_activation": (lambda p: p.mul_activation(c, a), 2 * mapb + actb),
        "epsilon_backward_input": (lambda p: p.epsilon_backward_input(G, a, c), 3 * mapb + 2 * actb),
        "epsilon_backward_stab": (lambda p: p.epsilon_backward_stab(V, s, z, EPS), 3 * mapb + 2 * actb),
        "residual_forward": (lambda p: p.residual_forward(R, x, fy, y, EPS), 3 * mapb + 3 * actb),
        "residual_backward": (lambda p: p.residual_backward(Gx, Gf, R, x, fy, y, EPS), 4 * mapb + 6 * actb),
    }


def measure(B: int = 16, M: int = 1, N: int = 1 << 20) -> dict:
    """Bandwidths (GB/s) per primitive and backend, the copy bandwidth, and their ratios."""
    backends = {}
    for name in ("torch", "triton", "cuda"):
        try:
            backends[name] = dispatch.primitives(dispatch.resolve(name, torch.device("cuda")))
        except Exception as exc:  # not built, or not available: reported, not timed
            backends[name] = f"{type(exc).__name__}: {exc}"
    rows, copy = {}, {}
    for op, (call, nbytes) in cases(B, M, N).items():
        buf = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        copy[op] = nbytes / _time(buf.clone) / 1e9
        rows[op] = {"bytes": nbytes, "copy_GBps": copy[op]}
        for name, prims in backends.items():
            if isinstance(prims, str):
                continue
            gbps = nbytes / _time(lambda p=prims, c=call: c(p)) / 1e9
            rows[op][f"{name}_GBps"] = gbps
            rows[op][f"{name}_vs_copy"] = gbps / copy[op]
    return {"device": torch.cuda.get_device_name(), "shape": {"B": B, "M": M, "N": N}, "rows": rows,
            "unavailable": {k: v for k, v in backends.items() if isinstance(v, str)}}


def markdown(result: dict) -> str:
    names = [n for n in ("torch", "triton", "cuda") if n not in result["unavailable"]]
    head = "| primitive | copy GB/s | " + " | ".join(f"{n} GB/s (vs copy)" for n in names) + " |"
    lines = [f"Bandwidth on {result['device']}, B={result['shape']['B']}, M={result['shape']['M']}, "
             f"N={result['shape']['N']}, float32, medians of {ROUNDS} (CUDA events); target: >= 0.80 of copy", "",
             head, "|---" * (2 + len(names)) + "|"]
    for op, r in result["rows"].items():
        cells = " | ".join(f"{r[f'{n}_GBps']:.0f} ({r[f'{n}_vs_copy']:.2f})" for n in names)
        lines.append(f"| {op} | {r['copy_GBps']:.0f} | {cells} |")
    for name, why in result["unavailable"].items():
        lines.append(f"\n{name}: not timed ({why})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=int, default=1, help="maps per image M (default 1)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"), help="folder for bandwidth.json/md")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bandwidth: no CUDA device; run it on a GPU machine (make gpu-check)", file=sys.stderr)
        return 2
    result = measure(M=args.maps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bandwidth.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bandwidth.md").write_text(markdown(result))
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
