"""The Lightning example of README.md runs as written (in a folder whose ``data/digits`` is a tiny masked image
folder): it trains, validates, tests, and writes the metrics and the heatmap grid to TensorBoard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..optional import require

require("lightning")
event_accumulator = require("tensorboard.backend.event_processing.event_accumulator")

from ..train.helpers import write_tiny_folder  # noqa: E402

PAGE = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    found = [b for b in blocks if "from isnet_kernels.lightning import" in b]
    assert len(found) == 1, "README.md has no (or more than one) Lightning example"
    return found[0]


def test_readme_lightning_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _example()
    assert len(code.strip().splitlines()) <= 15
    write_tiny_folder(tmp_path / "data" / "digits")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme_example"}
    exec(compile(code, str(PAGE), "exec"), scope)  # noqa: S102 - the documented example, as written
    trainer = scope["trainer"]
    assert trainer.current_epoch == 2 and 0 <= float(trainer.callback_metrics["test_unbiased_accuracy"]) <= 1
    runs = list((tmp_path / "runs" / "isnet").glob("version_*"))
    assert len(runs) == 1
    acc = event_accumulator.EventAccumulator(str(runs[0]), size_guidance={event_accumulator.IMAGES: 0})
    acc.Reload()
    assert len(acc.Images("heatmaps")) == 2
    assert {"train_loss", "val_accuracy", "val_background_fraction", "test_biased_accuracy"} <= \
        set(acc.Tags()["scalars"])
