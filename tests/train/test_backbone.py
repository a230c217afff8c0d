"""Fine-tuning a backbone by name: weights from a file, the input normalisation kept from training to evaluation
and explanation, AdamW with warm-up, bf16 autocast, and a checkpoint that rebuilds the model."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import isnet_kernels as ik
from isnet_kernels import cli
from isnet_kernels.data import MaskedImageFolder
from isnet_kernels.train import (
    TrainConfig,
    TrainError,
    backbone,
    evaluate_run,
    explain_image,
    load_checkpoint,
    load_run,
)
from isnet_kernels.train.metrics import background_fraction

from ..optional import require

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def test_learning_rate_warmup_then_schedule() -> None:
    cosine = TrainConfig(lr=0.1)
    for t in (0, 3, 9):  # no warm-up: exactly the former cosine decay
        assert backbone.learning_rate(cosine, t, 10, 5) == 0.1 * (1 + math.cos(math.pi * t / 10)) / 2
    warm = TrainConfig(lr=0.1, warmup_epochs=1)
    assert [backbone.learning_rate(warm, t, 15, 5) for t in range(5)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert backbone.learning_rate(warm, 5, 15, 5) == pytest.approx(0.1)  # the cosine starts after the warm-up
    assert backbone.learning_rate(warm, 10, 15, 5) == pytest.approx(0.05)
    constant = TrainConfig(lr=0.1, warmup_epochs=0.4, lr_schedule="constant")
    assert [backbone.learning_rate(constant, t, 15, 5) for t in range(4)] == pytest.approx([0.05, 0.1, 0.1, 0.1])
    with pytest.raises(TrainError, match="warmup_epochs"):
        TrainConfig(warmup_epochs=-1)


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 2, 2))
        self.fc = nn.Linear(4, 2)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_adamw_decays_weights_not_biases_norms_or_embeddings() -> None:
    model = _Tokens()
    cfg = TrainConfig(optimizer="adamw")
    assert (cfg.lr, cfg.weight_decay) == (1e-3, 0.05)
    opt = backbone.make_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.conv.weight), id(model.fc.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.conv.bias), id(model.norm.weight), id(model.norm.bias),
                                                   id(model.pos_embed), id(model.fc.bias)}
    sgd = backbone.make_optimizer(TrainConfig(weight_decay=1e-4), model)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["weight_decay"] == 1e-4


def test_bf16_where_unsupported_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backbone.bf16_unsupported(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    reason = backbone.bf16_unsupported(torch.device("cuda", 0))
    assert reason is not None and "Tesla V100 does not support bfloat16" in reason
    with pytest.raises(TrainError, match=r"--precision bf16 cannot run here: .*V100.*use --precision 32"):
        backbone.check_precision(TrainConfig(precision="bf16"), torch.device("cuda", 0))
    with pytest.raises(TrainError, match="precision"):
        TrainConfig(precision="fp8")


@pytest.fixture(scope="module")
def tv_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A torchvision ResNet-18 fine-tuned from a weights file, inputs normalised per channel, Z^B first layer,
    AdamW with warm-up, bf16 autocast; at 32x32 (at 8x8 its last stages' feature maps are 1x1 and train-mode
    BatchNorm over 4 values makes the bf16 heatmap loss diverge)."""
    M = require("torchvision.models")
    tmp = tmp_path_factory.mktemp("backbone")
    source = M.resnet18(num_classes=1000)
    torch.save(source.state_dict(), tmp / "r18.pth")
    run = tmp / "run"
    args = ["train", "--data", str(tiny_data), "--out", str(run), "--arch", "resnet18", "--weights",
            str(tmp / "r18.pth"), "--mean", *map(str, MEAN), "--std", *map(str, STD), "--first-layer", "zb",
            "--optimizer", "adamw", "--warmup-epochs", "1", "--precision", "bf16", "--epochs", "1", "--batch-size",
            "4", "--size", "32", "--device", "cpu", "--quiet"]
    assert cli.main(args) == 0
    return run, {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}


def test_checkpoint_records_model_and_preprocessing(tv_run: tuple[Path, dict]) -> None:
    run, _ = tv_run
    state = load_checkpoint(run / "last.pt")
    spec = state["model_spec"]
    assert (spec["arch"], spec["num_classes"], spec["in_channels"]) == ("resnet18", 2, 3)
    assert spec["preprocess"]["mean"] == MEAN and spec["preprocess"]["std"] == STD
    assert spec["preprocess"]["size"] == 32  # --size wins over the default weights' 224
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())  # float32 master weights
    assert state["model"]["fc.weight"].shape == (2, 512)


