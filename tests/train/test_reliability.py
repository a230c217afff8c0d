"""Nothing a user runs is lost: resuming however the run folder is named, SIGTERM, full disks, stale temporary files,
another data set on resume, and a run killed (SIGKILL) again and again that still ends as an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from isnet_kernels import cli
from isnet_kernels.train import TrainConfig, Trainer, TrainError, files, load_checkpoint, save_checkpoint, train
from isnet_kernels.train.checkpoint import FORMAT

from .helpers import write_tiny_folder

REPO = Path(__file__).resolve().parents[2]
KILLABLE = Path(__file__).with_name("killable.py")


def _settings(data: Path, out: Path, **kw) -> dict:
    base = dict(data=str(data), out=str(out), arch="small", model_kwargs={"width": 2}, epochs=2, batch_size=4,
                progress=False, device="cpu", threads=1)
    return {**base, **kw}


def _args(data: Path | str, out: Path | str, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--arch", "small", "--model-arg", "width=2",
            "--batch-size", "4", "--device", "cpu", "--threads", "1", "--quiet", *extra]


def _resume(out: Path | str, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--resume", "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1"}


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"])
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    for k, state in sa["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"]), k


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if files.TEMPORARY.match(p.name))


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


# --- the run folder, however it is named --------------------------------------------------------------------------
def test_resume_finds_the_run_however_out_is_spelled(tiny_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(_args(tiny_data, "runs/r", "--epochs", "1")) == 0
    assert cli.main(_resume(tmp_path / "runs" / "r", "--epochs", "2")) == 0  # absolute
    assert cli.main(_resume("./runs/r", "--epochs", "3")) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(_resume("../runs/r/", "--epochs", "4")) == 0  # another working directory
    shutil.move(tmp_path / "runs" / "r", tmp_path / "moved")
    assert cli.main(_resume("../moved", "--epochs", "5")) == 0  # a moved run folder
    capsys.readouterr()
    assert load_checkpoint(tmp_path / "moved" / "last.pt")["epoch"] == 5
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["out"] == "../moved"

    assert cli.main(_resume("../runs/r", "--epochs", "6")) == 2  # not there any more
    err = capsys.readouterr().err
    assert "cannot resume" in err and str(tmp_path / "runs" / "r") in err and "Drop" not in err


def test_a_changed_setting_names_its_flag_and_never_out(tiny_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "r"
    assert cli.main(_args(tiny_data, run, "--epochs", "1")) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", os.path.relpath(run), "--resume", "--batch-size", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 4 -> 2" in err and "--out" not in err.split("may only change")[0]


def test_resume_from_another_folder_finds_a_relative_data_set(tiny_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(tiny_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert cli.main(_args("data", "r", "--epochs", "1")) == 0
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert cli.main(_resume("../r", "--epochs", "2")) == 0
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 2
    assert cli.main(["eval", "--run", "../r", "--quiet"]) == 0  # the run's data set, found from here too
    assert json.loads((tmp_path / "r" / "eval-best.json").read_text())["data"] == str(tmp_path / "data")


# --- another data set on resume -------------------------------------------------------------------------------------
def test_resume_refuses_another_data_set_and_follows_a_moved_one(tiny_data: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "r"
    assert cli.main(_args(tiny_data, run, "--epochs", "1")) == 0
    other = write_tiny_folder(tmp_path / "other", counts={"train": 6, "val": 4})
    capsys.readouterr()
    assert cli.main(_resume(run, "--epochs", "2", "--data", str(other))) == 2
    err = capsys.readouterr().err
    assert "is not the one the run" in err and "12 images where it had 16" in err and "drop --data" in err
    assert json.loads((run / "config.json").read_text())["data"] == str(tiny_data)  # nothing recorded
    assert load_checkpoint(run / "last.pt")["epoch"] == 1

    same_counts = write_tiny_folder(tmp_path / "renamed", counts={"train": 8, "val": 4})
    for path in sorted((same_counts / "images" / "train" / "0").iterdir()):  # same sizes, other file names
        path.rename(path.with_name("x" + path.name))
        mask = same_counts / "masks" / "train" / "0" / path.name
        mask.rename(mask.with_name("x" + path.name))
    assert cli.main(_resume(run, "--epochs", "2", "--data", str(same_counts))) == 2
    assert "other file names" in capsys.readouterr().err

    moved = tmp_path / "moved-data"
    shutil.copytree(tiny_data, moved)
    assert cli.main(_resume(run, "--epochs", "2", "--data", str(moved))) == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)
    assert load_checkpoint(run / "last.pt")["config"]["data"] == str(moved)


# --- SIGTERM --------------------------------------------------------------------------------------------------------
def test_sigterm_saves_at_a_batch_boundary_and_resumes_exactly(tiny_data: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    settings = dict(variant="stochastic", lr_schedule="cosine")
    train(TrainConfig(**_settings(tiny_data, tmp_path / "a", **settings)))

    def terminate(trainer: Trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 2):
            signal.raise_signal(signal.SIGTERM)  # the trainer's handler asks the loop to stop

    before = signal.getsignal(signal.SIGTERM)
    cut = Trainer(TrainConfig(**_settings(tiny_data, tmp_path / "b", **settings)), callbacks=[terminate]).fit()
    assert cut.interrupted and cut.signal == signal.SIGTERM and (cut.epochs_done, cut.step) == (1, 2)
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM: stopping after this batch" in capsys.readouterr().out
    saved = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2)
    done = train(TrainConfig(**_settings(tiny_data, tmp_path / "b", **settings)), resume=True)
    assert not done.interrupted and done.signal is None
    _same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


def test_sigterm_to_the_command_exits_143_with_a_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "isnet_kernels", *_args(tiny_data, run, "--epochs", "1000")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/1000"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM == 143, "".join(lines) + rest
    assert "SIGTERM: stopping after this batch" in rest and "interrupted at epoch" in rest and "--resume" in rest
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] >= 1 and not _temporaries(run)
    assert not json.loads((run / "run.json").read_text())["finished"]


# --- stale temporary files ------------------------------------------------------------------------------------------
def test_stale_temporary_files_are_removed_when_a_run_opens(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(TrainConfig(**_settings(tiny_data, run, epochs=1)))
    dead = _dead_pid()
    stale = [run / f".last.pt.tmp-{dead}", run / f".metrics.json.tmp-{dead}"]
    alive = run / f".best.pt.tmp-{os.getpid()}"  # a process that still runs may still be writing it
    other = run / "notes.tmp-1"
    for path in (*stale, alive, other):
        path.write_bytes(b"\0" * 1000)
    train(TrainConfig(**_settings(tiny_data, run, epochs=2)), resume=True)
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other.exists()


# --- failed writes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "no space left on the device (ENOSPC)"),
                                             (errno.EACCES, "permission denied (EACCES)"),
                                             (errno.EROFS, "read-only (EROFS)")])
def test_a_failed_write_names_the_cause_and_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    code: int, words: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"format": FORMAT, "model": {"w": torch.ones(2)}}, path)
    real_open = open

    def failing(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            f.close()  # the temporary file exists, as after a write that ran out of room
            raise OSError(code, os.strerror(code), str(file))
        return f

    monkeypatch.setattr(files, "open", failing, raising=False)
    with pytest.raises(TrainError) as exc:
        save_checkpoint({"format": FORMAT, "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    message = str(exc.value)
    assert words in message and "the previous last.pt is intact" in message and "\n" not in message
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_during_training_is_one_line_and_the_previous_checkpoint_loads(tiny_data: Path,
                                                                                    tmp_path: Path) -> None:
    """A real write that runs out of room: the file-size limit of the process (RLIMIT_FSIZE) is below the size of
    a checkpoint, so the write fails with EFBIG part-way, as on a full disk."""
    run = tmp_path / "r"
    train(TrainConfig(**_settings(tiny_data, run, epochs=1)))
    before = (run / "last.pt").read_bytes()
    limit = len(before) // 2
    assert all((run / name).stat().st_size < limit // 2 for name in ("config.json", "run.json", "metrics.json"))
    done = subprocess.run([sys.executable, str(KILLABLE), json.dumps(_settings(tiny_data, run, epochs=3)),
                           "--resume", "--fsize", str(limit)], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert "\n" not in err and "cannot write checkpoint" in err and "EFBIG" in err
    assert "the previous last.pt is intact" in err and f"isnet train --out {run} --resume" in err
    assert (run / "last.pt").read_bytes() == before and load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not _temporaries(run)
    # with room again, the run goes on
    train(TrainConfig(**_settings(tiny_data, run, epochs=2)), resume=True)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


# --- fault injection ------------------------------------------------------------------------------------------------
def test_a_run_killed_again_and_again_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """SIGKILL at random moments, half of them inside a file write (slowed down so that the kill lands in it),
    each time resumed: the run completes with the weights, the best checkpoint and the metrics of a run never
    stopped, and leaves no temporary file."""
    data = write_tiny_folder(tmp_path / "data", counts={"train": 6, "val": 2})
    settings = dict(epochs=10, variant="stochastic", lr_schedule="cosine")
    reference = tmp_path / "reference"
    train(TrainConfig(**_settings(data, reference, **settings)))

    run = tmp_path / "run"
    config = json.dumps(_settings(data, run, **settings))
    rng = random.Random(19)
    kills = inside_writes = 0
    for attempt in range(12):
        resume = (run / "last.pt").is_file()
        proc = subprocess.Popen([sys.executable, str(KILLABLE), config, "--pause", "0.002",
                                 *(["--resume"] if resume else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        # every process is killed only after it saved one epoch, so each one makes progress: in a checkpoint
        # write (the k-th after its first last.pt), or after its n-th training step (3 steps an epoch)
        aim_at_write = attempt % 2 == 0
        k, n = rng.randint(1, 2), rng.randint(4, 8)
        first_saved = checkpoints_after = steps = 0
        killed = False
        for line in proc.stdout:
            steps += line.startswith("step ")
            if line.startswith(("write .last.pt", "write .best.pt")):
                if first_saved:
                    checkpoints_after += 1
                first_saved = first_saved or line.startswith("write .last.pt")
            if aim_at_write and checkpoints_after == k or not aim_at_write and steps == n:
                time.sleep(rng.uniform(0, 0.05))
                proc.kill()
                killed = True
                break
        proc.communicate(timeout=120)
        if not killed:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            break
        kills += 1
        inside_writes += bool(_temporaries(run))  # the kill left a half-written temporary file
        assert proc.returncode == -signal.SIGKILL
        load_checkpoint(run / "last.pt")  # always a whole checkpoint
    else:
        pytest.fail("the run did not finish in 12 attempts")
    print(f"{kills} kills, {inside_writes} inside a write")
    assert kills >= 4 and inside_writes >= 2
    _same_weights(reference / "last.pt", run / "last.pt")
    _same_weights(reference / "best.pt", run / "best.pt")
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((run / "metrics.json").read_text())]
    assert rows == [{k: v for k, v in r.items() if k != "seconds"}
                    for r in json.loads((reference / "metrics.json").read_text())]
    assert json.loads((run / "run.json").read_text())["finished"]
    assert not _temporaries(run)
