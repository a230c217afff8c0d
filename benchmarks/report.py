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
* ``isnet`` (test_bench_isnet.py): one row per variant, per K its median step, its ratio to the plain step at the
  same K and its peak extra memory; the original variant's growth in K projected to the K it was not run at; the
  issue's targets for the variants (met or missed on the medians); plot ``<name>.png``: step ratio vs K.

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


# --- isnet suite (test_bench_isnet.py) ------------------------------------------------------------------------------
ISNET_VARIANTS = ("plain", "selective", "stochastic", "dual", "original")
PLAIN = "plain"
MAX_SAME_STEP = 1.10  # selective / stochastic step at the largest K vs the smallest
MAX_M1_RATIO = 2.5  # selective / stochastic step vs the plain step
MAX_ORIGINAL_RATIO = 11.0  # original step vs the plain step at K = 10
#: The authors' reference code on the same model and batch (issue 4): ratios to its plain step.
REFERENCE_CODE = {("selective", 10): 3.13, ("selective", 1000): 3.18, ("original", 10): 22.4}


def isnet_rows(data: dict) -> dict[str, dict[int, dict]]:
    """{method: {K: benchmark}} of the isnet suite: methods in variant order (plain first), K ascending."""
    rows: dict[str, dict[int, dict]] = {}
    for bench in data.get("benchmarks", []):
        if _suite(bench) == "isnet":
            rows.setdefault(_method(bench), {})[int(bench["extra_info"]["classes"])] = bench
    order = {v: i for i, v in enumerate(ISNET_VARIANTS)}
    return {m: dict(sorted(rows[m].items())) for m in sorted(rows, key=lambda m: (order.get(m.split("(")[0], 9),
                                                                                    _backend_rank(m)))}


def _isnet_ratio(rows: dict[str, dict[int, dict]], method: str, K: int, stat: str = "median") -> float | None:
    b, p = rows.get(method, {}).get(K), rows.get(PLAIN, {}).get(K)
    return _ratio(b["stats"][stat], p["stats"][stat]) if b and p else None


def _isnet_method(rows: dict[str, dict[int, dict]], variant: str) -> str | None:
    """The variant's method on the fused backend (else the reference) among ``rows``."""
    for backend in ("cpp", "triton", "reference", "torch"):
        if f"{variant}({backend})" in rows:
            return f"{variant}({backend})"
    return None


def _line(points: dict[int, float]) -> tuple[float, float] | None:
    """Least-squares ``(a, b)`` of ``value = a + b K`` through ``{K: value}`` (two points at least)."""
    if len(points) < 2:
        return None
    ks, vs = list(points), list(points.values())
    mk, mv = sum(ks) / len(ks), sum(vs) / len(vs)
    b = sum((k - mk) * (v - mv) for k, v in zip(ks, vs)) / sum((k - mk) ** 2 for k in ks)
    return mv - b * mk, b


def isnet_table(rows: dict[str, dict[int, dict]]) -> list[str]:
    ks = sorted({k for r in rows.values() for k in r})
    cuda = any(b.get("extra_info", {}).get("memory") == "cuda_allocated" for r in rows.values() for b in r.values())
    head, rule = "| variant (maps per image) |", "|---|"
    for k in ks:
        head += f" K={k} median (ms) | / plain | {'peak extra CUDA alloc' if cuda else 'peak extra RSS'} (MiB) |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for method, by_k in rows.items():
        maps = {PLAIN: "-", "selective": "1", "stochastic": "1", "dual": "2", "original": "K"}
        row = f"| {method} ({maps.get(method.split('(')[0].removesuffix('-live'), '?')}) |"
        for k in ks:
            b = by_k.get(k)
            if b is None:
                row += " not run | – | – |"
                continue
            info, s = b.get("extra_info", {}), b["stats"]
            row += (f" {_ms(s['median'])}{'' if s['rounds'] > 1 else ' (1 round)'} |"
                    f" {_fmt(_isnet_ratio(rows, method, k), '.2f', 'x')} | {_fmt(info.get('peak_extra_mib'))} |")
        lines.append(row)
    return lines


