"""Summarise the pytest-benchmark JSON of the suites: markdown tables, plots and a targets table.

Usage (from the repository root)::

    python benchmarks/report.py                        # every benchmarks/results/*.json
    python benchmarks/report.py benchmarks/results/gpu-*.json
    python benchmarks/report.py path/to/run.json ... --out-dir DIR

Per JSON file ``<name>.json`` it prints, and writes to ``<out-dir>/<name>.md``, the machine (CPU or GPU, cores,
torch, threads, load average) and the file's tables, by suite (``extra_info["suite"]``; files of earlier runs
without it are explain runs):

* ``explain`` (test_bench_explain.py): one table per model: median, IQR, minimum per call, rounds, the ratio to the
  input gradient's median and to ``explain(reference)``'s, peak extra memory if measured; plot ``<name>.png``.
* ``training`` (test_bench_training.py): one table per model, ratios to the plain classifier step and to
  ``isnet(reference)``; plot ``<name>.png``.
* ``ops`` (test_bench_ops.py): one row per op and pass, one median column per backend, and the speed-ups
  ``reference / backend``; plot ``<name>.png``: grouped bars per op, one panel per pass, log scale.

Then the **targets** table, one per device (files are paired by name: ``explain.json`` + ``training.json``, or
``gpu-explain.json`` + ``gpu-training.json``), printed and written to ``<out-dir>/<prefix>targets.md``:
``explain(F) / input gradient`` on ResNet-18 (goal <= 1.2), training ``isnet(reference) / isnet(F)`` (>= 1.5) and
``zennit / explain(F)`` (>= 2), F the device's fused backend (``cpp`` or ``triton``), each met or missed on the
medians (the ratio of the minima alongside).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ("explain", "training", "ops")
BACKEND_ORDER = ("reference", "torch", "cpp", "triton")
INPUT_GRADIENT = "input_gradient"
CLASSIFIER = "classifier_step"


# --- reading -------------------------------------------------------------------------------------------------------
def _method(bench: dict) -> str:
    info = bench.get("extra_info", {})
    return info.get("method") or info.get("backend") or bench.get("name", "?")


def _suite(bench: dict) -> str:
    return bench.get("extra_info", {}).get("suite") or "explain"


def _backend_rank(name: str) -> tuple[int, str]:
    m = re.search(r"\((\w+)\)", name)
    inner = m.group(1) if m else name
    return (BACKEND_ORDER.index(inner) if inner in BACKEND_ORDER else len(BACKEND_ORDER), name)


def _method_key(name: str) -> tuple[int, tuple[int, str]]:
    """Order: the per-backend methods (reference first), then the baselines."""
    if name in (INPUT_GRADIENT, CLASSIFIER):
        return (1, (0, name))
    if name == "zennit":
        return (2, (0, name))
    return (0, _backend_rank(name))


def groups(data: dict, suite: str) -> dict[str, dict[str, dict]]:
    """{group: {method: benchmark}} of one suite, groups in file order, methods ordered by :func:`_method_key`."""
    out: dict[str, dict[str, dict]] = {}
    for bench in data.get("benchmarks", []):
        if _suite(bench) == suite:
            out.setdefault(bench.get("group") or "(no group)", {})[_method(bench)] = bench
    return {g: dict(sorted(b.items(), key=lambda kv: _method_key(kv[0]))) for g, b in out.items()}


def _median(benches: dict[str, dict], method: str) -> float | None:
    return benches.get(method, {}).get("stats", {}).get("median")


def _min(benches: dict[str, dict], method: str) -> float | None:
    return benches.get(method, {}).get("stats", {}).get("min")


def fused_name(methods, fmt: str = "{}") -> str | None:
    """The device's fused method among ``methods`` (``fmt`` e.g. ``"explain({})"``), or a legacy name."""
    for backend in ("cpp", "triton"):
        if fmt.format(backend) in methods:
            return fmt.format(backend)
    if fmt.startswith("explain") and "isnet_kernels" in methods:  # runs before explain took backend=
        return "isnet_kernels"
    return None


