"""Lightning's DDP strategy on 2 CPU processes (gloo): with a global batch split over the processes, one epoch
equals one process's epoch on the whole batches (a model without BatchNorm and dropout), the metrics are summed over
the processes, and the heatmap grid is written once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..optional import require

L = require("lightning")
event_accumulator = require("tensorboard.backend.event_processing.event_accumulator")

from .ddp_run import build  # noqa: E402

HERE = Path(__file__).resolve().parent


def test_ddp_two_processes_equal_one(tiny_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HERE / "ddp_run.py"), str(tiny_data), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    module, datamodule, trainer = build(tiny_data, None, devices=1)
    trainer.fit(module, datamodule)
    single = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for rank in ranks:
        for name, value in module.model.state_dict().items():
            torch.testing.assert_close(rank["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_background_fraction"):
            assert rank["metrics"][name] == pytest.approx(single[name], rel=1e-5, abs=1e-6), name

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={event_accumulator.IMAGES: 0})
    acc.Reload()
    assert len(acc.Images("heatmaps")) == 1  # rank 0 alone writes it
    assert "val_accuracy" in acc.Tags()["scalars"]