def test_eval_normalises_as_training_did(tv_run: tuple[Path, dict], tiny_data: Path) -> None:
    run, _ = tv_run
    out = evaluate_run(run, splits=["test_unbiased"], write=False)["splits"]["test_unbiased"]
    model = load_run(run).model
    data = MaskedImageFolder(tiny_data, "test_unbiased", size=32, channels=3)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][2] for i in range(len(data))])
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std)
        raw = model(x)
    assert out["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert out["loss"] != pytest.approx(float(F.cross_entropy(raw, y)), rel=1e-5)  # the normalisation matters
    hand = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD), (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    masks = torch.stack([data[i][1] for i in range(len(data))])
    heat = ik.explain(model, (x - mean) / std, None, first_layer="zb", bounds=hand)
    assert out["background_fraction"] == pytest.approx(float(background_fraction(heat, masks).mean()), rel=1e-5)


def test_explain_uses_the_runs_normalisation_and_bounds(tv_run: tuple[Path, dict], tiny_data: Path,
                                                        tmp_path: Path) -> None:
    run, _ = tv_run
    image = tiny_data / "images" / "test_biased" / "1" / "000.png"
    mask = tiny_data / "masks" / "test_biased" / "1" / "000.png"
    info = explain_image(run, image, tmp_path / "fig.png", mask=mask, target=1)
    model = load_run(run).model
    x = MaskedImageFolder(tiny_data, "test_biased", size=32, channels=3)[2][0][None]  # class 1, image 000
    masks = MaskedImageFolder(tiny_data, "test_biased", size=32, channels=3)[2][1][None]
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    hand = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD), (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    heat = ik.explain(model, (x - mean) / std, 1, first_layer="zb", bounds=hand)
    assert info["background_fraction"] == pytest.approx(float(background_fraction(heat, masks)[0]), rel=1e-5)
    with torch.no_grad():
        probability = float(model((x - mean) / std).softmax(-1)[0, 1])
    assert info["probability"] == pytest.approx(probability, rel=1e-5)


def test_resume_rebuilds_the_named_model(tv_run: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = tv_run
    assert cli.main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and state["model_spec"]["preprocess"]["mean"] == MEAN
    assert len(state["optimizer"]["param_groups"]) == 2  # AdamW's decay and no-decay groups


def test_weights_errors_on_the_command_line(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    M = require("torchvision.models")
    torch.save(M.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pth")
    base = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--epochs", "1", "--quiet"]
    assert cli.main([*base, "--arch", "resnet18", "--weights", str(tmp_path / "r34.pth")]) == 2
    err = capsys.readouterr().err
    assert "unexpected keys: layer1.2.conv1.weight" in err and len(err.splitlines()) == 1
    assert cli.main([*base, "--arch", "resnet18", "--weights", "IMAGENET1K_V9"]) == 2
    err = capsys.readouterr().err
    assert "no weights 'IMAGENET1K_V9' (--weights)" in err and "IMAGENET1K_V1" in err
    assert cli.main([*base, "--mean", "0.5"]) == 2
    assert "both --mean and --std" in capsys.readouterr().err
    assert cli.main([*base, "--arch", "timm:resnet10t"] if _no_timm() else [*base, "--arch", "timm:resnt10t"]) == 2
    assert "timm" in capsys.readouterr().err


def _no_timm() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return True
    return False


def test_missing_timm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm then fails as where it is not installed
    with pytest.raises(ik.ISNetError, match=r"needs the package timm.*pip install 'isnet-kernels\[timm\]'"):
        TrainConfig(arch="timm:resnet10t")


def test_timm_model_trains_evaluates_and_explains(tiny_data: Path, tmp_path: Path) -> None:
    timm = require("timm")
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), tmp_path / "r10t.pth")
    run = tmp_path / "run"
    assert cli.main(["train", "--data", str(tiny_data), "--out", str(run), "--arch", "timm:resnet10t", "--weights",
                     str(tmp_path / "r10t.pth"), "--size", "32", "--epochs", "1", "--batch-size", "8",
                     "--optimizer", "adamw", "--precision", "bf16", "--device", "cpu", "--quiet"]) == 0
    spec = load_checkpoint(run / "last.pt")["model_spec"]
    assert spec["arch"] == "timm:resnet10t" and spec["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    out = evaluate_run(run, write=False)
    assert out["arch"] == "timm:resnet10t" and set(out["splits"]) == {"test_biased", "test_unbiased"}
    image = tiny_data / "images" / "test_biased" / "0" / "000.png"
    assert explain_image(run, image, tmp_path / "fig.png")["background_fraction"] is None
    assert (tmp_path / "fig.png").is_file()
