"""Every way this package offers to keep a classifier off the background, side by side (``make compare``).

Methods, all SmallCNN with the trainer's defaults (``TrainConfig()``: SGD lr 0.15, cosine decay, momentum 0.9,
clip 1, batch 32) and the same epochs:

- ``plain``: cross-entropy only (``--variant none``), on the biased training split;
- ``RRR``: Right for the Right Reasons (Ross et al. 2017), the squared input gradient of the summed
  log-probabilities penalised on the background (``--variant rrr``);
- ``ISNet (LRP)``: the selective ISNet with its defaults (``--variant selective``);
- ``ISNet (Grad x Input)``: the same with Grad x Input heatmaps in place of LRP (``--heatmap gradinput``);
- ``plain on train_clean``: the plain classifier trained on the same images without the artefact: the upper
  bound a method that ignores the background can approach.

Three data sets (``isnet data biased-digits``, 32x32, ``isnet data biased-tags``, 40x40, and ``isnet data
biased-scenes``, 40x40, where the whole background is the shortcut: that one at the trainer's 24 epochs and the
writer's 300 training images per class, ``SCENES_RUN``), three seeds each (the data set is the same, seed 0; the seed
changes initialisation and data order), mean ± sample standard deviation; worst-group accuracy where the data set
has groups. Every run uses one thread and deterministic algorithms, two runs at a time on two cores
(``python/experiment_grid.py``), so the numbers do not depend on the machine's load. Writes
``OUT/compare.md`` (table), ``OUT/compare.json`` (every run) and ``OUT/compare.png`` (accuracy per split,
background relevance, seconds per epoch). A finished run is not trained again; an interrupted grid continues.

Usage::

    python python/compare.py --out python/results/compare [--epochs 12] [--seeds 0 1 2] [--per-class 200]
        [--datasets "biased scenes"]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiment_grid import DATASETS, SCENES, SPLITS, Job, pm, prepare_dataset, run_jobs, summarise  # noqa: E402

#: The data sets compared: the study's two and the biased scenes.
COMPARED = (*DATASETS, "biased scenes")
#: The scenes' runs by default: the trainer's default epochs on the writer's default training images (3,000 images
#: of real photographs need the steps; the digits and tags use --epochs and --per-class).
SCENES_RUN = {"epochs": 24, "per_class": 300}

METHODS: dict[str, dict[str, Any]] = {
    "plain": {"variant": "none"},
    "RRR": {"variant": "rrr"},
    "ISNet (LRP)": {"variant": "selective"},
    "ISNet (Grad x Input)": {"variant": "selective", "heatmap": "gradinput"},
    "plain on train_clean": {"variant": "none", "train_split": "train_clean"},
}
#: Labels of the seconds-per-epoch panel, where the full names do not fit.
SHORT = {"ISNet (LRP)": "ISNet\nLRP", "ISNet (Grad x Input)": "ISNet\nG x I", "plain on train_clean": "clean"}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data set | method | " + " | ".join(SPLITS) + " | worst group (unbiased) | background relevance "
             "(confounding) | s / epoch |",
             "| --- | --- | " + " | ".join("---:" for _ in SPLITS) + " | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['method']} | " + " | ".join(pm(r[s]) for s in SPLITS)
                     + f" | {pm(r.get('test_unbiased_worst_group'))} | {pm(r['test_confounding_background'])} | "
                     f"{pm(r['epoch_seconds'], 1.0)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per data set (row): accuracy per test split, background relevance per split, seconds per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(14, 3.4 * len(datasets)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 3, 1.4]})
    width = 0.8 / len(methods)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, dataset in enumerate(datasets):
        by = {r["method"]: r for r in rows if r["dataset"] == dataset}
        for col, (key, label) in enumerate((("", "accuracy (%)"), ("_background", "background relevance (%)"))):
            ax = axes[i][col]
            for j, method in enumerate(methods):
                stats = [by[method][s + key] for s in SPLITS]
                xs = [k + (j - (len(methods) - 1) / 2) * width for k in range(len(SPLITS))]
                ax.bar(xs, [100 * s["mean"] if s else 0 for s in stats], width,
                       yerr=[100 * s["std"] if s else 0 for s in stats], capsize=2, label=method,
                       color=colours[j % len(colours)])
            ax.set_xticks(range(len(SPLITS)), SPLITS, fontsize=8)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(dataset, fontsize=10)
            if col == 0:
                ax.set_ylim(0, 100)
                ax.axhline(10, color="grey", lw=0.8, ls=":")  # chance
        ax = axes[i][2]
        ax.bar(range(len(methods)), [by[m]["epoch_seconds"]["mean"] for m in methods],
               yerr=[by[m]["epoch_seconds"]["std"] for m in methods], capsize=2,
               color=[colours[j % len(colours)] for j in range(len(methods))])
        ax.set_xticks(range(len(methods)), [SHORT.get(m, m) for m in methods], fontsize=7)
        ax.set_ylabel("seconds per epoch (1 thread)", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("python/results/compare"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=12, help="epochs of every method (default 12)")
    p.add_argument("--per-class", type=int, default=200, help="training images per class (default 200)")
    p.add_argument("--per-class-test", type=int, default=50, help="test images per class and split (default 50)")
    p.add_argument("--workers", type=int, default=None, help="runs at once (default: the cores)")
    p.add_argument("--datasets", nargs="+", default=list(COMPARED), choices=COMPARED, metavar="NAME",
                   help=f"data sets to compare (default: all of {', '.join(COMPARED)})")
    p.add_argument("--scenes-epochs", type=int, default=SCENES_RUN["epochs"],
                   help=f"epochs on the biased scenes (default {SCENES_RUN['epochs']})")
    p.add_argument("--scenes-per-class", type=int, default=SCENES_RUN["per_class"],
                   help=f"training images per class of the biased scenes (default {SCENES_RUN['per_class']})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    scenes_run = {"epochs": args.scenes_epochs, "per_class": args.scenes_per_class}
    work = args.out / "work"
    jobs = []
    for dataset in args.datasets:
        slug = dataset.replace(" ", "_")
        run = scenes_run if dataset in SCENES else {"epochs": args.epochs, "per_class": args.per_class}
        data = prepare_dataset(dataset, work / "data" / slug, per_class=run["per_class"],
                               per_class_test=args.per_class_test)
        for seed in args.seeds:
            for i, (method, settings) in enumerate(METHODS.items()):
                jobs.append(Job(method, dataset, str(data), str(work / "runs" / slug / f"seed{seed}" / f"m{i}"),
                                {"arch": "small", "epochs": run["epochs"], "seed": seed, **settings}))
    start = time.perf_counter()
    records = run_jobs(jobs, workers=args.workers, progress=not args.quiet)
    minutes = (time.perf_counter() - start) / 60
    run_minutes = sum(r["train_seconds"] for r in records) / 60
    rows = summarise(records)
    runs = [f"{', '.join(names)}: {run['epochs']} epochs, {run['per_class']} training images per class"
            for names, run in ((sorted(set(args.datasets) - set(SCENES)), {"epochs": args.epochs,
                                                                           "per_class": args.per_class}),
                               (sorted(set(args.datasets) & set(SCENES)), scenes_run)) if names]
    text = (f"# Background bias: every method, every data set\n\nSmallCNN, batch 32 ({'; '.join(runs)}), "
            "the trainer's defaults; seeds "
            f"{', '.join(map(str, args.seeds))} (mean ± std); accuracy (%) on each test split "
            f"({records[0]['splits'][SPLITS[0]]['images']} images each), the share of the predicted class's |LRP| "
            f"outside the mask on test_confounding (%), and seconds per epoch (median, one thread). {len(records)} "
            f"runs, {run_minutes:.0f} min of training in all, {minutes:.0f} min for this call (finished runs are "
            "read back, not trained again).\n\n" + table(rows) + "\n![compare](compare.png)\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(text)
    (args.out / "compare.json").write_text(json.dumps({"epochs": args.epochs, "seeds": args.seeds,
                                                       "per_class": args.per_class, "rows": rows,
                                                       "runs": records}, indent=2) + "\n")
    plot(rows, args.out / "compare.png")
    print(text)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