def isnet_projection(rows: dict[str, dict[int, dict]]) -> list[str]:
    """The original variant at the K it was not run at: time and memory on the lines through the measured K."""
    method = _isnet_method(rows, "original")
    ks = sorted({k for r in rows.values() for k in r})
    if not method:
        return []
    measured = rows[method]
    missing = [k for k in ks if k not in measured]
    ratio = _line({k: r for k in measured if (r := _isnet_ratio(rows, method, k))})
    peak = _line({k: b["extra_info"]["peak_extra_mib"] for k, b in measured.items()
                  if b["extra_info"].get("peak_extra_mib") is not None})
    saved = _line({k: b["extra_info"]["saved_mib"] for k, b in measured.items()
                   if b["extra_info"].get("saved_mib") is not None})
    if ratio is None:
        return []
    total = next(iter(measured.values()))["extra_info"].get("mem_total_mib")
    lines = [f"{method}, on the line through K = {', '.join(map(str, measured))}: step = {ratio[0]:.2f} + "
             f"{ratio[1]:.3f} K plain steps (cost model (3 + 3K)F / 3F: 1 + K)"]
    if saved:
        lines[0] += f"; tensors saved for the backward {saved[0]:.0f} + {saved[1]:.1f} K MiB"
    if peak:
        lines[0] += f"; peak extra RSS {peak[0]:.0f} + {peak[1]:.1f} K MiB"
    for k in missing:
        text = f"At K = {k} (not run): **{ratio[0] + ratio[1] * k:.0f}x** the plain step"
        if saved:
            text += f", **{(saved[0] + saved[1] * k) / 1024:.1f} GiB** saved for the backward"
        if peak:
            text += f", peak extra RSS **{(peak[0] + peak[1] * k) / 1024:.1f} GiB**"
        if total:
            text += f" (memory of the device: {total / 1024:.1f} GiB)"
        lines.append(text)
    return ["", "Projection: " + lines[0] + ".", *[f"{t}." for t in lines[1:]]]


def isnet_targets(rows: dict[str, dict[int, dict]]) -> list[str]:
    """The issue's targets for the ISNet step, each met or missed on the medians (minima alongside)."""
    ks = sorted({k for r in rows.values() for k in r})
    out = []

    def add(label: str, med: float | None, mn: float | None, goal: str, ok: bool | None, context: str = "") -> None:
        if med is None:
            out.append(f"| {label} | – | – | {goal} | {context} | not measured |")
        else:
            out.append(f"| {label} | **{med:.2f}x** | {_fmt(mn, '.2f', 'x')} | {goal} | {context} | "
                       f"{'met' if ok else 'missed'} |")

    def step(method: str | None, k: int, stat: str = "median") -> float | None:
        b = rows.get(method or "", {}).get(k)
        return b["stats"][stat] if b else None

    lo, hi = (ks[0], ks[-1]) if ks else (None, None)
    for variant in ("selective", "stochastic"):
        m = _isnet_method(rows, variant)
        med, mn = _ratio(step(m, hi), step(m, lo)), _ratio(step(m, hi, "min"), step(m, lo, "min"))
        add(f"{m or variant} step, K={hi} / K={lo}", med if hi != lo else None, mn, f"<= {MAX_SAME_STEP:.2f}",
            med is not None and med <= MAX_SAME_STEP)
    for variant in ("selective", "stochastic"):
        m = _isnet_method(rows, variant)
        for k in ks:
            med = _isnet_ratio(rows, m or "", k)
            ctx = REFERENCE_CODE.get((variant, k))
            add(f"{m or variant} / plain, K={k}", med, _isnet_ratio(rows, m or "", k, "min"), f"<= {MAX_M1_RATIO}",
                med is not None and med <= MAX_M1_RATIO, f"{ctx}x" if ctx else "")
    m = _isnet_method(rows, "original")
    med = _isnet_ratio(rows, m or "", 10)
    add(f"{m or 'original'} / plain, K=10", med, _isnet_ratio(rows, m or "", 10, "min"),
        f"<= {MAX_ORIGINAL_RATIO:.0f}", med is not None and med <= MAX_ORIGINAL_RATIO, "22.4x")
    big = max((k for k in rows.get(m or "", {}) if k > 10), default=None)
    if big:
        bound = (3 + 3 * big) / (3 + 3 * 10)
        med = _ratio(step(m, big), step(m, 10))
        add(f"{m} step, K={big} / K=10 (linear in K)", med, _ratio(step(m, big, "min"), step(m, 10, "min")),
            f"<= {bound:.2f} (cost model)", med is not None and med <= bound)
    else:
        add("original step linear in K", None, None, "K=100 / K=10 <= 9.18 (cost model)", None)
    return ["| target | measured (medians) | ratio of minima | goal | authors' code | status |",
            "|---|---:|---:|---|---:|---|", *out]


