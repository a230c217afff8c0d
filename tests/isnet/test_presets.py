"""The ISNet's presets: the defaults ("default"), the authors' settings ("paper"), explicit arguments over both."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from isnet_kernels import ISNet, ISNetLoss
from isnet_kernels.errors import InputError
from isnet_kernels.isnet.presets import ISNET_PRESETS, LOSS_PRESETS, TRAINER_PRESETS
from isnet_kernels.models import SmallCNN


def _no_pools() -> nn.Module:
    """A classifier with none of the layers deep supervision knows to pick."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def test_default_preset() -> None:
    isnet = ISNet(SmallCNN(10, 1, width=2))
    assert isnet.preset == "default" and isnet.variant == "selective" and isnet.select == "label"
    assert (isnet.lrp.batch_stats, isnet.lrp.first_layer) == ("live", "epsilon")
    assert isnet.supervised == ["features.3", "features.7", "features.11"]  # "auto": the max-pools
    # "auto" on a model without such layers supervises nothing, where True names the problem
    assert ISNet(_no_pools()).supervised == []
    with pytest.raises(ValueError, match="no layers deep supervision knows"):
        ISNet(_no_pools(), deep_supervision=True)


def test_paper_preset_and_explicit_arguments() -> None:
    paper = ISNet(SmallCNN(10, 1, width=2), preset="paper")
    assert paper.select == "lowest" and paper.supervised == []
    assert (paper.lrp.batch_stats, paper.lrp.first_layer) == ("detached", "zb")
    mixed = ISNet(SmallCNN(10, 1, width=2), preset="paper", select="label", deep_supervision=["features.7"])
    assert (mixed.select, mixed.supervised, mixed.lrp.batch_stats) == ("label", ["features.7"], "detached")
    with pytest.raises(ValueError, match="preset must be one of"):
        ISNet(SmallCNN(10, 1, width=2), preset="fast")
    with pytest.raises(ValueError, match="deep_supervision must be True, False, 'auto'"):
        ISNet(SmallCNN(10, 1, width=2), deep_supervision="some")


def test_trainer_presets_extend_the_isnet_and_loss_presets() -> None:
    for name, settings in ISNET_PRESETS.items():
        both = {**settings, **LOSS_PRESETS[name]}
        assert {k: TRAINER_PRESETS[name][k] for k in both} == both
        assert set(TRAINER_PRESETS[name]) - set(both) == {"lr", "lr_schedule"}


def test_loss_preset_gives_c2() -> None:
    """C2 is the preset's unless given: lifted by default (1000), the authors' 25 with the paper preset."""
    assert ISNetLoss().C2 == 1000.0 and ISNetLoss(preset="paper").C2 == 25.0
    assert ISNetLoss(C2=40.0).C2 == ISNetLoss(C2=40.0, preset="paper").C2 == 40.0
    assert ISNetLoss(C2=(30.0, 50.0)).C2 == (30.0, 50.0)
    with pytest.raises(InputError, match="preset must be one of"):
        ISNetLoss(preset="fast")


def test_default_equals_paper_with_the_defaults_spelled_out() -> None:
    """The default preset computes what the paper preset computes with the default's four settings passed."""
    torch.manual_seed(0)
    model = SmallCNN(10, 1, width=2).double()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    default = ISNet(model).train()(x, y)
    spelled = ISNet(model, preset="paper", **ISNET_PRESETS["default"]).train()(x, y)
    assert torch.equal(default.heatmaps, spelled.heatmaps)
    assert default.intermediate.keys() == spelled.intermediate.keys() and len(default.intermediate) == 3
    with pytest.raises(ValueError, match=r"call isnet\(x, labels\)"):
        ISNet(model).train()(x)  # the label class needs the labels
