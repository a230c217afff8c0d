"""A plain classifier (``variant="none"``) uses nothing of the LRP engine: it trains on a model with a layer the
engine has no rule for, and its background-relevance figure is reported as missing, with the reason, once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import isnet_kernels as ik
from isnet_kernels.train import TrainConfig, Trainer
from isnet_kernels.train.evaluate import evaluate, heatmap_support


class CumsumNet(nn.Module):
    """A convolution, then a cumulative sum along the width: an operation no relevance rule covers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).cumsum(-1)
        return self.fc(h.mean((2, 3)))


def test_the_test_model_has_no_rules() -> None:
    with pytest.raises(ik.UnsupportedLayerError, match="cumsum"):
        ik.LRP(CumsumNet())
    assert "cumsum" in heatmap_support(CumsumNet())


def test_plain_classifier_trains_a_model_the_engine_does_not_support(tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CumsumNet()
    before = [p.detach().clone() for p in model.parameters()]
    messages: list[str] = []
    config = TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), variant="none", epochs=2, batch_size=4,
                         device="cpu", progress=False)
    result = Trainer(config, model=model, log=messages.append).fit()
    assert result.epochs_done == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
    notes = [m for m in messages if "background relevance will not be reported" in m]
    assert len(notes) == 1 and "cumsum" in notes[0]  # once, with the reason
    for row in result.history:
        assert math.isnan(row["val_background_fraction"]) and 0 <= row["val_accuracy"] <= 1
    with pytest.raises(ik.UnsupportedLayerError):  # an ISNet of it still fails, at once, naming the layer
        Trainer(config.replace(variant="selective", out=str(tmp_path / "isnet")), model=CumsumNet()).fit()


def test_evaluate_without_heatmaps_reports_nan_background(tiny_data: Path) -> None:
    from isnet_kernels.data import MaskedImageFolder

    loader = torch.utils.data.DataLoader(MaskedImageFolder(tiny_data, "val"), batch_size=4)
    means = evaluate(CumsumNet(), loader, heatmaps=False).means()
    assert math.isnan(means["background_fraction"]) and means["loss"] > 0
