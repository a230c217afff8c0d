"""``ISNetModule``, ``MaskedImageDataModule`` and ``HeatmapLogger``: bad input fails at construction with the
package's errors, the logged names are stable, images go to TensorBoard, a logger without images gets the scalar
and one warning, and ``precision="bf16-mixed"`` trains."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isnet_kernels as ik
from isnet_kernels.errors import InputError
from isnet_kernels.models import MissingExtraError
from isnet_kernels.train import TrainError

from ..optional import require

L = require("lightning")
event_accumulator = require("tensorboard.backend.event_processing.event_accumulator")
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

import isnet_kernels.lightning as ikl  # noqa: E402
from isnet_kernels.lightning import (  # noqa: E402
    HeatmapLogger,
    ImageLoggingWarning,
    ISNetModule,
    MaskedImageDataModule,
)

from ..train.helpers import TinyNet  # noqa: E402

#: The names an epoch logs (the columns of metrics.csv, and the training heatmaps' background fraction).
LOGGED = {"train_loss", "train_classification", "train_heatmap", "train_background", "train_foreground",
          "train_accuracy", "train_background_fraction", "lr", "val_loss", "val_accuracy", "val_background_fraction"}


def _trainer(**kwargs) -> L.Trainer:
    options = {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, **kwargs}
    return L.Trainer(**options)


class WithSoftmax2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.Softmax2d()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.act(self.conv(x)), 1).flatten(1))


def test_an_unsupported_layer_fails_at_construction() -> None:
    with pytest.raises(ik.UnsupportedLayerError, match="Softmax2d"):
        ISNetModule(WithSoftmax2d())
    # a plain classifier and Grad x Input need no relevance rules
    assert ISNetModule(WithSoftmax2d(), variant="none").isnet is None
    assert ISNetModule(WithSoftmax2d(), heatmap="gradinput").heatmap_note is not None


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(InputError, match=r"epochs: lightning.Trainer\(max_epochs=N\)"):
        ISNetModule(TinyNet(), epochs=3)
    with pytest.raises(InputError, match="needs num_classes"):
        ISNetModule("small")
    with pytest.raises(TrainError, match="lr must be a finite number"):
        ISNetModule(TinyNet(), lr=-1.0)
    with pytest.raises(InputError, match="apply to a model built by name"):
        ISNetModule(TinyNet(), weights="DEFAULT")
    with pytest.raises(InputError, match="every_n_epochs must be a positive int"):
        HeatmapLogger(every_n_epochs=0)


def test_defaults_are_the_trainers() -> None:
    module = ISNetModule("small", 3, 1, model_kwargs={"width": 2})
    cfg = module.config
    assert (cfg.variant, cfg.select, cfg.lr, cfg.lr_schedule, cfg.clip, cfg.P, cfg.C2) == \
        ("selective", "label", 0.15, "cosine", 1.0, 0.7, 1000.0)
    assert module.isnet.supervised == ["features.3", "features.7", "features.11"]  # deep supervision "auto"
    assert module.model.fc.out_features == 3
    paper = ISNetModule(TinyNet(), preset="paper", optimizer="adamw")
    assert (paper.config.select, paper.config.first_layer, paper.config.lr, paper.config.weight_decay) == \
        ("lowest", "zb", 0.001, 0.05)  # AdamW's defaults before the preset's lr


def test_missing_lightning_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'isnet-kernels\[lightning\]'"):
        ikl._require_lightning()


def test_data_module_reads_the_splits_and_refuses_a_missing_one(tiny_data: Path) -> None:
    data = MaskedImageDataModule(tiny_data, batch_size=4)
    assert (data.classes, data.num_classes, data.in_channels) == (["0", "1"], 2, 1)
    assert data.test_splits == ["test_biased", "test_unbiased"]
    with pytest.raises(TrainError, match="no split 'valid'.*val_split"):
        MaskedImageDataModule(tiny_data, val_split="valid").setup("fit")
    with pytest.raises(InputError, match="normalises the images with mean"):
        _trainer().fit(ISNetModule(TinyNet(), lr=0.01), MaskedImageDataModule(tiny_data, mean=[0.5], std=[0.25]))


def test_logs_stable_names_and_heatmaps_to_tensorboard_and_csv(tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ISNetModule(TinyNet(), lr=0.05)
    loggers = [TensorBoardLogger(tmp_path, name="tb", version=""), CSVLogger(tmp_path, name="csv", version="")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(max_epochs=2, logger=loggers, callbacks=[HeatmapLogger(count=4)])
        trainer.fit(module, MaskedImageDataModule(tiny_data, batch_size=8))
    assert set(trainer.callback_metrics) - {"loss"} == LOGGED
    image_warnings = [w for w in caught if issubclass(w.category, ImageLoggingWarning)]
    assert len(image_warnings) == 1 and "CSVLogger cannot take images" in str(image_warnings[0].message)

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={event_accumulator.IMAGES: 0})
    acc.Reload()
    assert LOGGED | {"heatmaps_background_fraction"} <= set(acc.Tags()["scalars"])
    images = acc.Images("heatmaps")
    assert [e.step for e in images] == [2, 4]  # after each epoch (2 steps each), at the step Lightning logs at
    assert images[0].height == 4 * 64 + 3 * 2 and images[0].width == 3 * 64 + 2 * 2

    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fractions = [r["heatmaps_background_fraction"] for r in rows if r.get("heatmaps_background_fraction")]
    assert len(fractions) == 2 and all(0 <= float(v) <= 1 for v in fractions)

    results = _trainer().test(module, MaskedImageDataModule(tiny_data, batch_size=8), verbose=False)
    assert {"test_biased_accuracy", "test_unbiased_background_fraction"} <= set(results[0])


def test_bf16_mixed_trains(tiny_data: Path) -> None:
    losses: dict[str, float] = {}
    for precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        module = ISNetModule(TinyNet(), lr=0.05)
        trainer = _trainer(precision=precision, limit_val_batches=1)
        trainer.fit(module, MaskedImageDataModule(tiny_data, batch_size=8))
        losses[precision] = float(trainer.callback_metrics["train_loss"])
        assert torch.isfinite(trainer.callback_metrics["val_background_fraction"])
    # bf16 autocast ran (the losses differ by its rounding), and trains the same model
    assert losses["bf16-mixed"] != losses["32-true"]
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=0.05)
