"""Tests of the models by name: the package's SmallCNN, torchvision's builders under the names the package's former
ResNet/VGG/DenseNet copies had (their checkpoints load), and the rules ``small_input`` and ``in_channels``.

The state-dict listings below (count and sha256 of the sorted ``key:shape`` lines) were taken from the package's
former copies (``isnet_kernels.models.resnet``, ``vgg``, ``densenet``) with the arguments shown; at their default
settings they had been checked key by key against torchvision 0.28.0, and torchvision's builders under the same
names must give the same listings, so the copies' checkpoints load into them.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from isnet_kernels.models import (
    ARCHITECTURES,
    ModelArgumentError,
    SmallCNN,
    UnknownModelError,
    WeightsError,
    build_model,
)
from isnet_kernels.train import TrainConfig, load_run
from isnet_kernels.train.checkpoint import FORMAT, save_checkpoint

from ..optional import require

M = require("torchvision.models")


def _listing(model: nn.Module) -> tuple[int, str]:
    """Entries and sha256 of the sorted ``key:shape`` lines of the model's state_dict."""
    lines = sorted(f"{k}:{','.join(map(str, v.shape))}" for k, v in model.state_dict().items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


# (name, the former copy's arguments, classes, in_channels) -> (state_dict entries, listing digest, torchvision class)
FORMER_COPIES: dict[tuple[str, str], tuple[dict, int, int, int, str, type]] = {
    ("resnet18", "default"): ({}, 1000, 3, 122, "a3774690a390f47f956c620de1335b5af0fff2bfa584502c1f203d5be4e60744",
                              M.ResNet),
    ("resnet18", "small_input, grey"): ({"small_input": True}, 3, 1, 122,
                                        "edfea77ea8103b2f0cddb4ea5e65bdb1fd11aa6f40fa55b7cdc3166dbbeee623", M.ResNet),
    ("resnet34", "default"): ({}, 3, 3, 218, "4156454e4895b403e6e0cbe89e2c492f0341fede533ed3ab6e95d83541263d18",
                              M.ResNet),
    ("resnet50", "small_input"): ({"small_input": True, "width": 64}, 3, 3, 320,
                                  "a5c5157c0a980676c3ace969ef6875281d3733b59abe5dfbacdfc068c9e7cd15", M.ResNet),
    ("vgg11", "default"): ({}, 1000, 3, 22, "ee77761cc206f3b35c5a05ad247353279d2c140cb320323280e70d1dbf3fdcc8", M.VGG),
    ("vgg11", "batch_norm"): ({"batch_norm": True}, 3, 3, 62,
                              "7532329946878746be845c3b33b7d93b7ced60b5a9ceb4ec57070031afa33549", M.VGG),
    ("vgg16", "default"): ({"hidden": 4096, "pool_size": 7}, 3, 3, 32,
                           "424dea371afb632b5fe921a6cadca083b1f5041c19a1c9692c0ff64177a05d9d", M.VGG),
    ("vgg16", "batch_norm"): ({"batch_norm": True}, 1000, 3, 97,
                              "362e72fb873588d62101443b2eb639c0d3c49200797b7e0d2b7dedc0c42be5f3", M.VGG),
    ("densenet121", "default"): ({"growth_rate": 32}, 1000, 3, 727,
                                 "6d8818f57ac0b5e172b5f75cf1825164b91c09aa76dc0dd02bf6a9dc71533e5d", M.DenseNet),
    ("densenet121", "small_input"): ({"small_input": True}, 3, 3, 727,
                                     "f75fb20b004f1d5683d501f98b31f0aae1345c1575c4e877f078848952159408", M.DenseNet),
}


@pytest.mark.parametrize("name, case", list(FORMER_COPIES))
def test_former_names_build_torchvision_with_the_copies_keys(name: str, case: str) -> None:
    kwargs, classes, channels, entries, digest, cls = FORMER_COPIES[name, case]
    with torch.device("meta"):
        model = build_model(name, classes, channels, **kwargs)
    assert type(model) is cls
    assert _listing(model) == (entries, digest)


@pytest.fixture(scope="module")
def former_state() -> dict[str, torch.Tensor]:
    """A state dict as the former ``resnet18(num_classes=3, in_channels=1, small_input=True)`` wrote it: a grey 3x3
    stride-1 stem (written here by hand) on torchvision's ResNet-18 keys, random values everywhere."""
    gen = torch.Generator().manual_seed(1)
    with torch.device("meta"):  # names and shapes
        state = M.resnet18(num_classes=3).state_dict()
    state["conv1.weight"] = torch.empty(64, 1, 3, 3)
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.rand(value.shape, generator=gen) + (0.5 if key.endswith("running_var") else -0.5)
        else:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    lines = sorted(f"{k}:{','.join(map(str, v.shape))}" for k, v in state.items())
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert digest == FORMER_COPIES["resnet18", "small_input, grey"][4]  # exactly the former copy's listing
    return state


def _write_run(run: Path, arch: str, kwargs: dict, state: dict, *, spec: bool) -> None:
    config = TrainConfig(data=str(run.parent / "data"), out=str(run), arch=arch, model_kwargs=kwargs)
    checkpoint = {"format": FORMAT, "model": state, "config": config.to_dict(), "classes": ["a", "b", "c"],
                  "in_channels": 1, "epoch": 1}
    if spec:
        checkpoint["model_spec"] = {"arch": arch, "kwargs": kwargs, "weights": None, "num_classes": 3,
                                    "in_channels": 1, "preprocess": None}
    run.mkdir()
    save_checkpoint(checkpoint, run / "last.pt")


@pytest.mark.parametrize("spec", [True, False], ids=["model_spec", "before_model_spec"])
def test_a_former_copys_checkpoint_loads_into_torchvision(spec: bool, former_state: dict[str, torch.Tensor],
                                                          tmp_path: Path) -> None:
    """A run directory of the former ``--arch resnet18 --model-arg width=64 --model-arg small_input=True`` on grey
    images (with and without the ``model_spec`` newer checkpoints keep) is rebuilt as torchvision's ResNet-18 with
    the same parameters and computes with them."""
    state = former_state
    _write_run(tmp_path / "run", "resnet18", {"width": 64, "small_input": True}, state, spec=spec)
    run = load_run(tmp_path / "run")
    assert type(run.model) is M.ResNet and isinstance(run.model.maxpool, nn.Identity)
    loaded = run.model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with torch.device("meta"):  # the former copy's layout, built here by hand from torchvision's model
        hand = M.resnet18(num_classes=3)
        hand.conv1, hand.maxpool = nn.Conv2d(1, 64, 3, 1, 1, bias=False), nn.Identity()
    hand.load_state_dict(state, strict=True, assign=True)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run.model(x), hand.eval()(x), rtol=0, atol=0)


