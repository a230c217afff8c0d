"""The package's defaults on every kind of background bias, three seeds, each beside its artefact-free target
(``make defaults-check``).

The selective ISNet exactly as ``isnet train --variant selective`` runs it (SmallCNN, the trainer's 24 epochs), the
plain classifier trained on the artefact-free images (``train_clean``: the target) and, where the background itself
is the shortcut, the plain classifier on the biased images, on:

- the defaults study's two sets (``python/defaults_study.py``): the biased digits (a square whose position codes the
  class, 32x32, 200 training images per class) and the biased tags (a text tag, 40x40, 200 per class);
- its held-out set: digits at 40x40 on faint noise, 110 per class;
- biased scenes with other photographs and digits than the set the defaults' C2 was measured on
  (``isnet data biased-scenes --seed 1 --photo-seed 1``, 300 per class).

A setting meets the bars (docs/isnet.md, section "C2") when its confounding accuracy is at least 90% of its
unbiased accuracy (it does not follow the background) and its unbiased accuracy at least 80% of the target's (it
learnt the digit).
Writes ``OUT/check.md`` (table) and ``OUT/check.json`` (every run); runs in worker processes of one thread each
(``python/experiment_grid.py``: finished runs are read back, an interrupted check continues). Usage::

    python python/defaults_check.py --out python/results/defaults [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment_grid import SPLITS, Job, pm, prepare_dataset, run_jobs, summarise  # noqa: E402

#: Data set -> training images per class (the study's counts; the scenes writer's default).
KINDS: dict[str, int] = {
    "biased digits": 200,
    "biased tags": 200,
    "biased digits 40x40 on noise (held out)": 110,
    "biased scenes, other photographs (held out)": 300,
}
#: Data sets whose plain classifier is trained too (the shortcut the ISNet must not learn).
WITH_PLAIN = ("biased scenes, other photographs (held out)",)
ISNET = "ISNet, the package's defaults"
CLEAN = "plain on train_clean (the target)"
PLAIN = "plain classifier"
#: The bars: confounding / unbiased accuracy, and unbiased accuracy / the target's.
BARS = (0.9, 0.8)


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (data set, method): accuracies, the two ratios the bars are on, worst group, background."""
    target = {r["dataset"]: r["test_unbiased"]["mean"] for r in rows if r["method"] == CLEAN}
    lines = ["| data set | method | " + " | ".join(SPLITS) + " | confounding / unbiased | unbiased / target | "
             "worst group (unbiased) | background relevance (unbiased) | bars |",
             "| --- | --- | " + " | ".join("---:" for _ in SPLITS) + " | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        follows = r["test_confounding"]["mean"] / max(r["test_unbiased"]["mean"], 1e-9)
        learnt = r["test_unbiased"]["mean"] / max(target[r["dataset"]], 1e-9)
        met = "" if r["method"] != ISNET else ("met" if follows >= BARS[0] and learnt >= BARS[1] else "missed")
        lines.append(f"| {r['dataset']} | {r['method']} | " + " | ".join(pm(r[s]) for s in SPLITS)
                     + f" | {follows:.2f} | {learnt:.2f} | {pm(r.get('test_unbiased_worst_group'))} | "
                     f"{pm(r['test_unbiased_background'])} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("python/results/defaults"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=24, help="epochs of every run (default 24, the trainer's)")
    p.add_argument("--per-class-test", type=int, default=50, help="test images per class and split (default 50)")
    p.add_argument("--per-class", type=int, default=None,
                   help="training images per class of every kind (default: each kind's own, KINDS)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS), metavar="NAME",
                   help=f"data sets (default: all of {', '.join(KINDS)})")
    p.add_argument("--workers", type=int, default=None, help="processes at once (default: the cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    work = args.out / "work" / "check"
    jobs = []
    for seed in args.seeds:  # seed by seed: a check cut short has every kind
        for dataset in args.kinds:
            slug = dataset.replace(" ", "_").replace(",", "")
            data = prepare_dataset(dataset, work / "data" / slug, per_class=args.per_class or KINDS[dataset],
                                   per_class_test=args.per_class_test)
            runs = work / "runs" / slug / f"seed{seed}"
            base = {"arch": "small", "epochs": args.epochs, "seed": seed}
            methods = [("isnet", ISNET, {"variant": "selective"}),
                       ("clean", CLEAN, {"variant": "none", "train_split": "train_clean"})]
            if dataset in WITH_PLAIN:
                methods.append(("plain", PLAIN, {"variant": "none"}))
            for folder, method, settings in methods:
                jobs.append(Job(method, dataset, str(data), str(runs / folder), {**base, **settings}))
    start = time.perf_counter()
    records = run_jobs(jobs, workers=args.workers, progress=not args.quiet)
    minutes = (time.perf_counter() - start) / 60
    rows = summarise(records)
    run_minutes = sum(r["train_seconds"] for r in records) / 60
    met = [r for r in rows if r["method"] == ISNET]
    text = (f"# The defaults on every kind of background bias\n\nSmallCNN, {args.epochs} epochs, the package's "
            f"defaults (`isnet train --variant selective`); seeds {', '.join(map(str, args.seeds))} (mean ± std); "
            f"accuracy (%) on each test split ({records[0]['splits'][SPLITS[0]]['images']} images each), "
            "worst-group accuracy where the data set has groups, the share of the predicted class's |LRP| outside "
            f"the mask. Bars: confounding >= {BARS[0]:.0%} of unbiased, unbiased >= {BARS[1]:.0%} of the target's. "
            f"{len(records)} runs, {run_minutes:.0f} min of training in all, {minutes:.0f} min for this call.\n\n"
            + table(rows)
            + f"\nMean unbiased accuracy of the ISNet over the kinds: "
              f"{100 * mean(r['test_unbiased']['mean'] for r in met):.1f}%.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check.md").write_text(text)
    (args.out / "check.json").write_text(json.dumps({"epochs": args.epochs, "seeds": args.seeds, "rows": rows,
                                                     "runs": records}, indent=2) + "\n")
    print(text)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
