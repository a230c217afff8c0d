"""The last step of ``make gpu-check`` (benchmarks/gpu_check.sh): one Markdown summary holding every figure, and the
same as data.

Reads, from the check's temporary folder (``--work``): ``env.json`` (benchmarks/gpu_env.py), ``bandwidth.json``
(benchmarks/bandwidth.py) and the benchmark suites' pytest-benchmark files ``gpu-*.json``; from the results folder
(``--out``): ``tests.xml`` (JUnit, the tests on CUDA); and ``--steps``, the check's table of steps (name, status,
seconds, tab-separated). Writes into ``--out``:

- ``summary.md``: the machine, each step with its status and time, the test counts with every failure and skip
  reason, the bandwidth table, the benchmark tables and targets (benchmarks/report.py's), or "not run: no GPU" for
  each part that needs one (``--dry-run``);
- ``results.json``: the same as data (``env``, ``steps``, ``tests``, ``bandwidth``, ``benchmarks``: per benchmark its
  group, name, median, IQR, minimum, rounds and extra info).

Usage: ``python benchmarks/gpu_summary.py --work DIR --out DIR --steps steps.tsv [--elapsed S] [--dry-run]``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402  (benchmarks/report.py: the tables of the CPU benchmarks, reused as they are)

NOT_RUN = "not run: no GPU"


def read_steps(path: Path) -> list[dict]:
    """The check's steps: ``[{"step", "status", "seconds"}]`` from the tab-separated file."""
    steps = []
    if path.exists():
        for line in path.read_text().splitlines():
            name, status, seconds = (line.split("\t") + ["", "", "0"])[:3]
            steps.append({"step": name, "status": status, "seconds": int(seconds or 0)})
    return steps


def collected(log: Path) -> dict[str, int]:
    """Per step of the check's log, the number of tests pytest reported collected (the dry run's collections)."""
    counts, step = {}, None
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            head = re.match(r"== (.+?) \(limit \d+s", line)
            if head:
                step = head.group(1)
            found = re.match(r"(\d+) tests? collected", line.strip())
            if found and step:
                counts[step] = int(found.group(1))
    return counts


def read_junit(path: Path) -> dict | None:
    """Counts, failures (test id and first line of the message) and skip reasons (with counts) of a JUnit file."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable {path.name}: {exc}"}
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skips = [], {}
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append({"test": name, "kind": child.tag, "message": (message[0] if message else "")[:300]})
            elif child.tag == "skipped":
                outcome = "skipped"
                reason = (child.get("message") or "").strip()
                skips[reason] = skips.get(reason, 0) + 1
        counts[outcome] += 1
    return {**counts, "failures": failures, "skip_reasons": skips}


def read_benchmarks(work: Path) -> dict[str, list[dict]]:
    """Per suite file (``gpu-explain``, ...), each benchmark's group, name, median, IQR, minimum, rounds, extra."""
    out = {}
    for path in sorted(work.glob("gpu-*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        out[path.stem] = [{"group": b.get("group"), "name": b.get("name"), "median_s": b["stats"]["median"],
                           "iqr_s": b["stats"]["iqr"], "min_s": b["stats"]["min"], "rounds": b["stats"]["rounds"],
                           "extra_info": b.get("extra_info", {})} for b in data.get("benchmarks", [])]
    return out


def _collected(step: dict) -> str:
    return f" ({step['collected']} collected)" if "collected" in step else ""


def _env_lines(env: dict) -> list[str]:
    return ["| field | value |", "|---|---|", *(f"| {k} | {v if v is not None else '-'} |" for k, v in env.items())]


def _test_lines(tests: dict | None, dry_run: bool) -> list[str]:
    if dry_run:
        return [f"Tests on CUDA: {NOT_RUN} (collected only; the collection is a step above)."]
    if tests is None:
        return ["Tests on CUDA: no JUnit file (the step did not get to write one; see check.log)."]
    if "error" in tests:
        return [f"Tests on CUDA: {tests['error']}"]
    lines = [f"Tests on CUDA: **{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
             f"{tests['skipped']} skipped** of {tests['tests']}."]
    if tests["failures"]:
        lines += ["", "| failed test | message |", "|---|---|"]
        lines += [f"| `{f['test']}` | {f['message'].replace('|', '/')} |" for f in tests["failures"]]
    if tests["skip_reasons"]:
        lines += ["", "| skipped | reason |", "|---:|---|"]
        reasons = sorted(tests["skip_reasons"].items(), key=lambda item: -item[1])
        lines += [f"| {n} | {r.replace('|', '/')} |" for r, n in reasons]
    return lines


