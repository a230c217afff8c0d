"""Roofline of the relevance ops on an H100: FLOPs and bytes moved per op, from docs/kernels.md's formulas.

Usage (from the repository root)::

    python benchmarks/roofline.py                     # markdown to stdout and benchmarks/results/roofline.md
    python benchmarks/roofline.py --dtype-bytes 4     # float32 tensors instead of bf16
    python benchmarks/roofline.py --maps 10 --out /tmp/roofline-m10.md

Two cases: ResNet-18 (torchvision layout, 10 classes) at 64x64, batch 16 (the CPU benchmarks' shapes) and at
224x224, batch 256 (the GPU-scale case); ``M`` maps per image (default 1). The layers and their shapes come from
running the model zoo's ``resnet18`` on the ``meta`` device (no computation). For each op:

* **FLOPs**: a multiply-add counts 2. The contractions: the transposed convolution of the forward is one
  convolution's FLOPs per map, ``2 * B * M * Co * Ho * Wo * (Ci / groups) * kh * kw``; the backward has two
  (``V = conv(U, W')`` and the weight gradient), Z^B twice as many (W+ and W-), pooling the window's FLOPs and no
  weight gradient. Elementwise work (stabiliser, divisions, products, sums over M) is counted per element as in
  docs/kernels.md (a few FLOPs each) against the same peak: it is negligible next to its bytes.
* **Bytes** of an ideally fused kernel: every input tensor of the op read once and every output written once,
  intermediates (s, t, U, V, Q, T) never touching memory. Forward: reads R, z, W, a (op-specific), writes R_in.
  Backward: reads G (dL/dR_in), R, z, a, W and the ``c = W'^T s`` the forward saved for ``dL/da`` (its write in
  the forward is counted here too, as it exists only for the backward), writes dL/dR, dL/dz, dL/da, dL/dW.
  Max-pool indices are int64 (8 bytes); everything else ``--dtype-bytes`` (bf16: 2). The max-pool backward
  gathers G at the winners: it is counted as a full read of G (stride-2 windows touch every cache line).
* **Roofline time** = max(FLOPs / 790 TFLOP/s, bytes / 3.0 TB/s) (H100 SXM: bf16 dense tensor-core peak and a
  copy kernel's achieved bandwidth); "bound" says which term wins. These are lower bounds for one kernel launch
  each; launch overheads (a few microseconds per kernel) are not included.

The first layer (Z^B) is counted with ``dL/da`` like every other layer (as the ops benchmark differentiates
w.r.t. ``a``); in training the input image needs no gradient, so its ``c+``/``c-`` and ``dL/da`` traffic is an
upper bound there.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PEAK_FLOPS = 790e12  # bf16 dense matrix, H100 SXM
PEAK_BW = 3.0e12  # copy bandwidth, bytes/s
INDEX_BYTES = 8  # int64 max-pool indices
CASES = {"cpu-scale": (16, 64), "gpu-scale": (256, 224)}  # name: (batch, image size)


@dataclass
class Cost:
    """FLOPs and bytes of one pass of one op."""

    flops: float
    bytes: float

    @property
    def time(self) -> float:
        return max(self.flops / PEAK_FLOPS, self.bytes / PEAK_BW)

    @property
    def bound(self) -> str:
        return "compute" if self.flops / PEAK_FLOPS >= self.bytes / PEAK_BW else "memory"

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


@dataclass
class Op:
    """One relevance op instance: kind, layer name, shapes (a: input activation, z: output), kernel."""

    kind: str  # "epsilon" (conv or linear), "zbox", "maxpool", "avgpool", "residual"
    name: str
    a: tuple[int, ...]  # (B, Ci, H, W) or (B, F)
    z: tuple[int, ...]  # (B, Co, Ho, Wo) or (B, K)
    kernel: tuple[int, int] = (1, 1)
    groups: int = 1

    def shape(self) -> str:
        if self.kind == "residual":
            return f"{self.a[1]}ch {self.a[2]}x{self.a[3]}"
        if len(self.a) == 2:
            return f"linear {self.a[1]}->{self.z[1]}"
        k = f"{self.kernel[0]}x{self.kernel[1]} " if self.kind != "avgpool" else ""
        return f"{k}{self.a[1]}->{self.z[1]}, {self.a[2]}x{self.a[3]}->{self.z[2]}x{self.z[3]}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def costs(op: Op, M: int, b: int) -> tuple[Cost, Cost]:
    """(forward, backward) of ``op`` with ``M`` maps and ``b`` bytes per element."""
    n_in, n_out = _numel(op.a), _numel(op.z)
    B = op.a[0]
    kh, kw = op.kernel
    if op.kind in ("epsilon", "zbox"):
        ci, co = op.a[1], op.z[1]
        w = co * (ci // op.groups) * kh * kw
        mac = n_out * (ci // op.groups) * kh * kw  # per map
        if op.kind == "epsilon":
            fwd = Cost(2 * M * mac + 3 * M * n_out + M * n_in,
                       b * (M * n_out + n_out + w + n_in + M * n_in))
            bwd = Cost(2 * 2 * M * mac + 3 * M * n_in + 6 * M * n_out,
                       b * (M * n_in + n_in + 2 * M * n_in + M * n_out + n_out + w  # G, a, c (w+r), R, z, W
                            + M * n_out + n_out + n_in + w))  # dR, dz, da, dW
        else:  # two transposed convolutions (W+, W-) and the bound images' conv at batch 1
            fwd = Cost(2 * 2 * M * mac + 2 * 2 * mac // B + 3 * M * n_out + 3 * M * n_in + 2 * n_in,
                       b * (M * n_out + n_out + w + n_in + M * n_in))
            bwd = Cost(4 * 2 * M * mac + 6 * M * n_in + 6 * M * n_out,
                       b * (M * n_in + n_in + 2 * 2 * M * n_in + M * n_out + n_out + w  # G, a, c+ c- (w+r), R, z, W
                            + M * n_out + n_out + n_in + w))
        return fwd, bwd
    if op.kind == "maxpool":
        fwd = Cost(3 * n_out + M * n_out, b * (M * n_out + n_out + M * n_in) + INDEX_BYTES * n_out)
        bwd = Cost(3 * n_out + 4 * M * n_out,
                   b * (M * n_in + M * n_out + n_out + M * n_out + n_out) + INDEX_BYTES * n_out)
        return fwd, bwd
    if op.kind == "avgpool":  # depthwise, fixed weights: the conv formulas without W and its gradient
        mac = n_out * kh * kw
        fwd = Cost(2 * M * mac + 3 * M * n_out + M * n_in, b * (M * n_out + n_out + n_in + M * n_in))
        bwd = Cost(2 * M * mac + 3 * M * n_in + 6 * M * n_out,
                   b * (M * n_in + n_in + 2 * M * n_in + M * n_out + n_out + M * n_out + n_out + n_in))
        return fwd, bwd
    if op.kind == "residual":
        n = n_in
        fwd = Cost(2 * n + 3 * M * n, b * (M * n + 3 * n + 2 * M * n))
        bwd = Cost(2 * n + 12 * M * n, b * (2 * M * n + M * n + 3 * n + M * n + 3 * n))
        return fwd, bwd
    raise ValueError(op.kind)


def resnet18_ops(batch: int, size: int) -> list[Op]:
    """Every relevance op of torchvision's ResNet-18 (10 classes) at ``batch`` x 3 x ``size`` x ``size``."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_common as bc

    tv = bc.import_torchvision()
    BasicBlock = tv.models.resnet.BasicBlock
    with torch.device("meta"):
        model = tv.models.resnet18(num_classes=10)
    ops: list[Op] = []
    first = True

    def hook(name: str):
        def record(mod, inputs, out):
            nonlocal first
            a, z = tuple(inputs[0].shape), tuple(out.shape)
            if isinstance(mod, torch.nn.Conv2d):
                ops.append(Op("zbox" if first else "epsilon", name, a, z, tuple(mod.kernel_size), mod.groups))
                first = False
            elif isinstance(mod, torch.nn.Linear):
                ops.append(Op("epsilon", name, a, z))
            elif isinstance(mod, torch.nn.MaxPool2d):
                k = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,) * 2
                ops.append(Op("maxpool", name, a, z, k))
            elif isinstance(mod, torch.nn.AdaptiveAvgPool2d):
                ops.append(Op("avgpool", name, a, z, (a[2] // z[2], a[3] // z[3])))
            elif isinstance(mod, BasicBlock):
                ops.append(Op("residual", name + " (add)", z, z))

        return record

    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d,
                            BasicBlock)):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.empty(batch, 3, size, size, device="meta"))
    return ops


