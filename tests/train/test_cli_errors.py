"""The ``isnet`` command never prints a traceback for a user's mistake: one line on stderr, exit status 2; and its
``train`` options are generated from :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import isnet_kernels as ik
from isnet_kernels import cli
from isnet_kernels.cli import CommandError
from isnet_kernels.data import DataError
from isnet_kernels.train import TrainConfig, TrainError
from isnet_kernels.train.config import default_of

REPO = Path(__file__).resolve().parents[2]


def _isnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it: a new process, without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ISNET_KERNELS_BACKEND")}
    return subprocess.run([sys.executable, "-m", "isnet_kernels", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _in_process(args: list[str], capsys: pytest.CaptureFixture) -> subprocess.CompletedProcess:
    """``cli.main(args)`` with its exit status and output, argparse's own exits included."""
    try:
        rc = cli.main(args)
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_every_package_error_derives_from_isnet_error_and_keeps_its_builtin_base() -> None:
    expected = {ik.UnsupportedLayerError: TypeError, ik.BackendUnavailableError: RuntimeError, DataError: ValueError,
                TrainError: ValueError, CommandError: ValueError}
    for cls, builtin in expected.items():
        assert issubclass(cls, ik.ISNetError) and issubclass(cls, builtin), cls
    assert ik.ISNetError.__module__ == "isnet_kernels.errors"


@pytest.mark.parametrize("args,needles", [
    (["train", "--out", "r", "--epochs", "ten"], ["isnet train: error:", "--epochs", "invalid int"]),
    (["train", "--out", "r", "--variant", "fast"], ["invalid choice: 'fast'"]),
    (["train", "--data", "d"], ["--out"]),
    (["train", "--out", "r", "--lr", "0.1"], ["--data ROOT is required"]),
    (["eval"], ["--run"]),
    (["eval", "--run", "no-such-run"], ["isnet eval: error:", "run directory"]),
    (["explain", "no.png", "--run", "no-such-run", "--out", "f.png"], ["isnet explain: error:"]),
    (["data", "biased-digits"], ["root"]),
    (["data", "biased-digits", "d", "--size", "4"], ["isnet data: error:", "size"]),
    (["bench", "--suites", "speed", "--dry-run"], ["isnet bench: error:", "unknown suite"]),
    (["nonsense"], ["invalid choice"]),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], needles: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(_in_process(args, capsys), *needles)


def test_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    _one_line_error(_isnet("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--quiet"),
                    "isnet train: error:", "does not exist")
    _one_line_error(_isnet("train", "--out", "r", "--batch-size", "0"), "isnet train: error:")


def test_a_backend_that_cannot_run_is_reported_before_any_data_is_read(tmp_path: Path) -> None:
    """Without the interpreter and without a GPU, backend 'triton' cannot run: the trainer says so before it reads
    the data (which here does not even exist)."""
    pytest.importorskip("triton")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device makes the triton backend available")
    line = _one_line_error(_isnet("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
                                  "--backend", "triton", "--device", "cpu", "--quiet"), "backend 'triton'")
    assert "does not exist" not in line  # the data was never opened
    assert not (tmp_path / "run").exists()


def test_trainer_checks_the_backend_before_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isnet_kernels.backends import dispatch
    from isnet_kernels.train import Trainer

    monkeypatch.setattr(dispatch, "cpp_status", lambda: (False, "not built: test"))
    config = TrainConfig(data=str(tmp_path / "nowhere"), out=str(tmp_path / "run"), backend="cpp", device="cpu",
                         progress=False)
    with pytest.raises(ik.BackendUnavailableError, match="not built: test"):
        Trainer(config).fit()


def test_train_options_are_the_config_fields() -> None:
    """Every TrainConfig field has its flag and every flag its field (``--resume`` alone is the command's own);
    choices come from the configuration's constants; --help shows each default."""
    parser = cli._build_parser()
    train = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices["train"]
    actions = {a.dest: a for a in train._actions if a.dest not in ("help",)}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(actions) - {"resume"} == set(fields)
    help_text = " ".join(train.format_help().split())
    for name, f in fields.items():
        action = actions[name]
        assert action.option_strings == [cli.config_flag(f)]
        if f.metadata.get("choices") is not None:
            assert list(action.choices) == list(f.metadata["choices"])
        default = default_of(f)
        if name != "out" and default not in (None, "", {}, False, True):
            assert f"{cli.config_flag(f)}" in help_text and f"(default: {default})" in help_text, name


def test_config_defaults_reach_the_command_line_unchanged(tmp_path: Path) -> None:
    """A run started with no options has exactly TrainConfig's defaults (besides --data, --out)."""
    args = cli._build_parser().parse_args(["train", "--data", "d", "--out", str(tmp_path / "r")])
    config = cli._train_config(args)
    assert config == TrainConfig(data="d", out=str(tmp_path / "r"))
