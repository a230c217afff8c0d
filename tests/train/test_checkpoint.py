"""Atomic checkpoint files, RNG states, and the errors of reading checkpoints."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from isnet_kernels.train import TrainError, find_checkpoint, load_checkpoint, save_checkpoint
from isnet_kernels.train.checkpoint import FORMAT, capture_rng, restore_rng


def _draws(generator: torch.Generator) -> tuple:
    return (torch.rand(3).tolist(), np.random.rand(2).tolist(), random.random(),  # noqa: NPY002
            torch.rand(2, generator=generator).tolist())


def test_rng_states_survive_a_checkpoint(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(7)
    state = capture_rng(g)
    first = _draws(g)
    save_checkpoint({"format": FORMAT, "model": {}, "rng": [state]}, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")  # weights_only: plain values and tensors only
    _draws(g)
    restore_rng(loaded["rng"][0], g)
    assert _draws(g) == first


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"format": FORMAT, "model": {"w": torch.ones(2)}}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"format": FORMAT, "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_reading_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="does not exist; train a run first"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(TrainError, match="not an isnet training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint({"format": FORMAT, "model": {}}, tmp_path / "last.pt")
    assert find_checkpoint(tmp_path, "best") == tmp_path / "last.pt"  # best.pt absent: last.pt
    with pytest.raises(TrainError, match="does not exist"):
        find_checkpoint(tmp_path / "nowhere")
