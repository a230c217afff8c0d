"""Peak memory of one training step, plain vs selective ISNet (default preset) in both memory modes.

Configurations: torchvision ResNet-50, ConvNeXt-T and ViT-B/16 at 224x224 and ResNet-18 at 64x64 (``weights=None``,
random initialisation, 10 classes), batch 8, float32, train mode, images uniform in [0, 1], one label per image and a
central foreground box as the mask. Steps (``model.zero_grad(set_to_none=True)`` first, the optimiser update left
out: it is the same for all):

* ``plain``: ``cross_entropy(model(x), y).backward()``;
* ``default``: ``ISNetLoss()(ISNet(model)(x, y), y, masks).total.backward()`` (selective variant, ``preset=
  "default"``: label class, live batch statistics, deep supervision of the ResNet stages, epsilon first layer;
  the default backend: ``cpp`` on CPU, ``triton`` on CUDA);
* ``low``: the same with ``ISNet(model, memory="low")``.

Memory (``probe``, one fresh interpreter per configuration, glibc's mmap threshold fixed as in ``memprobe.py``): on
CPU, the resident set's high-water mark (``VmHWM``) during the second step (reset with ``/proc/self/clear_refs``
after a warm-up step) minus the resident set before the model was built (the interpreter, torch and torchvision):
weights, gradients, activations, the relevance pass and temporaries. On CUDA (``BENCH_DEVICE=cuda``),
``torch.cuda.max_memory_allocated`` during the second step minus ``memory_allocated`` before the model was built.
``step_mib`` is the same peak minus the memory just before the step (the weights and inputs left out).

Time (``time``, one process per model, ``torch.set_num_threads(1)`` on CPU): one warm-up step per mode, then
``--rounds`` rounds of the three steps in turn; medians, and the ratios of the medians.

Usage::

    python benchmarks/stepmem.py probe MODEL MODE          # one JSON line (run in a fresh process)
    python benchmarks/stepmem.py memory [--models ...]       # every probe, each in its own process -> JSON
    python benchmarks/stepmem.py time [--models ...] [--rounds 2]
    python benchmarks/stepmem.py report                      # results/memory.md and memory.png from the JSON

Results: ``results/memory.json`` (``results/gpu-memory.json`` with ``BENCH_DEVICE=cuda``), ``results/memory_time.json``,
``results/memory.md`` and ``results/memory.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
MODES = ("plain", "default", "low")
#: name -> (torchvision builder, image size, description)
MODELS = {
    "resnet50": ("resnet50", 224, "ResNet-50, 224x224"),
    "convnext_tiny": ("convnext_tiny", 224, "ConvNeXt-T, 224x224"),
    "vit_b_16": ("vit_b_16", 224, "ViT-B/16, 224x224"),
    "resnet18_64": ("resnet18", 64, "ResNet-18, 64x64"),
}
BATCH = 8
NUM_CLASSES = 10
#: The targets of issue 25 on the 224x224 models: default <= 2.5x plain, low <= 1.5x plain and <= 1.3x default time.
TARGET_DEFAULT, TARGET_LOW, TARGET_LOW_TIME = 2.5, 1.5, 1.3


def _device():
    import torch

    return torch.device(os.environ.get("BENCH_DEVICE", "cpu"))


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


def build(model_name: str):
    """The model (train mode, on the device) and a batch: images, labels, masks."""
    sys.path.insert(0, str(HERE))
    import bench_common as bc
    import torch

    tv = bc.import_torchvision()
    builder, size, _ = MODELS[model_name]
    device = _device()
    torch.manual_seed(0)
    kwargs = {"image_size": size} if builder.startswith("vit") else {}
    model = getattr(tv.models, builder)(weights=None, num_classes=NUM_CLASSES, **kwargs).float().train().to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen).to(device)
    masks = torch.zeros(BATCH, 1, size, size, device=device)
    lo, hi = size // 4, size - size // 4
    masks[..., lo:hi, lo:hi] = 1
    return model, x, y, masks


def make_step(mode: str, model, x, y, masks) -> Callable[[], float]:
    """One training step of ``mode`` (module docstring); returns the loss."""
    import torch
    import torch.nn.functional as F

    import isnet_kernels

    if mode == "plain":
        def step() -> float:
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return float(loss.detach())

        return step
    isnet = isnet_kernels.ISNet(model, "selective", memory=mode).train()
    criterion = isnet_kernels.ISNetLoss()

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = criterion(isnet(x, y), y, masks).total
        loss.backward()
        return float(loss)

    del torch
    return step


def _sync() -> None:
    import torch

    if _device().type == "cuda":
        torch.cuda.synchronize()


def probe(model_name: str, mode: str) -> dict:
    """Build, warm up one step, measure the second (this process; run it fresh: :func:`run_probe`)."""
    import torch

    device = _device()
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    mib = 1024.0
    gc.collect()
    if cuda:
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        sys.path.insert(0, str(HERE))
        import bench_common as bc

        bc.import_torchvision()
        import isnet_kernels  # noqa: F401  (imported before the baseline, as torch is)

        base = _status_kib("VmRSS") / mib
    model, x, y, masks = build(model_name)
    step = make_step(mode, model, x, y, masks)
    step()
    model.zero_grad(set_to_none=True)
    gc.collect()
    if cuda:
        _sync()
        before = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        if not _reset_peak():
            return {}
        before = _status_kib("VmRSS") / mib
    t0 = time.perf_counter()
    step()
    _sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _status_kib("VmHWM") / mib
    return {"model": model_name, "mode": mode, "device": str(device), "batch": BATCH,
            "image_size": MODELS[model_name][1], "memory": "cuda_max_allocated" if cuda else "rss_hwm",
            "peak_mib": peak - base, "step_mib": peak - before, "loaded_mib": before - base, "base_mib": base,
            "step_s": seconds}


def run_probe(model_name: str, mode: str, timeout: float = 1800.0) -> dict:
    """:func:`probe` in a fresh interpreter; ``{}`` when it fails."""
    env = {**os.environ, **MALLOC_ENV}
    try:
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "probe", model_name, mode], env=env,
                             capture_output=True, text=True, timeout=timeout, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        err = getattr(exc, "stderr", "") or ""
        print(f"stepmem {model_name} {mode} failed: {exc}\n{err[-2000:]}", file=sys.stderr)
        return {}


def memory_json() -> Path:
    return RESULTS / ("gpu-memory.json" if _device().type == "cuda" else "memory.json")


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["results"] if path.exists() else []


def _save(path: Path, rows: list[dict], key: tuple[str, ...]) -> None:
    """Merge ``rows`` into ``path`` (a row replaces the stored one with the same ``key`` fields)."""
    old = [r for r in _load(path) if not any(all(r.get(k) == n.get(k) for k in key) for n in rows)]
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    path.write_text(json.dumps({"loadavg_end": load, "results": old + rows}, indent=1) + "\n")


def run_memory(models: list[str], modes: list[str]) -> list[dict]:
    rows = []
    for name in models:
        for mode in modes:
            row = run_probe(name, mode)
            if row:
                row["loadavg"] = list(os.getloadavg())
                print(json.dumps(row), flush=True)
                rows.append(row)
                _save(memory_json(), [row], ("model", "mode", "device"))
    return rows


def run_time(models: list[str], rounds: int) -> list[dict]:
    """Step times of the three modes side by side in one process per model, medians of ``rounds`` rounds."""
    import torch

    if _device().type != "cuda":
        torch.set_num_threads(1)
    rows = []
    for name in models:
        model, x, y, masks = build(name)
        steps = {mode: make_step(mode, model, x, y, masks) for mode in MODES}
        for step in steps.values():  # warm-up
            step()
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        load0 = list(os.getloadavg())
        for _ in range(rounds):
            for mode, step in steps.items():
                _sync()
                t0 = time.perf_counter()
                step()
                _sync()
                times[mode].append(time.perf_counter() - t0)
        med = {mode: statistics.median(v) for mode, v in times.items()}
        row = {"model": name, "device": str(_device()), "batch": BATCH, "threads": torch.get_num_threads(),
               "rounds": rounds,
               "times_s": times, "median_s": med, "default_over_plain": med["default"] / med["plain"],
               "low_over_default": med["low"] / med["default"], "loadavg_start": load0,
               "loadavg_end": list(os.getloadavg())}
        print(json.dumps(row), flush=True)
        rows.append(row)
        _save(RESULTS / ("gpu-memory_time.json" if _device().type == "cuda" else "memory_time.json"), [row],
              ("model", "device", "batch"))
        del model, steps
        gc.collect()
    return rows


def report(out_dir: Path = RESULTS, plot: bool = True) -> str:
    """The table (markdown, also written to ``results/memory.md``) and the plot ``results/memory.png`` from the JSON
    files in ``out_dir`` (default ``results/``)."""
    lines = []
    for prefix, unit in (("", "CPU: peak RSS"), ("gpu-", "CUDA: max_memory_allocated")):
        rows = _load(out_dir / f"{prefix}memory.json")
        if not rows:
            continue
        times: dict[str, dict] = {}
        for r in sorted(_load(out_dir / f"{prefix}memory_time.json"), key=lambda r: r.get("batch", BATCH) == BATCH):
            times[r["model"]] = r  # the probes' batch wins over a smaller one
        by = {(r["model"], r["mode"]): r for r in rows}
        lines += [f"### {unit} of one training step (batch {BATCH}, GiB, weights and gradients included)", "",
                  "| model | plain | ISNet default | ISNet low | default / plain | low / plain | low / default time "
                  "| default / plain time |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, (_, _, desc) in MODELS.items():
            got = [by.get((name, m)) for m in MODES]
            if got[0] is None:
                continue
            gib = [None if r is None else r["peak_mib"] / 1024 for r in got]
            cell = [("-" if g is None else f"{g:.2f}") for g in gib]
            ratio = [("-" if g is None else f"{g / gib[0]:.2f}x") for g in gib[1:]]
            t = times.get(name)
            note = f" (batch {t['batch']})" if t and t.get("batch", BATCH) != BATCH else ""
            tl = f"{t['low_over_default']:.2f}x{note}" if t else "-"
            tp = f"{t['default_over_plain']:.2f}x{note}" if t else "-"
            lines.append(f"| {desc} | {cell[0]} | {cell[1]} | {cell[2]} | {ratio[0]} | {ratio[1]} | {tl} | {tp} |")
        lines.append("")
    text = "\n".join(lines)
    (out_dir / "memory").with_suffix(".md").write_text(text + "\n")
    if plot:
        _plot(out_dir)
    return text


def _plot(out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _load(out_dir / "memory.json")
    if not rows:
        return
    by = {(r["model"], r["mode"]): r["peak_mib"] / 1024 for r in rows}
    names = [n for n in MODELS if (n, "plain") in by]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.26
    for i, mode in enumerate(MODES):
        vals = [by.get((n, mode), 0.0) for n in names]
        bars = ax.bar([j + (i - 1) * width for j in range(len(names))], vals, width,
                      label={"plain": "plain step", "default": "ISNet (default)", "low": 'ISNet (memory="low")'}[mode])
        for bar, n in zip(bars, names):
            if mode != "plain" and (n, "plain") in by and bar.get_height() > 0:
                ax.annotate(f"{bar.get_height() / by[(n, 'plain')]:.1f}x", (bar.get_x() + width / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), [MODELS[n][2] for n in names], fontsize=8)
    ax.set_ylabel("peak memory of one step (GiB)")
    ax.set_title(f"Training-step peak memory, batch {BATCH}, CPU resident set", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "memory.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("model", choices=list(MODELS))
    p.add_argument("mode", choices=MODES)
    m = sub.add_parser("memory")
    m.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    m.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    t = sub.add_parser("time")
    t.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--batch", type=int, default=BATCH, help="images per step (the memory probes use %(default)s)")
    r = sub.add_parser("report")
    r.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "probe":
        print(json.dumps(probe(args.model, args.mode)))
    elif args.cmd == "memory":
        run_memory(args.models, args.modes)
    elif args.cmd == "time":
        globals()["BATCH"] = args.batch
        run_time(args.models, args.rounds)
    else:
        print(report(plot=not args.no_plot))


if __name__ == "__main__":
    main()
