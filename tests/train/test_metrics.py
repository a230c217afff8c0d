"""Background-relevance fraction, the epoch meter and the metrics files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from isnet_kernels.isnet.loss import heatmap_loss
from isnet_kernels.train import COLUMNS, Meter, background_fraction, write_metrics


def test_background_fraction_by_hand() -> None:
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    assert background_fraction(torch.ones(1, 1, 4, 4), mask).tolist() == [0.75]
    h = torch.zeros(1, 1, 4, 4)
    h[0, 0, 0, 0], h[0, 0, 3, 3] = 1.0, -3.0  # signs do not matter: |H|
    assert background_fraction(h, mask).tolist() == [0.75]
    assert background_fraction(torch.zeros(1, 1, 4, 4), mask).tolist() == [0.0]  # no relevance: nothing outside


def test_background_fraction_resizes_the_mask_like_the_loss() -> None:
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 0, 0] = 1  # one fine pixel makes its whole 2x2 cell foreground at 4x4
    mask[1, 0, 4:, 4:] = 1
    h = torch.rand(2, 3, 2, 4, 4) + 0.1  # (B, M, C, h, w): all maps of an image together
    got = background_fraction(h, mask)
    cell = torch.zeros(2, 1, 1, 4, 4)
    cell[0, ..., 0, 0] = 1
    cell[1, ..., 2:, 2:] = 1
    expected = (h * (1 - cell)).sum((1, 2, 3, 4)) / h.sum((1, 2, 3, 4))
    torch.testing.assert_close(got, expected)
    # the loss's raw foreground relevance F is the complement: sum |H| * mask = (1 - fraction) * sum |H|
    one = h[:, :1]
    parts = heatmap_loss(one, mask, B=1.0, A=0.0, C1=1e6, C2=1e6)  # fg term (min(F/C1,1) - 1)^2 only
    F = (1 - background_fraction(one, mask)) * one.sum((1, 2, 3, 4))
    torch.testing.assert_close(parts.foreground, ((F / 1e6 - 1) ** 2).mean())


def test_meter_means_and_state() -> None:
    m = Meter(("loss", "accuracy"))
    m.add("loss", torch.tensor(2.0), 4)
    m.add("loss", 1.0, 2)
    m.add_sum("accuracy", torch.tensor(3), 6)
    assert m.means() == pytest.approx({"loss": 10 / 6, "accuracy": 0.5})
    copy = Meter(("loss", "accuracy"))
    copy.load_state_dict(m.state_dict())
    m.add("loss", 5.0, 1)  # the state was a copy
    assert copy.means() == pytest.approx({"loss": 10 / 6, "accuracy": 0.5})
    assert math.isnan(Meter(("x",)).means()["x"])
    with pytest.raises(ValueError, match="names differ"):
        Meter(("x",)).load_state_dict(m.state_dict())


def test_write_metrics(tmp_path: Path) -> None:
    rows = [dict.fromkeys(COLUMNS, 0.5) | {"epoch": 1, "val_accuracy": math.nan}]
    csv_path, json_path = write_metrics(rows, tmp_path)
    with open(csv_path) as f:
        (row,) = list(csv.DictReader(f))
    assert tuple(row) == COLUMNS and row["epoch"] == "1"
    assert json.loads(json_path.read_text())[0]["val_accuracy"] is None  # JSON has no NaN
