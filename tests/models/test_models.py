"""Tests of the model zoo: torchvision state_dict compatibility, forward shapes, fx traceability, factory.

The expected state_dict counts, parameter counts, digests and sample shapes below were generated from
torchvision 0.28.0's ``models/resnet.py``, ``vgg.py`` and ``densenet.py`` (with stubbed weight enums; the zoo
tests, tests/lrp/test_zoo.py, run torchvision's own builders) and checked there to equal these models' listings
key by key, in order; a torchvision ``state_dict`` also loaded with ``strict=True`` and gave identical outputs.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet_kernels.models import (
    ARCHITECTURES,
    VGG,
    BasicBlock,
    DenseNet,
    ResNet,
    SmallCNN,
    UnknownModelError,
    build_model,
    densenet121,
    resnet18,
    resnet34,
    resnet50,
    vgg11,
    vgg16,
)


def _listing_digest(model: nn.Module) -> str:
    """sha256 of the sorted ``key:shape`` lines of the model's state_dict."""
    lines = sorted(f"{k}:{','.join(map(str, v.shape))}" for k, v in model.state_dict().items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# name -> (constructor, kwargs, state_dict entries, parameters, digest, {key: shape}), all from torchvision 0.28.0
TORCHVISION: dict[str, tuple[Callable[..., nn.Module], dict, int, int, str, dict[str, tuple[int, ...]]]] = {
    "resnet18": (
        resnet18,
        {},
        122,
        11689512,
        "a3774690a390f47f956c620de1335b5af0fff2bfa584502c1f203d5be4e60744",
        {
            "conv1.weight": (64, 3, 7, 7),
            "layer1.1.bn2.running_var": (64,),
            "layer2.0.downsample.0.weight": (128, 64, 1, 1),
            "layer3.0.downsample.0.weight": (256, 128, 1, 1),
            "layer3.0.downsample.1.num_batches_tracked": (),
            "layer4.1.conv2.weight": (512, 512, 3, 3),
            "fc.weight": (1000, 512),
            "fc.bias": (1000,),
        },
    ),
    "resnet34": (
        resnet34,
        {},
        218,
        21797672,
        "f2424bdfc0c86629bfb1a7529f66ca8fa789321fb279bf4cac93c2867e276626",
        {
            "layer3.5.conv1.weight": (256, 256, 3, 3),
            "layer4.0.downsample.0.weight": (512, 256, 1, 1),
            "fc.weight": (1000, 512),
        },
    ),
    "resnet50": (
        resnet50,
        {},
        320,
        25557032,
        "6fe9bb6b0c0b011487df3bb68e0f2f5781323f00d3a791782a65715e14f16cd7",
        {
            "layer1.0.downsample.0.weight": (256, 64, 1, 1),
            "layer1.2.conv3.weight": (256, 64, 1, 1),
            "layer3.0.conv2.weight": (256, 256, 3, 3),
            "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
            "layer4.2.bn3.running_mean": (2048,),
            "fc.weight": (1000, 2048),
        },
    ),
    "vgg11": (
        vgg11,
        {},
        22,
        132863336,
        "ee77761cc206f3b35c5a05ad247353279d2c140cb320323280e70d1dbf3fdcc8",
        {
            "features.0.weight": (64, 3, 3, 3),
            "features.18.weight": (512, 512, 3, 3),
            "features.18.bias": (512,),
            "classifier.0.weight": (4096, 25088),
            "classifier.3.weight": (4096, 4096),
            "classifier.6.weight": (1000, 4096),
        },
    ),
    "vgg11_bn": (
        vgg11,
        {"batch_norm": True},
        62,
        132868840,
        "3708c48bc651e6c54a7104a37512a4426c4e07023452a99f07ff070943c97b00",
        {
            "features.1.running_mean": (64,),
            "features.25.weight": (512, 512, 3, 3),
            "features.26.running_var": (512,),
            "classifier.0.weight": (4096, 25088),
        },
    ),
    "vgg16": (
        vgg16,
        {},
        32,
        138357544,
        "2933f95db4e21969dc48a418827003c14a44ff8ddd6e611221383a1bff072033",
        {
            "features.0.weight": (64, 3, 3, 3),
            "features.28.weight": (512, 512, 3, 3),
            "classifier.0.weight": (4096, 25088),
            "classifier.6.bias": (1000,),
        },
    ),
    "vgg16_bn": (
        vgg16,
        {"batch_norm": True},
        97,
        138365992,
        "362e72fb873588d62101443b2eb639c0d3c49200797b7e0d2b7dedc0c42be5f3",
        {
            "features.40.weight": (512, 512, 3, 3),
            "features.41.num_batches_tracked": (),
            "classifier.0.weight": (4096, 25088),
        },
    ),
    "densenet121": (
        densenet121,
        {},
        727,
        7978856,
        "6d8818f57ac0b5e172b5f75cf1825164b91c09aa76dc0dd02bf6a9dc71533e5d",
        {
            "features.conv0.weight": (64, 3, 7, 7),
            "features.norm0.running_mean": (64,),
            "features.denseblock1.denselayer1.norm1.weight": (64,),
            "features.denseblock1.denselayer6.conv1.weight": (128, 224, 1, 1),
            "features.denseblock2.denselayer12.conv2.weight": (32, 128, 3, 3),
            "features.transition1.conv.weight": (128, 256, 1, 1),
            "features.transition3.norm.running_var": (1024,),
            "features.denseblock4.denselayer16.norm1.weight": (992,),
            "features.norm5.weight": (1024,),
            "classifier.weight": (1000, 1024),
        },
    ),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_state_dict_matches_torchvision(name: str) -> None:
    constructor, kwargs, n_entries, n_params, digest, samples = TORCHVISION[name]
    with torch.device("meta"):
        model = constructor(**kwargs)
    sd = model.state_dict()
    assert len(sd) == n_entries
    assert sum(p.numel() for p in model.parameters()) == n_params
    for key, shape in samples.items():
        assert tuple(sd[key].shape) == shape, key
    assert _listing_digest(model) == digest


def test_resnet_downsample_only_where_torchvision_has_it() -> None:
    with torch.device("meta"):
        r18, r50 = resnet18(), resnet50()
    assert r18.layer1[0].downsample is None
    assert isinstance(r18.layer2[0].downsample, nn.Sequential) and r18.layer2[0].stride == 2
    assert isinstance(r50.layer1[0].downsample, nn.Sequential) and r50.layer1[0].stride == 1
    assert r50.layer3[0].conv2.stride == (2, 2) and r50.layer3[0].conv1.stride == (1, 1)
    assert isinstance(r18.avgpool, nn.AdaptiveAvgPool2d) and r18.avgpool.output_size == (1, 1)


def test_num_classes_and_in_channels_change_only_their_layers() -> None:
    with torch.device("meta"):
        r = resnet18(num_classes=7, in_channels=1)
        v = vgg11(num_classes=7, in_channels=1)
        d = densenet121(num_classes=7, in_channels=1)
    assert tuple(r.conv1.weight.shape) == (64, 1, 7, 7) and tuple(r.fc.weight.shape) == (7, 512)
    assert tuple(v.features[0].weight.shape) == (64, 1, 3, 3) and tuple(v.classifier[6].weight.shape) == (7, 4096)
    assert tuple(d.features.conv0.weight.shape) == (64, 1, 7, 7) and tuple(d.classifier.weight.shape) == (7, 1024)


def test_small_input_keeps_keys_and_swaps_stem() -> None:
    with torch.device("meta"):
        ref, small = resnet18(width=8), resnet18(width=8, small_input=True)
        dref, dsmall = (densenet121(growth_rate=4, num_init_features=8, small_input=s) for s in (False, True))
    assert list(ref.state_dict()) == list(small.state_dict())
    assert tuple(small.conv1.weight.shape) == (8, 3, 3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity) and isinstance(ref.maxpool, nn.MaxPool2d)
    assert list(dref.state_dict()) == list(dsmall.state_dict())
    assert tuple(dsmall.features.conv0.weight.shape) == (8, 3, 3, 3)
    assert isinstance(dsmall.features.pool0, nn.Identity)


def test_width_scales_channels() -> None:
    with torch.device("meta"):
        r18, r50 = resnet18(width=16), resnet50(width=16)
        v = vgg16(width=16, hidden=32, pool_size=2, num_classes=5)
    assert tuple(r18.layer4[1].conv2.weight.shape) == (128, 128, 3, 3) and r18.fc.in_features == 128
    assert r50.fc.in_features == 16 * 8 * 4
    assert tuple(v.features[28].weight.shape) == (128, 128, 3, 3)
    assert tuple(v.classifier[0].weight.shape) == (32, 128 * 2 * 2)
    assert v.avgpool.output_size == (2, 2)
    assert [type(m) for m in v.classifier] == [nn.Linear, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]


# Small configurations for forward and tracing tests: (constructor, kwargs, input shape)
SMALL_CONFIGS: dict[str, tuple[Callable[..., nn.Module], dict, tuple[int, ...]]] = {
    "resnet18": (resnet18, {"width": 4}, (2, 3, 64, 64)),
    "resnet18_small_input": (resnet18, {"width": 4, "small_input": True, "in_channels": 1}, (2, 1, 32, 32)),
    "resnet34": (resnet34, {"width": 4, "small_input": True}, (2, 3, 32, 32)),
    "resnet50": (resnet50, {"width": 4, "small_input": True}, (2, 3, 32, 32)),
    "vgg11": (vgg11, {"width": 4, "hidden": 16, "pool_size": 1}, (2, 3, 32, 32)),
    "vgg11_bn": (vgg11, {"width": 4, "hidden": 16, "pool_size": 2, "batch_norm": True}, (2, 3, 32, 32)),
    "vgg16": (vgg16, {"width": 4, "hidden": 16, "pool_size": 7}, (1, 3, 32, 32)),
    "densenet121": (densenet121, {"growth_rate": 4, "num_init_features": 8, "bn_size": 2}, (2, 3, 64, 64)),
    "densenet121_small_input": (
        densenet121,
        {"growth_rate": 4, "num_init_features": 8, "bn_size": 2, "block_config": (2, 2, 2, 2), "small_input": True},
        (2, 3, 32, 32),
    ),
    "small": (SmallCNN, {}, (3, 1, 8, 8)),
    "small_rgb32": (SmallCNN, {"in_channels": 3, "width": 8}, (3, 3, 32, 32)),
}

ALLOWED_MODULES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Linear,
    nn.Dropout,
    nn.Identity,
)
ALLOWED_FUNCTIONS = {torch.cat, torch.flatten, operator.add, F.relu, F.adaptive_avg_pool2d}


def _build_small(name: str, num_classes: int = 5) -> tuple[nn.Module, torch.Tensor]:
    constructor, kwargs, shape = SMALL_CONFIGS[name]
    torch.manual_seed(0)
    model = constructor(num_classes=num_classes, **kwargs).eval()
    return model, torch.randn(shape)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_forward_shape_and_fx_trace(name: str) -> None:
    model, x = _build_small(name)
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


def test_densenet_graph_concatenates_real_features() -> None:
    model, _ = _build_small("densenet121_small_input")
    traced = torch.fx.symbolic_trace(model)
    cats = [n for n in traced.graph.nodes if n.target is torch.cat]
    assert cats and all(len(n.args[0]) >= 2 for n in cats)
    # each block: one cat per layer after the first, plus the block output
    assert len(cats) == 4 * 2


def test_densenet_dropout_is_traceable_and_active_in_training() -> None:
    torch.manual_seed(0)
    model = densenet121(
        num_classes=3, growth_rate=4, num_init_features=8, bn_size=2, block_config=(1, 1, 1, 1), drop_rate=0.5
    )
    traced = torch.fx.symbolic_trace(model)
    assert any(n.target is F.dropout for n in traced.graph.nodes)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_backward_reaches_every_parameter() -> None:
    model, x = _build_small("resnet18_small_input")
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_state_dict_roundtrip_strict() -> None:
    a, x = _build_small("densenet121")
    torch.manual_seed(1)
    b = densenet121(num_classes=5, **SMALL_CONFIGS["densenet121"][1]).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x))


