"""The runner behind the example programs' grids (python/experiment_grid.py): one thread per run, deterministic
algorithms, so a run's result depends on its data, seed and settings only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from isnet_kernels.train import load_checkpoint

from .scripts import load_script


@pytest.mark.slow
def test_the_same_job_twice_at_once_gives_identical_weights(tmp_path: Path) -> None:
    grid = load_script("experiment_grid.py")
    data = grid.prepare_dataset("biased digits", tmp_path / "data", per_class=3, per_class_test=1)
    settings = {"arch": "small", "model_kwargs": {"width": 4}, "variant": "selective", "epochs": 2,
                "batch_size": 8, "seed": 5}
    jobs = [grid.Job("isnet", "biased digits", str(data), str(tmp_path / name), settings) for name in "ab"]
    a, b = grid.run_jobs(jobs, workers=2, progress=False)  # side by side, competing for the cores
    assert a["splits"] == b["splits"]
    wa, wb = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ha, hb = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in "ab")
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ha] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in hb]
    # another seed is another run (the comparison above could not pass by training nothing)
    other = grid.run_jobs([grid.Job("isnet", "biased digits", str(data), str(tmp_path / "c"),
                                    {**settings, "seed": 6})], workers=1, progress=False)[0]
    wc = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa) and other["settings"]["seed"] == 6


def test_jobs_sharing_a_run_folder_are_refused(tmp_path: Path) -> None:
    grid = load_script("experiment_grid.py")
    jobs = [grid.Job(m, "biased digits", str(tmp_path / "data"), str(tmp_path / "run"), {}) for m in "ab"]
    with pytest.raises(ValueError, match="share run folder"):
        grid.run_jobs(jobs, workers=1, progress=False)
