"""The ``isnet`` command line through ``main(argv)``: what each command writes, and its errors."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from isnet_kernels import cli
from isnet_kernels.isnet.presets import TRAINER_PRESETS
from isnet_kernels.train import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(run), "--arch", "small", "--model-arg", "width=2",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--quiet", *extra]


@pytest.fixture(scope="module")
def cli_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(_train_args(tiny_data, run, "--variant", "dual", "--C1", "2", "--batch-stats", "live")) == 0
    return run


def test_data_biased_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "digits"
    rc = cli.main(["data", "biased-digits", str(root), "--size", "24", "--per-class", "2", "--per-class-val", "1",
                   "--per-class-test", "1", "--seed", "3", "--quiet"])
    assert rc == 0
    splits = ["test_biased", "test_confounding", "test_unbiased", "train", "train_clean", "val"]
    assert sorted(p.name for p in (root / "images").iterdir()) == splits
    assert sorted(p.name for p in (root / "masks").iterdir()) == splits
    assert len(list((root / "images" / "train").glob("*/*.png"))) == 20
    assert len(list((root / "masks" / "val").glob("*/*.png"))) == 10
    with Image.open(root / "images" / "train" / "7" / "0001.png") as im:
        assert im.size == (24, 24)
    info = json.loads((root / "info.json").read_text())
    assert info["seed"] == 3 and info["counts"]["train"] == 20
    out = capsys.readouterr().out
    assert "train 20" in out and "isnet train --data" in out
    # writing again into the same folder is refused, naming the fix
    assert cli.main(["data", "biased-digits", str(root), "--size", "24", "--quiet"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_train_writes_a_run_and_resumes(cli_run: Path, tiny_data: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    for name in ("config.json", "metrics.csv", "metrics.json", "last.pt", "best.pt"):
        assert (cli_run / name).is_file(), name
    config = json.loads((cli_run / "config.json").read_text())
    assert config["variant"] == "dual" and config["C1"] == 2.0 and config["model_kwargs"] == {"width": 2}
    # every setting the default preset governs saved as its resolved value
    assert config["preset"] == "default"
    assert {k: config[k] for k in TRAINER_PRESETS["default"]} == TRAINER_PRESETS["default"]
    assert config["epochs"] == 1 and config["lr"] == 0.15 and config["clip"] == 1.0

    run = tmp_path / "run"
    assert cli.main(_train_args(tiny_data, run, "--variant", "none")) == 0
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and state["config"]["variant"] == "none" and state["config"]["epochs"] == 2
    assert len(json.loads((run / "metrics.json").read_text())) == 2
    assert "done: 2 epoch(s)" in capsys.readouterr().out


def test_train_preset_paper_and_deep_supervision_words(tiny_data: Path, tmp_path: Path) -> None:
    """--preset paper fills in the authors' settings, an option given beside it wins; --deep-supervision takes
    'off', 'auto', no name (the default layers) or module names."""
    run = tmp_path / "paper"
    assert cli.main(_train_args(tiny_data, run, "--preset", "paper", "--lr", "0.02")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "paper" and config["lr"] == 0.02
    paper = {k: v for k, v in TRAINER_PRESETS["paper"].items() if k != "lr"}
    assert {k: config[k] for k in paper} == paper
    assert paper["select"] == "lowest" and paper["batch_stats"] == "detached" and paper["first_layer"] == "zb"
    assert paper["deep_supervision"] is False and paper["lr_schedule"] == "constant"
    for words, expected in ((["off"], False), (["auto"], "auto"), ([], True), (["features.3"], ["features.3"])):
        config = cli._train_config(cli._build_parser().parse_args(
            _train_args(tiny_data, tmp_path / "unused", "--deep-supervision", *words)))
        assert config.deep_supervision == expected, words


def test_train_errors(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, cli_run: Path) -> None:
    assert cli.main(_train_args(tiny_data, cli_run)) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--data ROOT is required" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert cli.main(_train_args(tiny_data, tmp_path / "r", "--train-split", "training")) == 2
    err = capsys.readouterr().err
    assert "no split 'training'" in err and "--train-split" in err
    assert cli.main(_train_args(tmp_path / "nowhere", tmp_path / "r")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(cli_run), "--resume", "--lr", "0.5", "--quiet"]) == 2
    assert "may only change" in capsys.readouterr().err
    assert cli.main(_train_args(tiny_data, tmp_path / "r", "--arch", "resnt18")) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'resnt18' (--arch); did you mean resnet18" in err and len(err.splitlines()) == 1


def test_eval_writes_json_and_table(cli_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["eval", "--run", str(cli_run), "--quiet"]) == 0
    result = json.loads((cli_run / "eval-best.json").read_text())
    assert result["checkpoint"] == "best.pt" and result["epoch"] == 1 and result["variant"] == "dual"
    assert result["checkpoint_path"] == str((cli_run / "best.pt").resolve())
    assert list(result["splits"]) == ["test_biased", "test_unbiased"]  # every test_* split, by default
    for split in result["splits"].values():
        assert split["images"] == 4
        assert split["accuracy"] in (0, 0.25, 0.5, 0.75, 1)
        assert 0 < split["background_fraction"] < 1 and split["loss"] > 0
    assert result["environment"]["torch"] and result["environment"]["threads"] >= 1
    table = (cli_run / "eval-best.md").read_text()
    assert table.startswith("| split | images | accuracy | background relevance |") and "| test_unbiased | 4 |" in table
    assert "| test_biased | 4 |" in capsys.readouterr().out

    # another checkpoint's results go to its own file: best.pt's stay
    assert cli.main(["eval", "--run", str(cli_run), "--splits", "val", "--checkpoint", "last", "--quiet"]) == 0
    assert list(json.loads((cli_run / "eval-last.json").read_text())["splits"]) == ["val"]
    assert list(json.loads((cli_run / "eval-best.json").read_text())["splits"]) == ["test_biased", "test_unbiased"]


def test_eval_never_writes_another_runs_results(cli_run: Path, tiny_data: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "other"
    assert cli.main(_train_args(tiny_data, other, "--variant", "none")) == 0
    capsys.readouterr()
    before = sorted(p.name for p in cli_run.iterdir())
    relative = os.path.relpath(other / "last.pt", cli_run)
    assert cli.main(["eval", "--run", str(cli_run), "--checkpoint", relative, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint of the run directory" in err and f"--run {other}" in err
    assert sorted(p.name for p in cli_run.iterdir()) == before  # nothing written into the run named


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_eval_prints_the_results_before_a_failed_write(cli_run: Path, tiny_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "readonly"
    assert cli.main(_train_args(tiny_data, run, "--variant", "none")) == 0
    capsys.readouterr()
    run.chmod(0o555)
    try:
        assert cli.main(["eval", "--run", str(run), "--quiet"]) == 2
    finally:
        run.chmod(0o755)
    captured = capsys.readouterr()
    assert "| test_biased | 4 |" in captured.out  # the table came first
    err = captured.err.strip()
    assert "\n" not in err and "permission denied" in err and "the results are printed above" in err
    assert not (run / "eval-best.json").exists()


def test_eval_write_failure_is_one_line_after_the_table(cli_run: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as a read-only run directory, for a user (root) whom permissions do not stop."""
    import errno

    from isnet_kernels.train import files

    real_open = open

    def read_only(path, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", read_only, raising=False)
    (cli_run / "eval-best.json").unlink(missing_ok=True)
    assert cli.main(["eval", "--run", str(cli_run), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "| test_biased | 4 |" in captured.out
    err = captured.err.strip()
    assert "\n" not in err and "read-only (EROFS)" in err and "the results are printed above" in err
    assert not (cli_run / "eval-best.json").exists()


def test_eval_errors(cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["eval", "--run", str(tmp_path / "missing")]) == 2
    assert "run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", "--run", str(tmp_path / "empty")]) == 2
    assert "holds no best.pt or last.pt" in capsys.readouterr().err
    assert cli.main(["eval", "--run", str(cli_run), "--splits", "test_other"]) == 2
    err = capsys.readouterr().err
    assert "no split 'test_other'" in err and "test_biased" in err


def test_explain_writes_a_figure(cli_run: Path, tiny_data: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    image = tiny_data / "images" / "test_biased" / "1" / "000.png"
    mask = tiny_data / "masks" / "test_biased" / "1" / "000.png"
    fig = tmp_path / "fig.png"
    assert cli.main(["explain", str(image), "--run", str(cli_run), "--mask", str(mask), "--out", str(fig)]) == 0
    with Image.open(fig) as im:
        im.verify()
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.size == (600, 200)  # image | heatmap | overlay with mask, 200 px each
    assert "background relevance" in capsys.readouterr().out

    plain = tmp_path / "plain.png"
    assert cli.main(["explain", str(image), "--run", str(cli_run), "--target", "0", "--out", str(plain)]) == 0
    with Image.open(plain) as im:
        assert im.size == (400, 200)
    assert "class 0" in capsys.readouterr().out

    assert cli.main(["explain", str(image), "--run", str(cli_run), "--target", "cat", "--out", str(plain)]) == 2
    assert "unknown target class 'cat'" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path / "no.png"), "--run", str(cli_run), "--out", str(plain)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bench_orchestrates_the_suites(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["bench", "--root", str(tmp_path)]) == 2
    assert "source repository" in capsys.readouterr().err

    calls: list[tuple[list[str], dict]] = []

    def fake_run(cmd, cwd, env):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    results = tmp_path / "results"
    assert cli.main(["bench", "--quick", "--root", str(REPO), "--results", str(results)]) == 0
    cmds = [c for c, _ in calls]
    suites = sorted(p.name for p in (REPO / "benchmarks").glob("test_bench_*.py"))
    assert {"test_bench_explain.py", "test_bench_ops.py", "test_bench_training.py"} <= set(suites)
    assert [c[3] for c in cmds[:-1]] == [f"benchmarks/{s}" for s in suites]  # every suite, then the report
    assert all(f"--benchmark-json={results}/" in c[-1] for c in cmds[:-1])
    assert cmds[-1][1] == "benchmarks/report.py" and cmds[-1][-2:] == ["--out-dir", str(results)]
    assert cmds[-1][2:-2] == [str(results / f"{s[len('test_bench_'):-3]}.json") for s in suites]
    assert all(env["BENCH_ROUNDS"] == "2" for _, env in calls)

    calls.clear()
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd, cwd, env: subprocess.CompletedProcess(cmd, 1))
    assert cli.main(["bench", "--root", str(REPO), "--suites", "ops", "--results", str(results)]) == 2
    assert "failed with exit status 1" in capsys.readouterr().err
    assert cli.main(["bench", "--root", str(REPO), "--suites", "speed"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_python_dash_m_runs_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["isnet", "bench", "--root", str(REPO), "--dry-run", "--suites", "ops"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("isnet_kernels", run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "benchmarks/test_bench_ops.py" in out and "benchmarks/report.py" in out
