"""Models by name from torchvision and timm, their weights (by name and from files) and their preprocessing.

No network here: weights are saved to local files from freshly built models (and, for a torchvision weights name,
placed in the torch hub cache under the file name torchvision would download), loaded by path, and the loaded
model's outputs compared with the source model's before any training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import isnet_kernels as ik
from isnet_kernels.models import (
    Preprocess,
    UnknownModelError,
    WeightsError,
    build_model,
    preprocessing,
    read_state_dict,
)
from isnet_kernels.models.hub import resolve

from ..optional import require
from ..tv_models import tiny_resnet

M = require("torchvision.models")


def _same_features(source: torch.nn.Module, model: torch.nn.Module, head: str, x: torch.Tensor) -> None:
    """``model`` computes ``source``'s function once ``source``'s head is ``model``'s."""
    parent, _, child = head.rpartition(".")
    setattr(source.get_submodule(parent) if parent else source, child, model.get_submodule(head))
    torch.testing.assert_close(model.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_names_resolve_to_their_source() -> None:
    assert resolve("small") == ("package", "small")
    assert resolve("resnet18") == ("torchvision", "resnet18")  # torchvision's builder
    assert resolve("torchvision:resnet18") == ("torchvision", "resnet18")  # another spelling of the same
    with torch.device("meta"):
        assert type(build_model("torchvision:resnet18", 3)) is type(build_model("resnet18", 3)) is M.ResNet
    assert resolve("convnext_tiny") == ("torchvision", "convnext_tiny")
    model = build_model("mobilenet_v3_small", 7)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("name, expected", [("resnt18", "resnet18"), ("convnext_tny", "convnext_tiny"),
                                            ("torchvision:vit_b_61", "vit_b_16")])
def test_unknown_name_lists_close_matches(name: str, expected: str) -> None:
    with pytest.raises(UnknownModelError, match="--arch") as info:
        build_model(name, 3)
    assert expected in str(info.value).split("did you mean")[1]
    assert isinstance(info.value, ik.ISNetError) and isinstance(info.value, ValueError)


def test_torchvision_weights_file_gives_the_source_outputs(tmp_path: Path) -> None:
    source = M.resnet18(num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, tmp_path / "ckpt.pt")  # a checkpoint dict
    x = torch.rand(2, 3, 32, 32)
    same = build_model("torchvision:resnet18", 10, weights=str(tmp_path / "r18.pth")).eval()
    torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)  # same class count: the head loads too
    other = build_model("torchvision:resnet18", 4, weights=str(tmp_path / "ckpt.pt"))
    assert other.fc.out_features == 4 and not torch.equal(other.fc.weight[:4], source.fc.weight[:4])
    _same_features(source, other, "fc", x)  # every other layer is the source's
    plain = build_model("resnet18", 4, weights=str(tmp_path / "r18.pth"))  # the plain spelling: the same
    _same_features(source, plain, "fc", x)


def test_weights_name_loads_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A weights name goes through torchvision's own API and cache (here a cached file, as after a download)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    entry = M.get_model_weights("resnet18")["IMAGENET1K_V1"]
    source = M.resnet18(num_classes=len(entry.meta["categories"])).eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / entry.url.rsplit("/", 1)[1])
    model = build_model("torchvision:resnet18", 3, weights="IMAGENET1K_V1")
    assert model.fc.out_features == 3
    _same_features(source, model, "fc", torch.rand(2, 3, 32, 32))
    plain = build_model("resnet18", 3, weights="DEFAULT")
    _same_features(source, plain, "fc", torch.rand(2, 3, 32, 32))


def test_weights_name_shapes_the_model_without_fetching() -> None:
    """Built for a weights name without reading them (what a checkpoint loads into): torchvision's constructor
    arguments for those weights, every layer producing the weights' 1000 class scores replaced."""
    model = build_model("googlenet", 4, weights="DEFAULT", load_weights=False)
    assert model.transform_input and model.aux1 is None and model.fc.out_features == 4
    squeeze = build_model("squeezenet1_1", 4, weights="IMAGENET1K_V1", load_weights=False)
    assert squeeze.classifier[1].out_channels == 4
    assert squeeze.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 4)


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(WeightsError, match="IMAGENET1K_V1") as info:
        build_model("vit_b_16", 3, weights="IMAGENET_V9")
    assert "DEFAULT" in str(info.value) and "--weights" in str(info.value)


