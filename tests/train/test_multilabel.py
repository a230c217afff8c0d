"""Multi-label training through the command line: a tiny biased multi-label set trained end to end, per-label AUROC
reported by the trainer and by ``isnet eval``, the task kept by the checkpoints (eval, explain, resume), and bad
input as one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from isnet_kernels import cli
from isnet_kernels.data import ManifestDataset
from isnet_kernels.train import TrainConfig, TrainError, load_checkpoint, load_run
from isnet_kernels.train.scores import multilabel_scores

ARGS = ("--arch", "small", "--model-arg", "width=2", "--batch-size", "8", "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def ml_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ml") / "data"
    assert cli.main(["data", "biased-multilabel", str(root), "--labels", "4", "--size", "32", "--per-class", "4",
                     "--per-class-val", "2", "--per-class-test", "2", "--quiet"]) == 0
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def ml_run(ml_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ml-run") / "run"
    assert cli.main(["train", "--data", str(ml_data), "--out", str(run), "--epochs", "1", *ARGS]) == 0
    return run


def test_train_and_eval_report_per_label_auroc(ml_run: Path, ml_data: Path, capsys: pytest.CaptureFixture) -> None:
    config = json.loads((ml_run / "config.json").read_text())
    assert config["task"] == "multilabel"  # found from the manifest's labels column
    assert load_checkpoint(ml_run / "last.pt")["config"]["task"] == "multilabel"
    row = json.loads((ml_run / "metrics.json").read_text())[-1]
    assert row["val_auroc"] is not None and row["val_map"] is not None and row["val_balanced_accuracy"] is None
    assert row["train_heatmap"] > 0  # the ISNet penalised the maps of the positive labels

    capsys.readouterr()
    assert cli.main(["eval", "--run", str(ml_run), "--bootstrap", "20", "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((ml_run / "eval-best.json").read_text())
    assert result["task"] == "multilabel" and result["classes"] == ["0", "1", "2", "3"]
    for split in ("test_biased", "test_unbiased", "test_confounding"):
        r = result["splits"][split]
        assert set(r["per_label_auroc"]) == {"0", "1", "2", "3"} and r["auroc"] is not None and r["map"] is not None
        assert r["accuracy"] == pytest.approx(r["exact_match"])  # the meter's exact match = scikit-learn's
        assert f"| {split} |" in printed
    assert "| label | AUROC test_biased" in printed and "per label" in printed
    assert not list(ml_run.glob("eval-best-confusion-*.png"))

    # the figures equal scikit-learn's on the model's own sigmoid outputs
    run = load_run(ml_run)
    data = ManifestDataset(ml_data, "test_unbiased")
    x = torch.stack([data[i][0] for i in range(len(data))])
    t = torch.stack([data[i][2] for i in range(len(data))]).numpy()
    with torch.no_grad():
        p = run.model(x).sigmoid().numpy()
    from sklearn.metrics import roc_auc_score

    r = result["splits"]["test_unbiased"]
    for k, name in enumerate(["0", "1", "2", "3"]):
        if 0 < t[:, k].sum() < len(t):
            assert r["per_label_auroc"][name] == pytest.approx(roc_auc_score(t[:, k], p[:, k]))
    assert r["exact_match"] == pytest.approx(float(((p > 0.5) == (t > 0.5)).all(1).mean()))


def test_resume_and_explain_keep_the_task(ml_run: Path, ml_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(ml_data), "--out", str(run), "--epochs", "1", "--variant", "none",
                     *ARGS]) == 0
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["task"] == "multilabel"
    # the Python API: a config that leaves the task out resumes a multi-label run
    from isnet_kernels.train import train

    cfg = TrainConfig(data=str(ml_data), out=str(run), arch="small", model_kwargs={"width": 2}, batch_size=8,
                      variant="none", epochs=3, progress=False, device="cpu")
    assert train(cfg, resume=True).epochs_done == 3
    image = ml_data.parent / "images" / "test_unbiased" / "0000.png"
    capsys.readouterr()
    assert cli.main(["explain", str(image), "--run", str(ml_run), "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").is_file() and "p=" in capsys.readouterr().out


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_task_mismatch_is_one_line(ml_data: Path, ml_run: Path, tiny_data: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--data", str(ml_data), "--out", str(tmp_path / "a"), "--task", "multiclass",
                     *ARGS]) == 2
    err = _one_line_error(capsys)
    assert "multi-label manifest" in err and "--task multilabel" in err
    assert cli.main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--task", "multilabel",
                     *ARGS]) == 2
    assert "one class per image" in _one_line_error(capsys)
    assert cli.main(["train", "--data", str(ml_data), "--out", str(tmp_path / "c"), "--variant", "rrr", *ARGS]) == 2
    assert "--variant rrr" in _one_line_error(capsys)
    # a multi-label run evaluated on single-label data
    assert cli.main(["eval", "--run", str(ml_run), "--data", str(tiny_data), "--splits", "test_biased",
                     "--quiet"]) == 2
    assert "trained with --task multilabel" in _one_line_error(capsys)
    with pytest.raises(TrainError, match="task must be one of") as exc:
        TrainConfig(data="d", out="o", task="multi")
    assert exc.value.params == ("task",)


def test_unknown_label_is_one_line(ml_data: Path, ml_run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """A manifest to evaluate with a label the run was not trained on names the file, the line and the column."""
    with open(ml_data, newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test_unbiased"]
    test[1]["labels"] = "1;7"
    other = tmp_path / "other.csv"
    with open(other, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "image": str(ml_data.parent / r["image"]), "mask": str(ml_data.parent / r["mask"])}
                    for r in test)
    assert cli.main(["eval", "--run", str(ml_run), "--data", str(other), "--splits", "test_unbiased",
                     "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "line 3, column labels: unknown label '7'" in err


def test_multilabel_scores_match_scikit_learn() -> None:
    """Exact match and per-label accuracy (0.5 threshold) against scikit-learn on random predictions."""
    from sklearn.metrics import accuracy_score, average_precision_score, hamming_loss

    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, (40, 3))
    p = rng.random((40, 3))
    s = multilabel_scores(t, p, ["a", "b", "c"], bootstrap=0)
    assert s["exact_match"] == pytest.approx(accuracy_score(t, p > 0.5))
    assert s["label_accuracy"] == pytest.approx(1 - hamming_loss(t, p > 0.5))
    assert s["per_label_ap"]["b"] == pytest.approx(average_precision_score(t[:, 1], p[:, 1]))
