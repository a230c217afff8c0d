"""The trainer end to end: files of a run, exact resume at an epoch boundary and in the middle of an epoch, Ctrl-C."""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import pytest
import torch

from isnet_kernels.models import UnknownModelError
from isnet_kernels.train import COLUMNS, TrainConfig, Trainer, TrainError, load_checkpoint, load_run, train

from .helpers import TinyNet


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), arch="small", model_kwargs={"width": 2}, epochs=2, batch_size=4,
                progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


def _net() -> TinyNet:
    """The same initial weights every time; with dropout, so the torch RNG state matters for resuming."""
    torch.manual_seed(1)
    return TinyNet(dropout=0.5)


def _assert_same_state(a: dict, b: dict) -> None:
    """Model (parameters and buffers) and optimizer (momentum buffers) equal bit for bit."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]), k


def _rows_without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_two_epochs_write_metrics_and_checkpoints(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(_config(tiny_data, run))
    assert not result.interrupted and result.epochs_done == 2
    for name in ("config.json", "metrics.csv", "metrics.json", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*tmp*")), "temporary checkpoint files left behind"

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    data = json.loads((run / "metrics.json").read_text())
    assert len(data) == 2 and set(COLUMNS) <= set(data[0])
    for row in data:
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1
        assert 0 < row["val_background_fraction"] < 1  # the biased images have relevance on both sides
        assert row["train_heatmap"] > 0  # the ISNet loss was trained
        assert math.isclose(row["train_loss"], 0.3 * row["train_classification"] + 0.7 * row["train_heatmap"],
                            rel_tol=1e-6)

    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["step"] == 0 and len(last["history"]) == 2
    # the saved configuration holds the task found in the data (class folders: one class per image)
    assert TrainConfig.from_dict(last["config"]) == _config(tiny_data, run).replace(task="multiclass")
    best = load_checkpoint(run / "best.pt")
    assert best["best"] == max(r["val_accuracy"] for r in data)
    loaded = load_run(run, "last")
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, last["model"][k])
    assert not loaded.model.training


def test_plain_classifier_reports_background_fraction(tiny_data: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_data, tmp_path / "plain", variant="none", epochs=1))
    row = result.history[0]
    assert row["train_heatmap"] == 0 and row["train_loss"] == row["train_classification"]
    assert 0 < row["val_background_fraction"] < 1

    alone = train(_config(tiny_data, tmp_path / "noval", variant="none", epochs=1, val_split=""))
    assert math.isnan(alone.history[0]["val_accuracy"]) and alone.best_val_accuracy is None
    assert (tmp_path / "noval" / "last.pt").is_file() and not (tmp_path / "noval" / "best.pt").exists()


def test_resume_equals_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    # dropout (torch RNG) and the stochastic variant (its own generator) make every RNG state matter
    # extending a run keeps the steps it has taken only under a constant learning rate (a cosine decays over epochs)
    kw = dict(variant="stochastic", lr_schedule="constant")
    straight = train(_config(tiny_data, tmp_path / "a", **kw), model=_net())
    first = train(_config(tiny_data, tmp_path / "b", epochs=1, **kw), model=_net())
    assert first.epochs_done == 1
    resumed = train(_config(tiny_data, tmp_path / "b", epochs=2, **kw), model=_net(), resume=True)
    assert resumed.epochs_done == 2
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))
    assert _rows_without_time(straight.history) == _rows_without_time(resumed.history)


def test_interrupt_in_an_epoch_saves_and_resumes_exactly(tiny_data: Path, tmp_path: Path) -> None:
    kw = dict(variant="stochastic")
    train(_config(tiny_data, tmp_path / "a", **kw), model=_net())

    def interrupt(trainer: Trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):
            raise KeyboardInterrupt

    cut = train(_config(tiny_data, tmp_path / "b", **kw), model=_net(), callbacks=[interrupt])
    assert cut.interrupted and (cut.epochs_done, cut.step) == (1, 2)
    saved = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2) and len(saved["history"]) == 1
    resumed = train(_config(tiny_data, tmp_path / "b", **kw), model=_net(), resume=True)
    assert not resumed.interrupted
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))
    straight = load_checkpoint(tmp_path / "a" / "last.pt")["history"]
    assert _rows_without_time(straight) == _rows_without_time(resumed.history)


def test_ctrl_c_stops_at_a_batch_boundary(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def press_ctrl_c(trainer: Trainer, epoch: int, step: int) -> None:
        if step == 1:
            signal.raise_signal(signal.SIGINT)  # the trainer's handler asks the loop to stop

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    result = Trainer(_config(tiny_data, tmp_path / "run"), callbacks=[press_ctrl_c]).fit()
    assert result.interrupted and (result.epochs_done, result.step) == (0, 1)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1
    out = capsys.readouterr().out
    assert "--resume" in out and "interrupted at epoch 1, batch 1" in out
    assert signal.getsignal(signal.SIGINT) is before  # the handler was put back


def test_tune_cut_chooses_the_loss_bounds(tiny_data: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(tiny_data, tmp_path / "run", epochs=1, tune_cut=1, batch_stats="live"))
    result = trainer.fit()
    assert trainer.isnet.lrp.batch_stats == "live"
    levels = {"input", *trainer.isnet.supervised}  # the default supervises the SmallCNN's max-pools too
    assert len(levels) == 4 and isinstance(result.C1, dict) and set(result.C1) == levels
    assert min(result.C1.values()) > 0
    assert result.C2["input"] >= result.C1["input"] and result.C1["input"] != 1.0
    assert trainer.loss_fn.C1 == result.C1 and trainer.loss_fn.C2 == result.C2  # the loss trained with them
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["C1"] == result.C1 and load_checkpoint(tmp_path / "run" / "last.pt")["config"]["C2"] == result.C2


def test_run_directory_errors(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(tiny_data, run, epochs=1, variant="none"))
    with pytest.raises(TrainError, match="already holds a checkpoint.*--resume"):
        train(_config(tiny_data, run, epochs=1, variant="none"))
    with pytest.raises(TrainError, match=r"--lr 0\.15 -> 0\.5.*may only change"):
        train(_config(tiny_data, run, epochs=2, variant="none", lr=0.5), resume=True)
    with pytest.raises(TrainError, match="cannot resume.*does not exist"):
        train(_config(tiny_data, tmp_path / "new"), resume=True)
    with pytest.raises(TrainError, match=r"no split 'valid'.*\['test_biased', 'test_unbiased', 'train', 'val'\]"):
        train(_config(tiny_data, tmp_path / "x", val_split="valid"))


def test_world_size_without_torchrun_is_an_error(tiny_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(TrainError, match="MASTER_ADDR.*launch with torchrun"):
        train(_config(tiny_data, tmp_path / "run"))


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown architecture 'resnt18' \(--arch\); did you mean resnet18"):
        TrainConfig(arch="resnt18")
    with pytest.raises(TrainError, match="unknown variant"):
        TrainConfig(variant="fast")
    with pytest.raises(TrainError, match="P must be a number in"):
        TrainConfig(P=1.5)
    with pytest.raises(TrainError, match="drop --tune-cut"):
        TrainConfig(variant="none", tune_cut=2)
    with pytest.raises(TrainError, match=r"batch_stats must be one of \('detached', 'live'\), got 'frozen'"):
        TrainConfig(batch_stats="frozen")


def test_config_defaults_and_presets() -> None:
    c = TrainConfig()
    assert (c.preset, c.momentum, c.clip) == ("default", 0.9, 1.0)
    assert (c.P, c.d, c.E, c.A, c.B, c.C1, c.C2, c.foreground) == (0.7, 0.9, 1.0, 1.0, 3.0, 1.0, 1000.0, "hybrid")
    assert (c.select, c.batch_stats, c.first_layer, c.deep_supervision) == ("label", "live", "epsilon", "auto")
    assert (c.lr, c.lr_schedule) == (0.15, "cosine")
    assert TrainConfig.from_dict(c.to_dict()) == c
    paper = TrainConfig(preset="paper")
    assert (paper.select, paper.batch_stats, paper.first_layer, paper.deep_supervision) == ("lowest", "detached",
                                                                                            "zb", False)
    assert (paper.lr, paper.lr_schedule) == (0.01, "constant")
    assert (paper.P, paper.C2) == (c.P, 25.0)  # the loss constants are the authors' in both, but C2 (lifted)
    assert TrainConfig(C2=40.0).C2 == TrainConfig(preset="paper", C2=40.0).C2 == 40.0
    # a configuration saved before C2 was a preset's setting keeps the value it trained with
    assert TrainConfig.from_dict({**c.to_dict(), "C2": 25.0}).C2 == 25.0
    # an explicit value wins over the preset's, and the saved configuration keeps it
    mixed = TrainConfig(preset="paper", select="label", lr=0.2)
    assert (mixed.select, mixed.lr, mixed.batch_stats) == ("label", 0.2, "detached")
    assert TrainConfig.from_dict(mixed.to_dict()) == mixed
    # a configuration saved before presets existed keeps the constant rate it trained with
    old = {k: v for k, v in c.to_dict().items() if k not in ("preset", "lr_schedule", "threads")}
    assert TrainConfig.from_dict(old).lr_schedule == "constant"
    with pytest.raises(TrainError, match="unknown preset 'fast'.*default, paper"):
        TrainConfig(preset="fast")
    with pytest.raises(TrainError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")


def test_cosine_schedule_decays_per_step_to_zero(tiny_data: Path, tmp_path: Path) -> None:
    """lr_t = lr (1 + cos(pi t / T)) / 2 at step t of T, set before each step."""
    seen: list[float] = []

    def record(trainer: Trainer, epoch: int, step: int) -> None:
        seen.append(trainer.optimizer.param_groups[0]["lr"])

    train(_config(tiny_data, tmp_path / "cos", epochs=2, lr=0.1, lr_schedule="cosine"), model=_net(),
          callbacks=[record])
    steps = len(seen)
    expected = [0.1 * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]
    assert steps >= 4 and seen == pytest.approx(expected, rel=1e-12)


def test_threads_set_for_the_run_and_restored(tiny_data: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    train(_config(tiny_data, tmp_path / "t", epochs=1, threads=1 if before > 1 else 2), model=_net(),
          callbacks=[lambda trainer, epoch, step: seen.append(torch.get_num_threads())])
    assert seen and set(seen) == {1 if before > 1 else 2} and torch.get_num_threads() == before
    with pytest.raises(TrainError, match="threads must be a positive int"):
        TrainConfig(threads=0)


def test_default_threads_leave_a_core_to_each_data_loader_worker(tiny_data: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: dict[int, set[int]] = {}
        for workers in (0, 1, 2):
            seen[workers] = set()
            train(_config(tiny_data, tmp_path / f"w{workers}", epochs=1, num_workers=workers, val_split=""),
                  callbacks=[lambda trainer, epoch, step, w=workers: seen[w].add(torch.get_num_threads())])
        assert seen == {0: {2}, 1: {1}, 2: {1}}  # intra-op threads and workers together never exceed the cores
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_importing_the_package_makes_waiting_threads_yield_their_core() -> None:
    import os
    import subprocess
    import sys

    code = "import os, isnet_kernels; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "ACTIVE"  # the user's choice stays
