"""The ISNet against a background shortcut: biased handwritten digits, a plain classifier and a selective ISNet.

A complete experiment on the CPU (a few minutes on 2 cores):

1. ``isnet data biased-digits``: scikit-learn's real handwritten digits on a 32x32 canvas, with a bright 3x3
   artefact in the background whose position encodes the class (train, val, test_biased); the same test digits
   without it (test_unbiased) and with the artefact of another class (test_confounding);
2. train ``isnet_kernels.models.SmallCNN`` twice with the same seed and the trainer's defaults, side by side (two
   processes of one thread each, deterministic algorithms: the figures depend only on the seed): a plain
   classifier (cross-entropy) and a selective ISNet (cross-entropy plus the heatmap loss, P = 0.7) with the
   package's defaults: it explains each image's label class, penalises the relevance after each max-pool too
   (deep supervision) and keeps the BatchNorm statistics live in the heatmap's gradient (``--preset paper``: the
   authors' settings instead; ``python/defaults_study.py`` measures each choice);
3. evaluate both on the three test splits: accuracy and background-relevance fraction (the share of the
   predicted class's |LRP| outside the digit's mask);
4. write ``OUT/report.md`` (the table, the settings, the times) and ``OUT/heatmaps.png`` (confounding test
   images, each with the plain classifier's heatmap and the ISNet's).

A shortcut learner is perfect on test_biased and collapses on test_confounding; the ISNet keeps its relevance on
the digit, so its confounding accuracy stays near its unbiased accuracy.

Usage::

    python python/biased_digits.py --out demo/ [--plain-epochs 3] [--isnet-epochs 12] [--seed 0] [--preset paper]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

import isnet_kernels as ik
from isnet_kernels import ISNet
from isnet_kernels.data import MaskedImageFolder, write_biased_digits
from isnet_kernels.isnet.presets import PRESETS
from isnet_kernels.models import SmallCNN
from isnet_kernels.plot import save_heatmap_grid
from isnet_kernels.train import TrainConfig, environment, load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment_grid import Job, run_jobs  # noqa: E402  (beside this script)

SPLITS = ("test_biased", "test_unbiased", "test_confounding")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo", help="output folder (data, runs, report.md, heatmaps.png)")
    p.add_argument("--plain-epochs", type=int, default=3, help="epochs of the plain classifier (default 3)")
    p.add_argument("--isnet-epochs", type=int, default=12, help="epochs of the ISNet (default 12)")
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="the ISNet's settings: the package's defaults, or the authors' (paper)")
    p.add_argument("--per-class", type=int, default=300, help="training images per class (default 300)")
    p.add_argument("--per-class-test", type=int, default=50, help="test images per class and split (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=8, help="confounding test images in heatmaps.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def prepare_data(data: Path, per_class: int, per_class_test: int, seed: int, progress: bool) -> bool:
    """Write the biased-digits set to ``data`` unless a complete one is there; returns whether it was reused."""
    if (data / "info.json").is_file():
        print(f"using the data set in {data}")
        return True
    shutil.rmtree(data, ignore_errors=True)
    write_biased_digits(data, per_class_train=per_class, per_class_val=max(2, per_class // 15),
                        per_class_test=per_class_test, seed=seed, progress=progress)
    return False


def figure(out: Path, data: Path, runs: dict[str, Path], n: int, first_layer: str) -> Path:
    """Confounding test images with the predicted class's heatmap of each model, and the mask outline."""
    ds = MaskedImageFolder(data, "test_confounding")
    step = max(1, len(ds) // n)
    items = [ds[i * step] for i in range(n)]
    x = torch.stack([it[0] for it in items])
    masks = torch.stack([it[1] for it in items])
    maps, titles = [], [f"digit {it[2]}" for it in items]
    for name, path in runs.items():
        model = load_run(path).model
        with torch.no_grad():
            pred = model(x).argmax(1)
        maps.append(ik.explain(model, x, pred, first_layer=first_layer))
        titles = [f"{t}, {name}: {int(p)}" for t, p in zip(titles, pred)]
    heat = torch.stack(maps, 1)  # (N, 2, C, H, W): plain, ISNet
    return save_heatmap_grid(x, heat, out / "heatmaps.png", titles=titles, masks=masks, cell_size=1.6)


def computed_on(env: dict[str, Any]) -> str:
    """One line of what the figures were computed with (float results may differ from machine to machine)."""
    return (f"Computed on: {env.get('cpu') or 'an unknown CPU'} ({env.get('cpu_capability')} kernels), "
            f"{env.get('threads')} thread(s) per run, torch {env.get('torch')}, oneDNN {env.get('onednn')}, numpy "
            f"{env.get('numpy')}, isnet-kernels {env.get('isnet_kernels')}.")


def report(out: Path, results: dict[str, dict[str, Any]], settings: dict[str, Any], seconds: dict[str, float],
           env: dict[str, Any] | None = None) -> str:
    lines = ["# Biased digits: plain classifier vs selective ISNet", "",
             "Accuracy (background-relevance fraction: share of the predicted class's |LRP| outside the digit's "
             f"mask) on the three test splits, {results['plain'][SPLITS[0]]['images']} images each:", "",
             "| split | plain accuracy | ISNet accuracy | plain background relevance | ISNet background relevance |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for split in SPLITS:
        p, i = results["plain"][split], results["isnet"][split]
        lines.append(f"| {split} | {100 * p['accuracy']:.1f}% | {100 * i['accuracy']:.1f}% | "
                     f"{100 * p['background_fraction']:.1f}% | {100 * i['background_fraction']:.1f}% |")
    lines += ["", "![heatmaps](heatmaps.png)", "",
              "Each confounding test image (its artefact is another class's) with the heatmap of the predicted "
              "class: map 0 the plain classifier's, map 1 the ISNet's, then map 0 over the image with the mask's "
              "outline.",
              "", "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
              "Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".",
              *([computed_on(env)] if env else [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    data, runs = out / "data", {"plain": out / "runs" / "plain", "isnet": out / "runs" / "isnet"}
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    prepare_data(data, args.per_class, args.per_class_test, args.seed, not args.quiet)
    seconds["data"] = time.perf_counter() - t
    base = {"arch": "small", "batch_size": 32, "seed": args.seed, "preset": args.preset}
    jobs = [Job("plain", "biased digits", str(data), str(runs["plain"]),
                {**base, "variant": "none", "epochs": args.plain_epochs}),
            Job("isnet", "biased digits", str(data), str(runs["isnet"]),
                {**base, "variant": "selective", "epochs": args.isnet_epochs})]
    print(f"== training the plain classifier ({args.plain_epochs} epochs) and the ISNet ({args.isnet_epochs} "
          "epochs) side by side, one thread each")
    records = dict(zip(runs, run_jobs(jobs, workers=2, progress=not args.quiet)))
    results = {name: r["splits"] for name, r in records.items()}
    seconds.update({name: r["train_seconds"] for name, r in records.items()})
    config = TrainConfig.from_dict(json.loads((runs["isnet"] / "config.json").read_text()))
    figure(out, data, runs, args.num_images, config.first_layer)
    supervised = ISNet(SmallCNN(), deep_supervision=config.deep_supervision).supervised
    settings = {"model": "SmallCNN (width 16)", "preset": config.preset, "SGD lr": config.lr,
                "schedule": config.lr_schedule, "momentum": config.momentum, "gradient clip": config.clip,
                "batch": config.batch_size, "plain epochs": args.plain_epochs, "ISNet epochs": args.isnet_epochs,
                "ISNet": f"selective ({config.select} class), P {config.P}, d {config.d}, E {config.E}, A {config.A}, "
                f"B {config.B}, C1 {config.C1}, C2 {config.C2}, {config.foreground}",
                "deep supervision": ", ".join(supervised) if supervised else "off",
                "BatchNorm statistics in the heatmap's gradient": config.batch_stats,
                "first-layer rule": config.first_layer, "seed": args.seed, "threads per run": 1}
    # what the figures were computed with (the CPU's instruction set, threads, versions): another machine's
    # figures may differ in the last digits, and this tells why
    env = records["isnet"].get("environment") or {**environment(), "threads": 1}
    text = report(out, results, settings, seconds, env)
    (out / "report.md").write_text(text)
    summary = {"results": results, "settings": settings, "seconds": seconds, "environment": env}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    print(text)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