def _fmt(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "–" if x is None else format(x, spec) + suffix


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _note(benches: dict[str, dict], num: str, den: str, suffix: str = "") -> str:
    """``num / den: **r**x`` on the medians."""
    return f"{num} / {den}: **{_fmt(_ratio(_median(benches, num), _median(benches, den)), '.2f')}x**{suffix}"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def machine_lines(data: dict) -> list[str]:
    """A short description of where and when the run happened, from the JSON's machine_info."""
    mi = data.get("machine_info", {})
    bench = mi.get("bench", {})
    cpu = mi.get("cpu", {}) or {}
    brand = cpu.get("brand_raw") or mi.get("processor") or mi.get("machine") or "unknown CPU"
    lines = [
        f"- Machine: {brand}, {bench.get('cpu_count', cpu.get('count', '?'))} logical CPUs "
        f"({bench.get('cpu_affinity', '?')} usable by the process), {mi.get('system', '')} {mi.get('release', '')}",
        f"- Python {mi.get('python_version', '?')}, torch {bench.get('torch_version', '?')} "
        f"({bench.get('torch_threads', '?')} intra-op threads), zennit {bench.get('zennit_version', '?')}",
    ]
    if bench.get("device", "cpu") != "cpu":
        lines.append(f"- Device: {bench.get('device')} ({bench.get('device_name', '?')}, CUDA "
                     f"{bench.get('cuda_version', '?')})")
    if bench.get("batch"):
        lines.append(f"- Batch {bench['batch']} x 3 x {bench.get('image_size')} x {bench.get('image_size')} "
                     f"(ops: ResNet-18 layer shapes at that batch), {bench.get('dtype', 'float32')}")
    start, end = bench.get("loadavg_start"), bench.get("loadavg_end")
    if start or end:
        lines.append(f"- Load average (1, 5, 15 min) at start {start}, at end {end} (the run's own threads count "
                     "toward it; well above their number, other processes shared the CPUs)")
    if data.get("datetime"):
        lines.append(f"- Run: {data['datetime']}")
    return lines


# --- tables --------------------------------------------------------------------------------------------------------
def method_table(benches: dict[str, dict], baselines: list[tuple[str, str]]) -> list[str]:
    """One row per method: median, IQR, min, rounds, ``median / baseline`` per baseline, memory if measured."""
    has_mem = any("peak_extra_mib" in b.get("extra_info", {}) for b in benches.values())
    head = "| method | median (ms) | IQR (ms) | min (ms) | rounds |"
    rule = "|---|---:|---:|---:|---:|"
    for label, _ in baselines:
        head += f" / {label} |"
        rule += "---:|"
    if has_mem:
        cuda = any(b.get("extra_info", {}).get("memory") == "cuda_allocated" for b in benches.values())
        head += " peak extra CUDA alloc (MiB) |" if cuda else " peak extra RSS (MiB) |"
        rule += "---:|"
    lines = [head, rule]
    for method, b in benches.items():
        s = b["stats"]
        row = f"| {method} | {_ms(s['median'])} | {_ms(s['iqr'])} | {_ms(s['min'])} | {s['rounds']} |"
        for _, base in baselines:
            row += f" {_fmt(_ratio(s['median'], _median(benches, base)), '.2f', 'x')} |"
        if has_mem:
            row += f" {_fmt(b.get('extra_info', {}).get('peak_extra_mib'))} |"
        lines.append(row)
    return lines


def explain_section(group: str, benches: dict[str, dict]) -> list[str]:
    baselines = [("input gradient", INPUT_GRADIENT)]
    if "explain(reference)" in benches:
        baselines.append(("explain(reference)", "explain(reference)"))
    lines = [f"#### {group}", "", *method_table(benches, baselines)]
    fused = fused_name(benches, "explain({})")
    notes = []
    if fused:
        if INPUT_GRADIENT in benches:
            notes.append(_note(benches, fused, INPUT_GRADIENT))
        if "explain(reference)" in benches and fused != "explain(reference)":
            notes.append(_note(benches, "explain(reference)", fused))
        if "zennit" in benches:
            notes.append(_note(benches, "zennit", fused))
    if notes:
        lines += ["", "Medians: " + "; ".join(notes)]
    agree = []
    for method, b in benches.items():
        info = b.get("extra_info", {})
        if "rel_err_vs_isnet_kernels" in info:
            agree.append(f"{method}: max |diff| / max |ref| = {info['rel_err_vs_isnet_kernels']:.1e}, cosine "
                         f"{info.get('cosine_vs_isnet_kernels', float('nan')):.6f}")
    if agree:
        lines += ["", "Heatmap agreement with explain(reference): " + "; ".join(agree)]
    return lines


def training_section(group: str, benches: dict[str, dict]) -> list[str]:
    baselines = [("classifier step", CLASSIFIER)]
    if "isnet(reference)" in benches:
        baselines.append(("isnet(reference)", "isnet(reference)"))
    lines = [f"#### {group}", "", *method_table(benches, baselines)]
    fused = fused_name(benches, "isnet({})")
    notes = []
    if fused and "isnet(reference)" in benches:
        notes.append(_note(benches, "isnet(reference)", fused))
    if fused and CLASSIFIER in benches:
        notes.append(_note(benches, fused, CLASSIFIER, " (cost model at M = 1: 2.0x)"))
    if notes:
        lines += ["", "Medians: " + "; ".join(notes)]
    errs = [f"{m}: {b['extra_info']['grad_rel_err_vs_reference']:.1e}" for m, b in benches.items()
            if "grad_rel_err_vs_reference" in b.get("extra_info", {})]
    if errs:
        lines += ["", "Parameter gradients vs isnet(reference), max |diff| / max |ref|: " + "; ".join(errs)]
    return lines


def ops_rows(data: dict) -> tuple[list[str], list[tuple[str, str, str, dict[str, dict]]]]:
    """The ops' backends and, per (op, pass) group, ``(op, title, pass, {backend: benchmark})``."""
    rows = []
    backends: set[str] = set()
    for group, benches in groups(data, "ops").items():
        info = next(iter(benches.values()))["extra_info"]
        rows.append((info.get("op", group), info.get("title", group), info.get("pass_", ""), benches))
        backends |= set(benches)
    return sorted(backends, key=_backend_rank), rows


def ops_section(data: dict) -> list[str]:
    backends, rows = ops_rows(data)
    others = [b for b in backends if b != "reference"]
    head = "| op (ResNet-18 layer, B=16, M=1) | pass |" + "".join(f" {b} median (ms) |" for b in backends)
    head += "".join(f" reference / {b} |" for b in others) + " (by minima) |" + " max rel. err vs reference |"
    rule = "|---|---|" + "---:|" * (len(backends) + len(others) + 2)
    lines = [head, rule]
    for _op, title, pass_, benches in rows:
        row = f"| {title} | {pass_} |"
        for b in backends:
            row += f" {_ms(benches[b]['stats']['median']) if b in benches else '–'} |"
        for b in others:
            row += f" {_fmt(_ratio(_median(benches, 'reference'), _median(benches, b)), '.2f', 'x')} |"
        by_min = [f"{_fmt(_ratio(_min(benches, 'reference'), _min(benches, b)), '.2f', 'x')}" for b in others]
        row += f" {' / '.join(by_min)} |"
        errs = [b.get("extra_info", {}).get("rel_err_vs_reference") for b in benches.values()]
        errs = [e for e in errs if e is not None]
        row += f" {_fmt(max(errs) if errs else None, '.1e')} |"
        lines.append(row)
    lines += ["", f"`reference / X` is the speed-up of backend X over the autograd reference (> 1: X is faster), on "
              f"medians; the column after it gives the same ratios on the minima ({' / '.join(others)})."]
    titles = {op: title for op, title, _, _ in rows}
    lines += ["", "Plot labels: " + "; ".join(f"`{op}` = {t}" for op, t in titles.items())]
    return lines


def report_file(path: Path) -> str:
    """The markdown of one JSON file."""
    data = json.loads(path.read_text())
    out = [f"### `{path.name}`", "", *machine_lines(data)]
    for group, benches in groups(data, "explain").items():
        out += ["", *explain_section(group, benches)]
    for group, benches in groups(data, "training").items():
        out += ["", *training_section(group, benches)]
    if groups(data, "ops"):
        out += ["", *ops_section(data)]
    return "\n".join(out) + "\n"


# --- targets -------------------------------------------------------------------------------------------------------
def _prefix(path: Path) -> str:
    """``gpu-`` for ``gpu-explain.json``, ``""`` for ``explain.json``: files of one device share the prefix."""
    for suite in SUITES:
        if path.stem.endswith(suite):
            return path.stem[: -len(suite)]
    return path.stem + "-"


def targets_table(files: list[Path]) -> list[str]:
    """The targets of the brief, from the explain and training groups in ``files`` (one device)."""
    explain: dict[str, dict[str, dict]] = {}
    training: dict[str, dict[str, dict]] = {}
    for path in files:
        data = json.loads(path.read_text())
        for benches in groups(data, "explain").values():
            model = next(iter(benches.values())).get("extra_info", {}).get("model", "?")
            explain[model] = benches
        for benches in groups(data, "training").values():
            model = next(iter(benches.values())).get("extra_info", {}).get("model", "?")
            training[model] = benches
    rows = []

    def add(label: str, benches: dict[str, dict], num: str | None, den: str | None, goal: str, op: str,
            bound: float) -> None:
        if not num or not den or num not in benches or den not in benches:
            rows.append(f"| {label} | – | – | {goal} | not measured |")
            return
        med = _ratio(_median(benches, num), _median(benches, den))
        mn = _ratio(_min(benches, num), _min(benches, den))
        met = med <= bound if op == "<=" else med >= bound
        rows.append(f"| {label} | **{med:.2f}x** | {mn:.2f}x | {goal} | {'met' if met else 'missed'} |")

    for model, benches in explain.items():
        fused = fused_name(benches, "explain({})")
        if model == "resnet18":
            add(f"{fused or 'explain(fused)'} / input gradient, {model}", benches, fused, INPUT_GRADIENT,
                "<= 1.2", "<=", 1.2)
    for model, benches in training.items():
        fused = fused_name(benches, "isnet({})")
        add(f"training isnet(reference) / {fused or 'isnet(fused)'}, {model}", benches, "isnet(reference)", fused,
            ">= 1.5", ">=", 1.5)
    for model, benches in explain.items():
        fused = fused_name(benches, "explain({})")
        add(f"zennit / {fused or 'explain(fused)'}, {model}", benches, "zennit", fused, ">= 2", ">=", 2.0)
    if not rows:
        return []
    return ["| target | measured (medians) | ratio of minima | goal | status |", "|---|---:|---:|---|---|", *rows,
            "", "Status on the medians. Source files: " + ", ".join(f"`{p.name}`" for p in files)]


# --- plots ---------------------------------------------------------------------------------------------------------
def _bars(ax, labels: list[str], series: dict[str, list[dict | None]], ylabel: str, log: bool = False) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, stats) in enumerate(series.items()):
        xs, meds, lo, hi = [], [], [], []
        for j, s in enumerate(stats):
            if s is None:
                continue
            xs.append(j + (i - (len(series) - 1) / 2) * width)
            meds.append(s["median"] * 1e3)
            lo.append((s["median"] - s["q1"]) * 1e3)
            hi.append((s["q3"] - s["median"]) * 1e3)
        bars = ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=name)
        ax.bar_label(bars, fmt="%.3g" if log else "%.0f", fontsize=6, padding=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def plot_file(path: Path, png: Path) -> bool:
    """One figure per JSON file: per suite, grouped bars of the medians (q1..q3 error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    panels = []
    for suite in ("explain", "training"):
        g = groups(data, suite)
        if g:
            methods = sorted({m for b in g.values() for m in b}, key=_method_key)
            series = {m: [b[m]["stats"] if m in b else None for b in g.values()] for m in methods}
            panels.append((f"{path.stem}: {suite}", [k.split(" (")[0] for k in g], series, False))
    backends, rows = ops_rows(data)
    for pass_ in ("forward", "fwd+bwd"):
        sel = [(op, benches) for op, _, p, benches in rows if p == pass_]
        if sel:
            series = {b: [benches[b]["stats"] if b in benches else None for _, benches in sel] for b in backends}
            panels.append((f"{path.stem}: relevance op, {pass_}", [op for op, _ in sel], series, True))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False)
    for ax, (title, labels, series, log) in zip(axes[0], panels):
        _bars(ax, labels, series, "ms per call (median, bars q1..q3)" + (", log scale" if log else ""), log)
        ax.set_title(title, fontsize=9)
        if log:
            ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return True


# --- main ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="pytest-benchmark JSON files (default: results/*.json)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where <name>.md, <name>.png and "
                        "<prefix>targets.md go (default: benchmarks/results)")
    parser.add_argument("--no-plot", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("*.json"))
    if not files:
        raise SystemExit(f"no JSON files given or in {RESULTS}; run the benchmarks with --benchmark-json first")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        text = report_file(path)
        print(text)
        md = args.out_dir / f"{path.stem}.md"
        md.write_text(text)
        written.append(md)
        if not args.no_plot:
            png = args.out_dir / f"{path.stem}.png"
            if plot_file(path, png):
                written.append(png)
    by_prefix: dict[str, list[Path]] = {}
    for path in files:
        by_prefix.setdefault(_prefix(path), []).append(path)
    for prefix, paths in by_prefix.items():
        table = targets_table(paths)
        if table:
            text = "\n".join([f"### Targets ({prefix.rstrip('-') or 'cpu'})", "", *table]) + "\n"
            print(text)
            md = args.out_dir / f"{prefix}targets.md"
            md.write_text(text)
            written.append(md)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