def test_build_model_known_names() -> None:
    assert set(ARCHITECTURES) == {"small", "resnet18", "resnet34", "resnet50", "vgg11", "vgg16", "densenet121"}
    expected = {
        "small": SmallCNN,
        "resnet18": ResNet,
        "resnet34": ResNet,
        "resnet50": ResNet,
        "vgg11": VGG,
        "vgg16": VGG,
        "densenet121": DenseNet,
    }
    with torch.device("meta"):
        for arch, cls in expected.items():
            model = build_model(arch, num_classes=4, in_channels=1)
            assert isinstance(model, cls), arch
            first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
            last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            assert first.in_channels == 1 and last.out_features == 4, arch


def test_build_model_forwards_kwargs() -> None:
    model = build_model("resnet18", 3, width=4, small_input=True)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(TypeError):
        build_model("small", 3, small_input=True)


@pytest.mark.parametrize("arch", ["resnet1O1", "ResNet18", "", None])
def test_build_model_unknown_name(arch: object) -> None:
    with pytest.raises(ValueError, match="--arch") as info:
        build_model(arch, 10)  # type: ignore[arg-type]
    assert isinstance(info.value, UnknownModelError)
    if arch:  # the package's names are listed, close matches suggested
        for name in ARCHITECTURES:
            assert name in str(info.value)
        assert "did you mean" in str(info.value) and "resnet1" in str(info.value).split("did you mean")[1]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ResNet(BasicBlock, [2, 2, 2])
    with pytest.raises(ValueError):
        SmallCNN(width=0)
