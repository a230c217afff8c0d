"""Explain a handwritten-digit classifier with LRP heatmaps.

A complete, small experiment that runs on a laptop CPU in well under a minute:

1. load scikit-learn's handwritten digits (1797 real 8x8 scans, grey levels 0..16, shipped with scikit-learn,
   no download), scale them to [0, 1] and upsample them to 32x32 (bilinear);
2. split them 80/20, stratified, with a fixed seed, and train ``isnet_kernels.models.SmallCNN`` for a few
   epochs (Adam, one-cycle learning rate);
3. report the accuracy on the held-out 20%;
4. explain the predicted class of 8 held-out digits with ``isnet_kernels.explain`` (epsilon rule, Z^B rule at
   the input layer with pixel bounds [0, 1]) and write

   - ``OUT/heatmaps.png``: each digit next to its heatmap (red: evidence for the predicted class, blue:
     evidence against it);
   - ``OUT/summary.json``: the accuracy and, per explained digit, its label, the predicted class, the logit
     of that class and the sum of its heatmap. LRP starts from the logit and conserves relevance up to what
     the biases and the stabiliser absorb, so the two sums are close but not equal.

Usage::

    python python/explain_digits.py --out demo/ [--epochs 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from tqdm import tqdm

import isnet_kernels
from isnet_kernels.models import SmallCNN
from isnet_kernels.plot import save_heatmap_grid

IMAGE_SIZE = 32


def load_data(seed: int, test_fraction: float = 0.2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The digits as (N, 1, 32, 32) float tensors in [0, 1] with int64 labels, split into train and test.

    Parameters
    ----------
    seed : int
        Seed of the stratified split.
    test_fraction : float, default 0.2
        Share of the images held out for testing.

    Returns
    -------
    x_train, y_train, x_test, y_test : Tensor
    """
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)  # bilinear interpolation stays in range; clamp guards rounding
    labels = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test]


def train(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int, batch_size: int, lr: float, seed: int
) -> list[float]:
    """Train ``model`` with cross-entropy, Adam and a one-cycle learning rate peaking at ``lr``.

    Returns the mean training loss of each epoch. The one-cycle schedule (short warm-up, cosine decay to
    almost zero) makes a few epochs enough and leaves BatchNorm's running statistics settled for evaluation.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    losses = []
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc="training", unit="batch", file=sys.stderr) as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for step in range(steps_per_epoch):
                batch = order[step * batch_size : (step + 1) * batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
                bar.update(1)
            losses.append(total / len(x))
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo/)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batches")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (default: 3e-3)")
    parser.add_argument("--num-images", type=int, default=8, help="held-out digits to explain (default: 8)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the figures then depend "
                        "only on the seed, not on the machine's core count)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.num_images < 1 or args.threads < 1:
        parser.error("--epochs, --batch-size, --num-images and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the experiment; return the summary that is also written to ``OUT/summary.json``."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    x_train, y_train, x_test, y_test = load_data(args.seed)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of {IMAGE_SIZE}x{IMAGE_SIZE}")

    model = SmallCNN(num_classes=10, in_channels=1)
    losses = train(model, x_train, y_train, args.epochs, args.batch_size, args.lr, args.seed)
    test_accuracy = accuracy(model, x_test, y_test)
    print(f"test accuracy: {test_accuracy:.4f} ({len(x_test)} images, {args.epochs} epochs)")

    # Explain the predicted class of the first held-out digits.
    model.eval()
    x = x_test[: args.num_images]
    y = y_test[: args.num_images]
    heatmaps = isnet_kernels.explain(model, x, target=None, eps=1e-2, first_layer="zb", bounds=(0.0, 1.0))
    heatmaps = heatmaps.detach()
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(-1)
    predicted_logit = logits.gather(1, predicted[:, None])[:, 0]
    relevance_sum = heatmaps.flatten(1).sum(1)

    args.out.mkdir(parents=True, exist_ok=True)
    titles = [f"label {int(t)}, predicted {int(p)}" for t, p in zip(y.tolist(), predicted.tolist(), strict=True)]
    png = save_heatmap_grid(x, heatmaps, args.out / "heatmaps.png", titles=titles, per_row=4)

    summary: dict[str, Any] = {
        "test_accuracy": test_accuracy,
        "num_train": len(x_train),
        "num_test": len(x_test),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_loss": losses,
        "lrp": {"eps": 1e-2, "first_layer": "zb", "bounds": [0.0, 1.0], "target": "predicted class"},
        "images": [
            {
                "index": i,
                "label": int(y[i]),
                "predicted": int(predicted[i]),
                "logit": float(predicted_logit[i]),
                "relevance_sum": float(relevance_sum[i]),
            }
            for i in range(len(x))
        ],
        "seconds": round(time.perf_counter() - start, 2),
    }
    with open(args.out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    for item in summary["images"]:
        print(f"  digit {item['index']}: label {item['label']}, predicted {item['predicted']}, "
              f"logit {item['logit']:8.3f}, relevance sum {item['relevance_sum']:8.3f}")
    print(f"wrote {png} and {args.out / 'summary.json'} in {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
