"""Two processes (gloo, CPU) with DistributedDataParallel against one process with the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from isnet_kernels.train import EpochSampler, TrainConfig, load_checkpoint, train

from .helpers import TinyNet


def _net() -> TinyNet:
    torch.manual_seed(3)
    return TinyNet(width=3)  # no BatchNorm, no dropout: the split batch must give the whole batch's step


def _config(data: Path, out: Path) -> dict:
    return dict(data=str(data), out=str(out), variant="selective", epochs=2, batch_size=4, lr=0.05, progress=False,
                device="cpu")


def _ctrl_c_on_rank0(trainer, epoch: int, step: int) -> None:
    if trainer.ctx.rank == 0 and (epoch, step) == (1, 1):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C seen by one process: both must stop at the same boundary


def _worker(rank: int, world: int, config: dict, port: int, mode: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    callbacks = [_ctrl_c_on_rank0] if mode == "interrupt" else []
    result = train(TrainConfig(**config), model=_net(), resume=mode == "resume", callbacks=callbacks)
    assert result.interrupted == (mode == "interrupt")
    assert not dist.is_initialized()  # the trainer left the process group it joined


def _spawn(config: dict, mode: str = "train") -> None:
    # spawn, not fork: forking a test process whose libraries have started threads (OpenMP, gloo) can leave a child
    # holding a lock no thread will release, an intermittent hang
    context = mp.start_processes(_worker, args=(2, config, _free_port(), mode), nprocs=2, start_method="spawn",
                                 join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the two training processes did not finish in 120 s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_epoch_sampler_is_distributed_sampler_and_splits_global_batches() -> None:
    data = list(range(22))
    for world in (1, 2):
        for epoch in (0, 3):
            for rank in range(world):
                mine = EpochSampler(len(data), seed=5, rank=rank, world_size=world)
                mine.set_epoch(epoch)
                ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=5)
                ref.set_epoch(epoch)
                assert list(mine) == list(ref) and len(mine) == len(ref)
    one = EpochSampler(20, seed=1).indices()
    ranks = [EpochSampler(20, seed=1, rank=r, world_size=2).indices() for r in (0, 1)]
    for k in range(5):  # per-process batch 2 = global batch 4
        assert sorted(ranks[0][2 * k:2 * k + 2] + ranks[1][2 * k:2 * k + 2]) == sorted(one[4 * k:4 * k + 4])
    s = EpochSampler(20, seed=1)
    s.skip(6)
    assert list(s) == one[6:] and len(s) == 14


def test_two_processes_equal_one_process(tiny_data: Path, tmp_path: Path) -> None:
    train(TrainConfig(**_config(tiny_data, tmp_path / "one")), model=_net())
    _spawn(_config(tiny_data, tmp_path / "two"))

    one = load_checkpoint(tmp_path / "one" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    init = _net().state_dict()
    assert two["world_size"] == 2 and len(two["rng"]) == 2  # both processes' RNG states, written by rank 0
    for k, v in one["model"].items():
        moved = (v - init[k]).abs().max()
        diff = (v - two["model"][k]).abs().max()
        assert moved > 1e-3, k  # training changed the parameter
        assert diff < 1e-5 * max(1.0, float(v.abs().max())) and diff < moved * 1e-3, (k, float(diff), float(moved))
    rows_one, rows_two = one["history"], two["history"]
    assert len(rows_two) == 2 and all(r["train_heatmap"] > 0 for r in rows_two)  # the heatmap loss was trained
    for a, b in zip(rows_one, rows_two):  # metrics summed over both processes equal one process's
        for key in ("train_loss", "train_accuracy", "val_accuracy", "val_loss", "val_background_fraction",
                    "val_balanced_accuracy", "val_macro_f1", "val_auroc"):  # scores of the gathered predictions
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert written == ["best.pt", "config.json", "last.pt", "metrics.csv", "metrics.json", "run.json"]

    # Ctrl-C in one process in the middle of epoch 2: both stop at one boundary, and resuming gives run "two"
    _spawn(_config(tiny_data, tmp_path / "three"), "interrupt")
    cut = load_checkpoint(tmp_path / "three" / "last.pt")
    assert (cut["epoch"], cut["step"]) == (1, 1) and len(cut["epoch_meter"]) == 2
    _spawn(_config(tiny_data, tmp_path / "three"), "resume")
    three = load_checkpoint(tmp_path / "three" / "last.pt")
    for k, v in two["model"].items():
        assert torch.equal(v, three["model"][k]), k
    assert [r["train_loss"] for r in three["history"]] == [r["train_loss"] for r in rows_two]