def test_weights_of_another_architecture_name_the_keys(tmp_path: Path) -> None:
    torch.save(M.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError) as info:
        build_model("torchvision:resnet18", 10, weights=str(tmp_path / "r34.pth"))
    text = str(info.value)
    assert "unexpected keys: layer1.2.conv1.weight" in text and "--arch" in text
    torch.save(M.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    differ = r"shapes that differ: conv1.weight \(64, 3, 7, 7\) vs the model.s \(64, 3, 3,"
    with pytest.raises(WeightsError, match=differ):
        build_model("resnet18", 10, small_input=True, weights=str(tmp_path / "r18.pth"))  # another stem
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nothing.pt")
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        read_state_dict(tmp_path / "empty.pt")


def test_timm_weights_file_gives_the_source_outputs(tmp_path: Path) -> None:
    timm = require("timm")
    source = timm.create_model("resnet10t", num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "r10t.pth")
    x = torch.rand(2, 3, 32, 32)
    same = build_model("timm:resnet10t", 10, weights=str(tmp_path / "r10t.pth")).eval()
    torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)
    other = build_model("timm:resnet10t", 3, weights=str(tmp_path / "r10t.pth"))
    _same_features(source, other, "fc", x)
    with pytest.raises(UnknownModelError, match="convnext_nano"):
        build_model("timm:convnext_nan", 3)
    with pytest.raises(WeightsError, match="pretrained"):
        build_model("timm:resnet10t", 3, weights="DEFAULT")


def test_safetensors_file(tmp_path: Path) -> None:
    timm = require("timm")
    st = require("safetensors.torch")
    source = timm.create_model("resnet10t", num_classes=10).eval()
    st.save_file(source.state_dict(), str(tmp_path / "r10t.safetensors"))
    model = build_model("timm:resnet10t", 10, weights=str(tmp_path / "r10t.safetensors")).eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_preprocessing_from_the_weights_metadata() -> None:
    pre = preprocessing("resnet50", "IMAGENET1K_V2")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert pre.size == 224 and pre.channels == 3
    assert preprocessing("small") == Preprocess(source=preprocessing("small").source)  # none
    assert not preprocessing("convnext_tiny").normalises  # random init: inputs in [0, 1]
    assert preprocessing("convnext_tiny", "/some/file.pth").mean == (0.485, 0.456, 0.406)  # the default weights'


def test_timm_preprocessing() -> None:
    require("timm")
    pre = preprocessing("timm:vit_tiny_patch16_224", "pretrained", img_size=64)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.size == 64


def test_automatic_bounds_equal_the_hand_worked_ones() -> None:
    """Z^B bounds follow the normalisation per channel; the heatmap equals explain(..., bounds=...) by hand."""
    pre = preprocessing("resnet18", "IMAGENET1K_V1")
    low, high = pre.bounds()
    hand_low = torch.tensor([(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225], dtype=torch.float64)
    hand_high = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], dtype=torch.float64)
    torch.testing.assert_close(low, hand_low, rtol=1e-15, atol=0)
    torch.testing.assert_close(high, hand_high, rtol=1e-15, atol=0)
    model = tiny_resnet(num_classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    inputs = pre.normalize(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(inputs, (x - mean) / std)
    auto = ik.explain(model, inputs, first_layer="zb", bounds=pre.bounds(3))
    hand = ik.explain(model, (x - mean) / std, first_layer="zb", bounds=(hand_low, hand_high))
    torch.testing.assert_close(auto, hand)
    with pytest.raises(ik.ISNetError, match="outside the Z\\^B bounds"):  # the unnormalised bounds do not fit
        ik.explain(model, inputs, first_layer="zb", bounds=(0.0, 1.0))


def test_preprocess_checks_its_values() -> None:
    with pytest.raises(ValueError, match="both mean and std"):
        Preprocess(mean=(0.5,))
    with pytest.raises(ValueError, match="positive"):
        Preprocess(mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="channel"):
        Preprocess(mean=(0.5, 0.5), std=(0.5, 0.5)).normalize(torch.rand(1, 3, 4, 4))
    grey = Preprocess(mean=(0.5,), std=(0.25,))
    assert grey.bounds(3)[0].tolist() == [-2.0, -2.0, -2.0]
    assert Preprocess.from_dict(grey.to_dict()) == grey


def test_weights_that_cannot_be_fetched_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match=r"cannot fetch torchvision's ResNet18_Weights.IMAGENET1K_V1 .*--weights"):
        build_model("torchvision:resnet18", 3, weights="DEFAULT")
