"""``isnet train --tensorboard``: the event files hold every number of metrics.csv per epoch and a heatmap grid of
fixed validation images, as TensorBoard's own reader reads them back; a resumed run appends its epochs."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from isnet_kernels import cli
from isnet_kernels.plot import heatmap_grid_array
from isnet_kernels.train.board import BOARD_DIR, GRID_TAG, Board

from ..optional import require

event_accumulator = require("tensorboard.backend.event_processing.event_accumulator")


def _read(folder: Path):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.IMAGES: 0,
                                                                          event_accumulator.SCALARS: 0})
    acc.Reload()
    return acc


def _args(data: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--arch", "small", "--model-arg", "width=2",
            "--epochs", str(epochs), "--batch-size", "8", "--device", "cpu", "--threads", "1", "--quiet", *extra]


def test_train_tensorboard_writes_metrics_and_heatmaps(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli.main(_args(tiny_data, run, 2, "--tensorboard")) == 0
    acc = _read(run / BOARD_DIR)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    tags = set(acc.Tags()["scalars"])
    numbers = {k for k, v in rows[0].items() if k != "epoch" and v not in ("", None) and math.isfinite(float(v))}
    assert {"lr", "train_loss", "train_heatmap", "val_accuracy", "val_background_fraction", "seconds"} <= numbers
    assert tags == numbers
    for name in numbers:
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2], name
        for event, row in zip(events, rows):
            assert event.value == pytest.approx(float(row[name]), rel=1e-6, abs=1e-7), name
    images = acc.Images(GRID_TAG)
    assert [e.step for e in images] == [1, 2]
    # 8 validation images, one row each: image | mask | heatmap, each panel enlarged to 64 pixels (8 x 8 images)
    assert images[0].height == 8 * 64 + 7 * 2 and images[0].width == 3 * 64 + 2 * 2

    # a resumed run appends its epochs to the same folder
    assert cli.main(_args(tiny_data, run, 3, "--resume")) == 0
    acc = _read(run / BOARD_DIR)
    assert [e.step for e in acc.Scalars("val_accuracy")] == [1, 2, 3]
    assert [e.step for e in acc.Images(GRID_TAG)] == [1, 2, 3]


def test_train_without_the_flag_writes_no_events(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli.main(_args(tiny_data, run, 1)) == 0
    assert not (run / BOARD_DIR).exists()


def test_board_without_images_writes_scalars_only(tmp_path: Path) -> None:
    board = Board(tmp_path, images=None)
    board.write_epoch({"epoch": 1, "lr": 0.1, "val_loss": math.nan, "val_auroc": None, "train_loss": 2.5},
                      torch.nn.Linear(1, 1))
    board.close()
    acc = _read(tmp_path / BOARD_DIR)
    assert sorted(acc.Tags()["scalars"]) == ["lr", "train_loss"]  # NaN and None are left out
    assert acc.Tags()["images"] == []


def test_heatmap_grid_array_layout() -> None:
    images = torch.zeros(2, 1, 4, 4)
    images[1] = 1.0
    heat = torch.zeros(2, 1, 4, 4)
    heat[0, 0, 0, 0] = 1.0  # red
    heat[1, 0, 0, 0] = -1.0  # blue
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, :, 1:3, 1:3] = 1
    grid = heatmap_grid_array(images, heat, masks, min_cell=8, gap=1)
    assert grid.shape == (2 * 8 + 1, 3 * 8 + 2, 3) and grid.dtype == np.uint8
    assert (grid[0, 0] == 0).all() and (grid[9, 0] == 255).all()  # image 0 black, image 1 white
    assert (grid[0, 9] == 0).all() and (grid[2, 11] == 255).all()  # mask: background black, foreground white
    assert tuple(grid[0, 18]) == (255, 0, 0) and tuple(grid[9, 18]) == (0, 0, 255)
    assert (grid[8] == 255).all()  # the gap between rows


def test_tensorboard_missing_is_one_line_before_any_data_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    rc = cli.main(_args(tmp_path / "no-such-data", tmp_path / "run", 1, "--tensorboard"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "pip install 'isnet-kernels[tensorboard]'" in err and "without --tensorboard" in err
