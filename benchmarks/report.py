"""Summarise pytest-benchmark JSON from ``test_bench_explain.py``: markdown tables and a bar plot.

Usage (from the repository root)::

    python benchmarks/report.py                       # every benchmarks/results/*.json
    python benchmarks/report.py path/to/run.json ...  # given files

Prints, per JSON file, the machine (CPU, core count, torch version, threads, load average) and one markdown table
per model (pytest-benchmark group): method, median, IQR and minimum of the wall-clock time per call in ms, rounds,
the ratio to the input-gradient median, the ratio to ``isnet_kernels``' median (for zennit: zennit / ours) and,
if measured, the peak extra RSS of one call. Writes the same markdown to ``benchmarks/results/explain.md`` and a
bar plot (median, with q1..q3 as error bars) to ``benchmarks/results/explain.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ("isnet_kernels", "input_gradient", "zennit")
BASELINE = "input_gradient"
OURS = "isnet_kernels"


def _method(bench: dict) -> str:
    return bench.get("extra_info", {}).get("method") or bench.get("name", "?")


def _groups(data: dict) -> dict[str, dict[str, dict]]:
    """{group: {method: benchmark}} in file order, methods in ORDER first."""
    groups: dict[str, dict[str, dict]] = {}
    for bench in data.get("benchmarks", []):
        groups.setdefault(bench.get("group") or "(no group)", {})[_method(bench)] = bench
    rank = {m: i for i, m in enumerate(ORDER)}
    return {g: dict(sorted(b.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0]))) for g, b in groups.items()}


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


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
    if bench.get("batch"):
        lines.append(f"- Batch {bench['batch']} x 3 x {bench.get('image_size')} x {bench.get('image_size')}, "
                     f"{bench.get('dtype', 'float32')}, eval mode")
    start, end = bench.get("loadavg_start"), bench.get("loadavg_end")
    if start or end:
        lines.append(f"- Load average (1, 5, 15 min) at start {start}, at end {end}: other processes shared the CPUs")
    if data.get("datetime"):
        lines.append(f"- Run: {data['datetime']}")
    return lines


def group_table(benches: dict[str, dict]) -> list[str]:
    """The markdown table of one model's methods."""
    base = benches.get(BASELINE, {}).get("stats", {}).get("median")
    ours = benches.get(OURS, {}).get("stats", {}).get("median")
    has_mem = any("peak_extra_mib" in b.get("extra_info", {}) for b in benches.values())
    head = "| method | median (ms) | IQR (ms) | min (ms) | rounds | / input gradient | / isnet_kernels |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if has_mem:
        head += " peak extra RSS (MiB) |"
        rule += "---:|"
    lines = [head, rule]
    for method, b in benches.items():
        s = b["stats"]
        med = s["median"]
        row = (f"| {method} | {med * 1e3:.1f} | {s['iqr'] * 1e3:.1f} | {s['min'] * 1e3:.1f} | {s['rounds']} | "
               f"{_fmt(med / base if base else None, '.2f')}x | {_fmt(med / ours if ours else None, '.2f')}x |")
        if has_mem:
            row += f" {_fmt(b.get('extra_info', {}).get('peak_extra_mib'))} |"
        lines.append(row)
    if ours and "zennit" in benches:
        zennit = benches["zennit"]["stats"]["median"]
        lines.append("")
        lines.append(f"zennit / isnet_kernels (medians): **{zennit / ours:.2f}x**; isnet_kernels / input gradient: "
                     f"**{_fmt(ours / base if base else None, '.2f')}x**")
        info = benches["zennit"].get("extra_info", {})
        if "rel_err_vs_isnet_kernels" in info:
            lines.append("")
            lines.append(f"Heatmap agreement zennit vs isnet_kernels: max |diff| / max |ours| = "
                         f"{info['rel_err_vs_isnet_kernels']:.1e}, cosine similarity "
                         f"{info.get('cosine_vs_isnet_kernels', float('nan')):.6f}")
    return lines


def report(files: list[Path]) -> str:
    """The markdown report of ``files``."""
    out: list[str] = []
    for path in files:
        data = json.loads(path.read_text())
        out.append(f"### `{path.name}`")
        out.append("")
        out.extend(machine_lines(data))
        for group, benches in _groups(data).items():
            out.append("")
            out.append(f"#### {group}")
            out.append("")
            out.extend(group_table(benches))
        out.append("")
    return "\n".join(out)


def plot(files: list[Path], png: Path) -> None:
    """Grouped bars: one group per model, one bar per method (median, q1..q3 error bars); one panel per file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(files), figsize=(6.5 * len(files), 4.2), squeeze=False)
    for ax, path in zip(axes[0], files):
        groups = _groups(json.loads(path.read_text()))
        methods = [m for m in ORDER if any(m in b for b in groups.values())]
        methods += sorted({m for b in groups.values() for m in b} - set(methods))
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            xs, meds, lo, hi = [], [], [], []
            for j, benches in enumerate(groups.values()):
                if method not in benches:
                    continue
                s = benches[method]["stats"]
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                meds.append(s["median"] * 1e3)
                lo.append((s["median"] - s["q1"]) * 1e3)
                hi.append((s["q3"] - s["median"]) * 1e3)
            bars = ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=method)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        ax.set_xticks(range(len(groups)), [g.split(" (")[0] for g in groups])
        ax.set_ylabel("ms per batch (median, bars q1..q3)")
        ax.set_title(path.stem + ": " + next(iter(groups), "").partition(" ")[2], fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="pytest-benchmark JSON files (default: results/*.json)")
    parser.add_argument("--md", type=Path, default=RESULTS / "explain.md", help="markdown output")
    parser.add_argument("--png", type=Path, default=RESULTS / "explain.png", help="bar plot output")
    args = parser.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("*.json"))
    if not files:
        raise SystemExit(f"no JSON files given or in {RESULTS}; run the benchmarks with --benchmark-json first")
    text = report(files)
    print(text)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text + "\n")
    plot(files, args.png)
    print(f"\nwrote {args.md} and {args.png}")


if __name__ == "__main__":
    main()
