"""What makes the selective ISNet learn the biased digits: the demo's ISNet with its three choices switched.

The ISNet of ``python/biased_digits.py`` differs from the reference settings (docs/isnet.md#variants,
docs/rules.md#batch_stats) in three choices; this
script trains the ISNet once per combination below, with everything else as in the demo (same data, seed, SGD,
epochs, loss parameters), and evaluates each on the three test splits:

- ``select``: the class each image's selective map explains, the lowest logit (the reference code) or the label;
- ``batch_stats``: train-mode BatchNorm statistics detached in the heatmap's gradient (the reference) or live;
- ``deep_supervision``: the relevance after each max-pool penalised too, or only the input heatmap.

It writes ``OUT/ablation.md`` (the table), ``OUT/ablation.json`` and ``OUT/ablation.png`` (accuracy per split and
setting). Usage::

    python python/biased_digits_ablation.py --out demo/ [--epochs 12] [--seed 0]

The data set in ``OUT/data`` is reused when the demo wrote it already.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from biased_digits import SPLITS, prepare_data, run_config  # noqa: E402  (the demo script beside this one)

from isnet_kernels.train import evaluate_run, train  # noqa: E402

#: (name, select, batch_stats, deep_supervision), from the reference settings to the demo's.
SETTINGS: tuple[tuple[str, str, str, bool], ...] = (
    ("reference (lowest, detached)", "lowest", "detached", False),
    ("label", "label", "detached", False),
    ("live statistics", "lowest", "live", False),
    ("label + live", "label", "live", False),
    ("label + deep supervision", "label", "detached", True),
    ("live + deep supervision", "lowest", "live", True),
    ("label + live + deep supervision (demo)", "label", "live", True),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo", help="output folder (data, runs/ablation, ablation.md/json/png)")
    p.add_argument("--epochs", type=int, default=12, help="ISNet epochs of every setting (default 12, as the demo)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05, as the demo)")
    p.add_argument("--per-class", type=int, default=300, help="training images per class (default 300)")
    p.add_argument("--per-class-test", type=int, default=50, help="test images per class and split (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: accuracy per split and the background-relevance fraction on test_confounding, per setting."""
    lines = ["| ISNet setting | select | BatchNorm statistics | deep supervision | test_biased | test_unbiased | "
             "test_confounding | background relevance (confounding) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = [f"{100 * r['splits'][s]['accuracy']:.1f}%" for s in SPLITS]
        bkg = f"{100 * r['splits']['test_confounding']['background_fraction']:.1f}%"
        lines.append(f"| {r['name']} | {r['select']} | {r['batch_stats']} | "
                     f"{'yes' if r['deep_supervision'] else 'no'} | " + " | ".join(acc) + f" | {bkg} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: accuracy on each test split, one group per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.6))
    width = 0.8 / len(SPLITS)
    for j, split in enumerate(SPLITS):
        xs = [i + (j - (len(SPLITS) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * r["splits"][split]["accuracy"] for r in rows], width, label=split)
    ax.set_xticks(range(len(rows)), [r["name"].replace(" (", "\n(").replace(" + deep", "\n+ deep") for r in rows],
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.axhline(10, color="grey", lw=0.8, ls=":")  # chance
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Selective ISNet on biased digits: accuracy per test split", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    prepare_data(data, args.per_class, args.per_class_test, args.seed, not args.quiet)
    rows = []
    for i, (name, select, batch_stats, deep) in enumerate(SETTINGS):
        run = out / "runs" / "ablation" / f"{i}"
        shutil.rmtree(run, ignore_errors=True)
        print(f"== {i + 1}/{len(SETTINGS)}: {name}")
        t = time.perf_counter()
        train(run_config(data, run, "selective", args.epochs, lr=args.lr, seed=args.seed, progress=not args.quiet,
                         first_layer="epsilon", select=select, batch_stats=batch_stats, deep_supervision=deep))
        seconds = time.perf_counter() - t
        splits = evaluate_run(run, data, list(SPLITS), which="last")["splits"]
        rows.append({"name": name, "select": select, "batch_stats": batch_stats, "deep_supervision": deep,
                     "splits": splits, "train_seconds": seconds})
    text = (f"# Selective ISNet on biased digits: the demo's choices switched\n\n{args.epochs} epochs each, SGD lr "
            f"{args.lr}, seed {args.seed}, epsilon first layer; accuracy on each test split, "
            f"{rows[0]['splits'][SPLITS[0]]['images']} images each.\n\n" + table(rows)
            + "\n![ablation](ablation.png)\n")
    (out / "ablation.md").write_text(text)
    (out / "ablation.json").write_text(json.dumps({"epochs": args.epochs, "lr": args.lr, "seed": args.seed,
                                                   "rows": rows}, indent=2))
    plot(rows, out / "ablation.png")
    print(text)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
