"""The comparison's methods in the trainer: Right for the Right Reasons and the ISNet with Grad x Input heatmaps,
and the biased-tags data set from the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from isnet_kernels import cli
from isnet_kernels.isnet import RRRLoss
from isnet_kernels.train import TrainConfig, Trainer, TrainError

from .helpers import TinyNet


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), epochs=1, batch_size=4, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_rrr_step_is_the_rrr_loss(tiny_data: Path, tmp_path: Path) -> None:
    """One RRR step of the trainer moves the parameters as one step on RRRLoss by hand does."""
    torch.manual_seed(3)
    model, twin = TinyNet(), TinyNet()
    twin.load_state_dict(model.state_dict())
    losses: list[float] = []
    trainer = Trainer(_config(tiny_data, tmp_path / "rrr", variant="rrr", rrr_lambda=2.0, clip=None),
                      model=model, callbacks=[lambda t, e, s: losses.append(t.meter.means()["heatmap"])])
    trainer.fit()
    assert losses and all(math.isfinite(v) and v >= 0 for v in losses)  # the penalty is logged as the heatmap part
    # replay the first step by hand
    from isnet_kernels.data import MaskedImageFolder
    from isnet_kernels.train.sampling import EpochSampler

    data = MaskedImageFolder(tiny_data, "train")
    order = list(EpochSampler(len(data), seed=0, shuffle=True, pad=True))
    x, m, y = (torch.stack([data[i][k] for i in order[:4]]) if k < 2 else torch.tensor([data[i][2] for i in
               order[:4]]) for k in range(3))
    torch.manual_seed(0)
    x = x.requires_grad_(True)
    out = RRRLoss(2.0)(twin(x), x, y, m)
    assert math.isclose(out.penalty.item() * 4, losses[0] * 4, rel_tol=1e-5)


def test_gradinput_isnet_trains_a_model_without_rules(tiny_data: Path, tmp_path: Path) -> None:
    class Tanhy(TinyNet):
        def forward(self, x):
            return super().forward(x).cumsum(-1)  # no relevance rule: Grad x Input needs none

    result = Trainer(_config(tiny_data, tmp_path / "gi", variant="selective", heatmap="gradinput", select="label"),
                     model=Tanhy()).fit()
    row = result.history[0]
    assert row["train_heatmap"] > 0 and math.isfinite(row["train_loss"])


def test_method_settings_are_checked() -> None:
    with pytest.raises(TrainError, match="heatmap"):
        TrainConfig(heatmap="gradcam")
    with pytest.raises(TrainError, match="dual"):
        TrainConfig(variant="dual", heatmap="gradinput")
    with pytest.raises(TrainError, match="rrr_lambda"):
        TrainConfig(variant="rrr", rrr_lambda=-1.0)
    with pytest.raises(TrainError, match="tune_cut"):
        TrainConfig(variant="rrr", tune_cut=2)
    with pytest.raises(TrainError, match="map_chunk"):
        TrainConfig(variant="original", map_chunk=0)


def test_data_biased_tags_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "tags"
    assert cli.main(["data", "biased-tags", str(root), "--per-class", "1", "--per-class-val", "1",
                     "--per-class-test", "1", "--quiet"]) == 0
    splits = sorted(p.name for p in (root / "images").iterdir())
    assert splits == ["test_biased", "test_confounding", "test_unbiased", "train", "train_clean", "val"]
    assert json.loads((root / "info.json").read_text())["counts"]["train_clean"] == 10
    assert "wrote biased tags" in capsys.readouterr().out