def test_a_former_copys_checkpoint_that_torchvision_cannot_build_says_what_to_do(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", "resnet18", {"width": 8}, {"fc.weight": torch.zeros(3, 64)}, spec=True)
    with pytest.raises(ModelArgumentError, match=r"width=8 .*former resnet18 copy.*--arch small --model-arg width"):
        load_run(tmp_path / "run")


def test_former_arguments_translate_or_say_what_to_do() -> None:
    with torch.device("meta"):
        bn = build_model("vgg11", 3, batch_norm=True)
        plain = build_model("vgg11", 3, batch_norm=False, width=64, hidden=4096, pool_size=7)
        dense = build_model("densenet121", 3, growth_rate=32, block_config=[6, 12, 24, 16], num_init_features=64)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert dense.classifier.in_features == 1024
    with pytest.raises(ModelArgumentError, match=r"growth_rate=4 .*torchvision.models.DenseNet\(growth_rate="):
        build_model("densenet121", 3, growth_rate=4)
    with pytest.raises(ModelArgumentError, match=r"hidden=16 .*former vgg11 copy.*fixed at hidden=4096"):
        build_model("vgg11", 3, hidden=16)
    with pytest.raises(ModelArgumentError, match=r"batch_norm='maybe'.*True or False.*vgg11_bn"):
        build_model("vgg11", 3, batch_norm="maybe")
    with pytest.raises(TypeError, match="depth"):  # an argument no former copy had: torchvision's own error
        build_model("resnet18", 3, depth=8)


def test_small_input_swaps_the_stem_and_keeps_the_keys() -> None:
    with torch.device("meta"):
        ref, small = build_model("resnet18", 5), build_model("resnet18", 5, small_input=True)
        dref, dsmall = build_model("densenet121", 5), build_model("densenet121", 5, small_input=True)
    assert list(ref.state_dict()) == list(small.state_dict())
    assert tuple(small.conv1.weight.shape) == (64, 3, 3, 3) and small.conv1.stride == (1, 1)
    assert small.conv1.padding == (1, 1) and small.conv1.bias is None
    assert isinstance(small.maxpool, nn.Identity) and isinstance(ref.maxpool, nn.MaxPool2d)
    assert list(dref.state_dict()) == list(dsmall.state_dict())
    assert tuple(dsmall.features.conv0.weight.shape) == (64, 3, 3, 3) and isinstance(dsmall.features.pool0, nn.Identity)
    with torch.device("meta"):  # downsamples by 8 instead of 32: a 32x32 image reaches layer4 at 4x4
        trunk = nn.Sequential(*list(small.children())[:-2])
        assert trunk(torch.empty(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    with pytest.raises(ModelArgumentError, match="small_input=True applies to torchvision's ResNet and DenseNet"), \
            torch.device("meta"):
        build_model("vit_b_16", 3, small_input=True)
    with pytest.raises(WeightsError, match="small_input=True replaces the stem"):
        build_model("resnet18", 3, small_input=True, weights="DEFAULT", load_weights=False)


def test_in_channels_replaces_the_first_convolution() -> None:
    with torch.device("meta"):
        grey = build_model("resnet18", 4, in_channels=1)
        dense = build_model("densenet121", 4, in_channels=2)
        vit = build_model("vit_b_16", 4, in_channels=1)
    assert tuple(grey.conv1.weight.shape) == (64, 1, 7, 7) and grey.conv1.stride == (2, 2)
    assert tuple(dense.features.conv0.weight.shape) == (64, 2, 7, 7)
    assert tuple(vit.conv_proj.weight.shape) == (768, 1, 16, 16) and vit.conv_proj.bias is not None
    assert grey.eval()(torch.empty(1, 1, 32, 32, device="meta")).shape == (1, 4)
    with pytest.raises(WeightsError, match="take 3-channel images.*--channels 3"):
        build_model("resnet18", 3, 1, weights="DEFAULT", load_weights=False)


def test_build_model_known_names() -> None:
    assert set(ARCHITECTURES) == {"small"}
    model = build_model("small", num_classes=4, in_channels=1)
    assert isinstance(model, SmallCNN) and model.fc.out_features == 4
    with torch.device("meta"):
        r50 = build_model("resnet50", 4, width_per_group=16)  # torchvision's own arguments pass through
    assert r50.layer1[0].conv1.out_channels == 16 and r50.fc.out_features == 4
    with pytest.raises(TypeError):
        build_model("small", 3, small_input=True)
    with pytest.raises(WeightsError, match="no named pretrained weights"):
        build_model("small", 3, weights="DEFAULT")


@pytest.mark.parametrize("arch", ["resnet1O1", "ResNet18", "", None])
def test_build_model_unknown_name(arch: object) -> None:
    with pytest.raises(ValueError, match="--arch") as info:
        build_model(arch, 10)  # type: ignore[arg-type]
    assert isinstance(info.value, UnknownModelError)
    if arch:  # the package's names are listed, close matches suggested
        assert "small" in str(info.value) and "torchvision classification builder" in str(info.value)
        assert "did you mean" in str(info.value) and "resnet1" in str(info.value).split("did you mean")[1]


# SmallCNN: forward shapes, tracing (constructor kwargs, input shape)
SMALL_CONFIGS: dict[str, tuple[Callable[..., nn.Module], dict, tuple[int, ...]]] = {
    "small": (SmallCNN, {}, (3, 1, 8, 8)),
    "small_rgb32": (SmallCNN, {"in_channels": 3, "width": 8}, (3, 3, 32, 32)),
}

ALLOWED_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear)
ALLOWED_FUNCTIONS = {torch.flatten, operator.add}


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_small_cnn_forward_shape_and_fx_trace(name: str) -> None:
    constructor, kwargs, shape = SMALL_CONFIGS[name]
    model = constructor(num_classes=5, **kwargs).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (x.shape[0], 5)
    assert torch.isfinite(y).all()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), y, rtol=0, atol=0)
    for node in traced.graph.nodes:
        if node.op == "call_module":
            assert isinstance(traced.get_submodule(node.target), ALLOWED_MODULES), node.format_node()
            assert not getattr(traced.get_submodule(node.target), "inplace", False), node.format_node()
        elif node.op == "call_function":
            assert node.target in ALLOWED_FUNCTIONS, node.format_node()
        else:
            assert node.op in ("placeholder", "output", "get_attr"), node.format_node()


def test_small_cnn_backward_reaches_every_parameter() -> None:
    model = SmallCNN(num_classes=5, in_channels=3, width=4).train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        SmallCNN(width=0)
