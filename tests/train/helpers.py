"""Tiny masked image folders and models for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


def write_tiny_folder(root: Path, *, size: int = 8, classes: int = 2, counts: dict[str, int] | None = None,
                      seed: int = 0) -> Path:
    """A masked image folder: grey ``size`` x ``size`` PNGs, the foreground a centred square whose brightness
    pattern depends on the class, a class-coding dot in the top-left corner (background). ``counts``: images per
    class and split."""
    counts = counts or {"train": 8, "val": 4, "test_biased": 2, "test_unbiased": 2}
    rng = np.random.default_rng(seed)
    lo, hi = size // 4, size - size // 4
    for split, n in counts.items():
        for c in range(classes):
            (root / "images" / split / str(c)).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / str(c)).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                img = rng.uniform(0, 40, (size, size))
                mask = np.zeros((size, size), dtype=np.uint8)
                mask[lo:hi, lo:hi] = 255
                img[lo:hi, lo + c % (hi - lo)] += 200  # class-coding stripe in the foreground
                if split != "test_unbiased":
                    img[0, c % size] = 255  # class-coding dot in the background
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / split / str(c) /
                                                                             f"{k:03d}.png")
                Image.fromarray(mask).save(root / "masks" / split / str(c) / f"{k:03d}.png")
    return root


class TinyNet(nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-AvgPool-(Dropout)-Linear, no BatchNorm: with ``dropout=0`` a step on a batch
    split over processes equals one step on the whole batch (the DDP comparison)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 4, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(self.drop(torch.flatten(x, 1)))