def summarise(work: Path, out: Path, steps_file: Path, elapsed: int | None, dry_run: bool) -> dict:
    """Write ``summary.md`` and ``results.json`` into ``out``; return the results."""
    env = json.loads((work / "env.json").read_text()) if (work / "env.json").exists() else {}
    steps = read_steps(steps_file)
    for step, count in collected(out / "check.log").items():
        for entry in steps:
            if entry["step"] == step:
                entry["collected"] = count
    tests = None if dry_run else read_junit(out / "tests.xml")
    bandwidth = None
    if (work / "bandwidth.json").exists():
        bandwidth = json.loads((work / "bandwidth.json").read_text())
    benchmarks = read_benchmarks(work)
    memory = None
    if (out / "gpu-memory.json").exists():
        memory = json.loads((out / "gpu-memory.json").read_text()).get("results", [])
    results = {"dry_run": dry_run, "elapsed_s": elapsed, "env": env, "steps": steps, "tests": tests,
               "bandwidth": bandwidth, "benchmarks": benchmarks, "memory": memory}
    ok = all(s["status"] == "passed" for s in steps)
    where = env.get("gpu") or "no GPU"
    title = "GPU check, dry run (no GPU)" if dry_run else f"GPU check on {where}"
    lines = [f"# {title}", "",
             f"Commit {env.get('commit') or '?'}; Python {env.get('python')}, torch {env.get('torch')} "
             f"(CUDA {env.get('torch_cuda')}), triton {env.get('triton')}; "
             f"{'every step passed' if ok else 'a step did not pass'}"
             + (f"; {elapsed} s in all." if elapsed is not None else "."), "",
             "## Steps", "", "| step | status | seconds |", "|---|---|---:|",
             *(f"| {s['step']}{_collected(s)} | {s['status']} | {s['seconds']} |" for s in steps), "",
             "## Machine", "", *_env_lines(env), "",
             "## Tests", "", *_test_lines(tests, dry_run), "", "## Bandwidth against a copy", ""]
    if bandwidth is not None:
        from bandwidth import markdown  # noqa: PLC0415  (imports torch: only where there is a table to write)

        lines.append(markdown(bandwidth))
    else:
        lines.append(NOT_RUN if dry_run else "No result (see the bandwidth step and check.log).")
    lines += ["", "## Benchmarks", ""]
    files = sorted(work.glob("gpu-*.json"))
    if files:
        for path in files:
            lines += [report.report_file(path), ""]
        table = report.targets_table(files)
        if table:
            lines += ["### Targets", "", *table, ""]
    else:
        lines.append(NOT_RUN if dry_run else "No result (see the benchmarks step and check.log).")
    lines += ["", "## Memory of a training step", ""]
    if memory:
        lines += ["| model | mode | peak (MiB) | ratio to plain |", "|---|---|---:|---:|"]
        plain = {r["model"]: r["peak_mib"] for r in memory if r.get("mode") == "plain"}
        for r in memory:
            ratio = r["peak_mib"] / plain[r["model"]] if plain.get(r["model"]) else None
            lines.append(f"| {r['model']} | {r['mode']} | {r['peak_mib']:.0f} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    else:
        lines.append(NOT_RUN if dry_run else "No result (see the memory step and check.log).")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines).rstrip() + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="the check's temporary folder")
    p.add_argument("--out", type=Path, required=True, help="the results folder")
    p.add_argument("--steps", type=Path, required=True, help="the check's steps (name, status, seconds; TSV)")
    p.add_argument("--elapsed", type=int, default=None, help="seconds the check took so far")
    p.add_argument("--dry-run", action="store_true", help="no GPU: what needs one is reported as not run")
    args = p.parse_args(argv)
    summarise(args.work, args.out, args.steps, args.elapsed, args.dry_run)
    print(f"gpu-summary: wrote {args.out / 'summary.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
