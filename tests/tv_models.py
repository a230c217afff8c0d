"""Small torchvision models for fast tests: torchvision's own classes, a few channels wide.

torchvision's builders (``resnet18``, ``vgg11``, ``densenet121``) have ImageNet widths: 11 to 133 million
parameters, too slow for float64 comparisons on every test run. These helpers build the same classes
(``torchvision.models.ResNet`` with its ``BasicBlock``/``Bottleneck`` stages, ``VGG`` over ``make_layers``,
``DenseNet``) with the channel counts scaled down, so that the LRP engine and zennit see exactly torchvision's
modules (in-place ReLUs, ``out += identity``, the functional DenseNet head), only narrower:

* :func:`tiny_resnet`: torchvision's own stage builder (``ResNet._make_layer``) at ``width, 2 * width, 4 * width,
  8 * width`` channels instead of 64 to 512;
* :func:`tiny_vgg`: a VGG configuration of torchvision's (``cfgs``) with every width scaled by ``width / 64``, an
  ``AdaptiveAvgPool2d(pool_size)`` and ``hidden`` units in the classifier instead of 7x7 and 4096;
* :func:`tiny_densenet`: ``torchvision.models.DenseNet`` with its own ``growth_rate``, ``block_config``,
  ``num_init_features`` and ``bn_size`` arguments.

``small_input=True`` is the package's rule (:func:`isnet_kernels.models.hub.small_stem`): a 3x3 stride-1 stem, no
stem max-pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from isnet_kernels.models.hub import small_stem

from .optional import require

require("torchvision.models")

from torchvision.models import VGG, DenseNet, ResNet  # noqa: E402
from torchvision.models.resnet import BasicBlock, Bottleneck  # noqa: E402
from torchvision.models.vgg import cfgs, make_layers  # noqa: E402

__all__ = ["BasicBlock", "Bottleneck", "DenseNet", "ResNet", "VGG", "tiny_densenet", "tiny_resnet", "tiny_vgg"]

#: torchvision's VGG configurations by builder name.
VGG_CONFIGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def _torchvision_init(model: nn.Module) -> None:
    """torchvision's ResNet/VGG initialisation of the replaced layers (Kaiming-normal convolutions, unit
    BatchNorm scales, N(0, 0.01) linear weights, zero biases)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def _check_built(model: nn.Module) -> nn.Module:
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()]), "a layer was left on meta"
    return model


def tiny_resnet(block: type[BasicBlock] | type[Bottleneck] = BasicBlock, layers: Sequence[int] = (2, 2, 2, 2),
                width: int = 4, num_classes: int = 5, in_channels: int = 3,
                small_input: bool = False) -> ResNet:
    """torchvision's ``ResNet`` with ``layers`` blocks per stage at ``width`` base channels (torchvision: 64);
    ``resnet18`` is ``layers=(2, 2, 2, 2)``, ``resnet50`` ``block=Bottleneck, layers=(3, 4, 6, 3)``."""
    with torch.device("meta"):  # the ImageNet-wide layers it is built with are replaced below
        model = ResNet(block, [1, 1, 1, 1], num_classes=num_classes)
    model.inplanes = width
    model.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(block, width, layers[0])
    model.layer2 = model._make_layer(block, 2 * width, layers[1], stride=2)
    model.layer3 = model._make_layer(block, 4 * width, layers[2], stride=2)
    model.layer4 = model._make_layer(block, 8 * width, layers[3], stride=2)
    model.fc = nn.Linear(8 * width * block.expansion, num_classes)
    _torchvision_init(model)
    nn.init.uniform_(model.fc.weight, -(8 * width * block.expansion) ** -0.5, (8 * width * block.expansion) ** -0.5)
    if small_input:
        small_stem(model)
    return _check_built(model)


def tiny_vgg(name: str = "vgg11", width: int = 4, hidden: int = 16, pool_size: int = 1, batch_norm: bool = False,
             num_classes: int = 5) -> VGG:
    """torchvision's ``VGG`` over ``make_layers`` of the configuration of ``name`` with every width scaled by
    ``width / 64``, ``AdaptiveAvgPool2d(pool_size)`` and ``hidden`` classifier units (torchvision: 7 and 4096)."""
    config = [v if v == "M" else max(1, int(v) * width // 64) for v in cfgs[VGG_CONFIGS[name]]]
    with torch.device("meta"):  # the 4096-wide classifier it is built with is replaced below
        model = VGG(nn.Sequential(), num_classes=num_classes, init_weights=False)
    model.features = make_layers(config, batch_norm=batch_norm)
    channels = [v for v in config if v != "M"][-1]
    model.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
    model.classifier = nn.Sequential(nn.Linear(channels * pool_size * pool_size, hidden), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(hidden, num_classes))
    _torchvision_init(model)
    return _check_built(model)


def tiny_densenet(growth_rate: int = 4, block_config: Sequence[int] = (2, 2, 2), num_init_features: int = 8,
                  bn_size: int = 2, num_classes: int = 5, drop_rate: float = 0.0,
                  small_input: bool = False) -> DenseNet:
    """``torchvision.models.DenseNet`` with its own size arguments (``densenet121``: 32, (6, 12, 24, 16), 64, 4)."""
    model = DenseNet(growth_rate, tuple(block_config), num_init_features, bn_size=bn_size, drop_rate=drop_rate,
                     num_classes=num_classes)
    if small_input:
        small_stem(model)
    return model