def isnet_section(data: dict) -> list[str]:
    rows = isnet_rows(data)
    b = next(iter(next(iter(rows.values())).values()))
    info = b.get("extra_info", {})
    lines = [f"#### ISNet training step: resnet18, B={info.get('batch')}, {info.get('image_size')}x"
             f"{info.get('image_size')}, {info.get('optimizer', 'SGD')}, {info.get('device', 'cpu')}, "
             f"{info.get('threads')} threads", "", *isnet_table(rows), "",
             "`/ plain`: the step's median over the plain classifier step's median at the same K. Peak extra RSS: "
             "one step's peak resident memory over the process's before its warm-up step (model excluded; "
             "gradients, momentum and library caches kept between steps included), in a fresh process.",
             *isnet_projection(rows), "", "Targets (issue 4; the authors' reference code's ratios for context):", "",
             *isnet_targets(rows)]
    losses = [f"{m} K={k}: {b['extra_info']['loss_last']:.3g}" for m, by_k in rows.items() for k, b in by_k.items()
              if "loss_last" in b.get("extra_info", {})]
    return lines + ["", "Status on the medians. Loss after the last timed step: " + "; ".join(losses)]


def plot_isnet(ax, data: dict) -> None:
    """Step time over the plain step vs K, one line per variant, the targets and the cost model."""
    rows = isnet_rows(data)
    ks = sorted({k for r in rows.values() for k in r})
    for method, by_k in rows.items():
        if method == PLAIN:
            continue
        pts = [(k, r) for k in by_k if (r := _isnet_ratio(rows, method, k))]
        if pts:
            (line,) = ax.plot(*zip(*pts), marker="o", label=method)
            for k, r in pts:
                ax.annotate(f"{r:.2f}", (k, r), fontsize=6, textcoords="offset points", xytext=(3, 3))
            fit = _line(dict(pts))
            missing = [k for k in ks if k not in by_k]
            if fit and missing and method.startswith("original"):
                kk = [pts[-1][0], *missing]
                ax.plot(kk, [fit[0] + fit[1] * k for k in kk], ls="--", color=line.get_color(),
                        label=f"{method}, projected")
    ax.axhline(MAX_M1_RATIO, color="k", ls=":", lw=1, label=f"target selective/stochastic <= {MAX_M1_RATIO}x")
    ax.axhline(2.0, color="grey", ls="-.", lw=1, label="cost model, M = 1: 2.0x")
    ax.plot([10], [MAX_ORIGINAL_RATIO], "k*", ms=9, label=f"target original <= {MAX_ORIGINAL_RATIO:.0f}x at K = 10")
    if ks:
        ax.plot(ks, [1 + k for k in ks], color="grey", ls=":", lw=1, label="cost model, original: 1 + K")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("classes K")
    ax.set_ylabel("step time / plain step (medians), log scale")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")


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
    if groups(data, "isnet"):
        out += ["", *isnet_section(data)]
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
    """One figure per JSON file: per suite, grouped bars of the medians (q1..q3 error bars); isnet: step ratio vs K."""
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
    isnet = bool(groups(data, "isnet"))
    if not panels and not isnet:
        return False
    fig, axes = plt.subplots(1, len(panels) + isnet, figsize=(6.5 * (len(panels) + isnet), 4.4), squeeze=False)
    if isnet:
        plot_isnet(axes[0][-1], data)
        axes[0][-1].set_title(f"{path.stem}: ISNet training step, resnet18", fontsize=9)
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