# The representative layers (those of test_bench_ops.py), by layer name.
REPRESENTATIVE = {
    "conv3x3": ("epsilon conv 3x3 64->64 (layer1.0.conv1)", "layer1.0.conv1"),
    "conv3x3_s2": ("epsilon conv 3x3/2 128->256 (layer3.0.conv1)", "layer3.0.conv1"),
    "zbox7x7": ("Z^B 7x7/2 3->64 (conv1)", "conv1"),
    "maxpool": ("max-pool 3x3/2, 64ch (maxpool)", "maxpool"),
    "residual": ("residual split, 64ch (layer1.0)", "layer1.0 (add)"),
    "adaptive_avgpool": ("adaptive avg-pool, 512ch (avgpool)", "avgpool"),
}


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _us(t: float) -> str:
    us = t * 1e6
    return f"{us:.3f}" if us < 1 else f"{us:.2f}" if us < 10 else f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def op_table(ops: list[Op], M: int, b: int) -> list[str]:
    by_name = {op.name: op for op in ops}
    lines = ["| op | shape | pass | FLOPs | bytes | FLOP/byte | roofline time (us) | bound |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for title, name in REPRESENTATIVE.values():
        op = by_name[name]
        for pass_, c in zip(("forward", "backward"), costs(op, M, b)):
            lines.append(f"| {title} | {op.shape()} | {pass_} | {_si(c.flops, 'FLOP')} | {_si(c.bytes, 'B')} | "
                         f"{c.flops / c.bytes:.1f} | {_us(c.time)} | {c.bound} |")
    return lines


def network_table(ops: list[Op], M: int, b: int) -> list[str]:
    """Totals over the whole relevance pass (sum of per-op roofline times: one kernel per op, no overlap)."""
    kinds = {"epsilon": "epsilon conv/linear", "zbox": "Z^B", "maxpool": "max-pool", "avgpool": "avg-pool",
             "residual": "residual split"}
    lines = ["| ops | count | fwd FLOPs | fwd bytes | fwd time (us) | bwd FLOPs | bwd bytes | bwd time (us) | "
             "memory-bound share of time (fwd / bwd) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = [Cost(0, 0), Cost(0, 0)]
    total_t = [0.0, 0.0]
    total_mem = [0.0, 0.0]
    for kind, label in kinds.items():
        sel = [op for op in ops if op.kind == kind]
        if not sel:
            continue
        agg, t, mem = [Cost(0, 0), Cost(0, 0)], [0.0, 0.0], [0.0, 0.0]
        for op in sel:
            for i, c in enumerate(costs(op, M, b)):
                agg[i] = agg[i] + c
                t[i] += c.time
                mem[i] += c.time if c.bound == "memory" else 0.0
        for i in range(2):
            total[i] = total[i] + agg[i]
            total_t[i] += t[i]
            total_mem[i] += mem[i]
        lines.append(f"| {label} | {len(sel)} | {_si(agg[0].flops, 'FLOP')} | {_si(agg[0].bytes, 'B')} | "
                     f"{_us(t[0])} | {_si(agg[1].flops, 'FLOP')} | {_si(agg[1].bytes, 'B')} | {_us(t[1])} | "
                     f"{mem[0] / t[0]:.0%} / {mem[1] / t[1]:.0%} |")
    lines.append(f"| **relevance pass, all ops** | {len(ops)} | {_si(total[0].flops, 'FLOP')} | "
                 f"{_si(total[0].bytes, 'B')} | **{_us(total_t[0])}** | {_si(total[1].flops, 'FLOP')} | "
                 f"{_si(total[1].bytes, 'B')} | **{_us(total_t[1])}** | "
                 f"{total_mem[0] / total_t[0]:.0%} / {total_mem[1] / total_t[1]:.0%} |")
    return lines


def classifier_flops(ops: list[Op]) -> float:
    """F: one forward's convolution/linear FLOPs (the cost model of docs/kernels.md#cost-model unit)."""
    f = 0.0
    for op in ops:
        if op.kind in ("epsilon", "zbox"):
            f += 2 * _numel(op.z) * (op.a[1] // op.groups) * op.kernel[0] * op.kernel[1]
    return f


def report(M: int, b: int) -> str:
    dtype = {2: "bf16", 4: "float32", 8: "float64"}.get(b, f"{b}-byte")
    out = [f"Roofline on an H100 (ceilings {PEAK_BW / 1e12:.1f} TB/s copy bandwidth, {PEAK_FLOPS / 1e12:.0f} "
           f"TFLOP/s bf16 matrix), {dtype} tensors ({b} bytes, int64 max-pool indices), M = {M} map(s) per "
           "image; time = max(FLOPs / peak, bytes / bandwidth) per op, one ideally fused kernel each "
           "(every input read once, every output written once). Generated by `python benchmarks/roofline.py"
           + (f" --maps {M}" if M != 1 else "") + (f" --dtype-bytes {b}" if b != 2 else "") + "`."]
    for case, (batch, size) in CASES.items():
        ops = resnet18_ops(batch, size)
        F = classifier_flops(ops)
        out += ["", f"### ResNet-18, batch {batch} at {size}x{size} ({case})", "",
                f"Classifier forward F = {_si(F, 'FLOP')} (convolutions + fc); at 790 TFLOP/s that is "
                f"{_us(F / PEAK_FLOPS)} us.", "", "Representative ops (the shapes of `test_bench_ops.py`):", "",
                *op_table(ops, M, b), "", "Whole relevance pass (every op of the network, summed):", "",
                *network_table(ops, M, b)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=1, help="M, relevance maps per image (default 1)")
    parser.add_argument("--dtype-bytes", type=int, default=2, help="bytes per element (default 2: bf16)")
    parser.add_argument("--out", type=Path, default=RESULTS / "roofline.md", help="markdown output")
    args = parser.parse_args(argv)
    text = report(args.maps, args.dtype_bytes)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
