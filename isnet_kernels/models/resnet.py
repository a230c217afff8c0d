"""ResNet-18/34/50 with torchvision's module structure and parameter names.

At the default settings (``width=64``, ``in_channels=3``, ``small_input=False``) every ``state_dict`` key and
shape equals that of ``torchvision.models.resnet18/34/50``, so torchvision weights load with
``load_state_dict(strict=True)`` and give the same outputs.

Two departures that do not touch the ``state_dict``:

* ReLUs are not in-place and the residual sum is ``out = out + identity``, so a traced graph never overwrites
  an activation that a relevance rule still needs.
* ``small_input=True`` swaps the stem for 32x32 to 64x64 images (see :class:`ResNet`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 1x1 convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Parameters
    ----------
    inplanes : int
        Input channels.
    planes : int
        Output channels (``planes * expansion``, with ``expansion = 1``).
    stride : int, default 1
        Stride of ``conv1`` (and of the ``downsample`` convolution).
    downsample : nn.Sequential or None, default None
        ``Sequential(conv1x1, BatchNorm2d)`` projecting the identity when the shape changes.
    """

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Sequential | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape (B, inplanes, H, W)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with a residual connection (ResNet-50, torchvision's "v1.5").

    The stride sits on the 3x3 convolution ``conv2``, as in torchvision.

    Parameters
    ----------
    inplanes : int
        Input channels.
    planes : int
        Bottleneck channels; the block outputs ``planes * expansion`` channels (``expansion = 4``).
    stride : int, default 1
        Stride of ``conv2`` (and of the ``downsample`` convolution).
    downsample : nn.Sequential or None, default None
        ``Sequential(conv1x1, BatchNorm2d)`` projecting the identity when the shape changes.
    """

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Sequential | None = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` of shape (B, inplanes, H, W)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """Residual network with torchvision's attribute names.

    Parameters
    ----------
    block : type[BasicBlock] or type[Bottleneck]
        Residual block class.
    layers : sequence of 4 ints
        Number of blocks in ``layer1`` .. ``layer4``.
    num_classes : int, default 1000
        Outputs of ``fc``.
    in_channels : int, default 3
        Input image channels.
    width : int, default 64
        Channels of the stem and of ``layer1``; ``layer2..4`` use ``2, 4, 8`` times as many (times
        ``block.expansion`` at the block outputs). ``64`` is torchvision's.
    small_input : bool, default False
        If True, the stem is a 3x3 stride-1 convolution (padding 1) and ``maxpool`` is ``nn.Identity``, so the
        network downsamples by 8 instead of 32: suited to 32x32 to 64x64 images (CIFAR, Tiny ImageNet). The
        ``state_dict`` keys stay the same, but ``conv1.weight`` is 3x3 instead of 7x7, so torchvision weights
        no longer load. If False, the stem is torchvision's 7x7 stride-2 convolution followed by a 3x3 stride-2
        max-pool.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise InputError(f"layers must have 4 entries (blocks per stage), got {list(layers)}")
        if width < 1:
            raise InputError(f"width must be a positive int, got {width}")
        self.inplanes = width
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        self._init_weights()

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        """Build one stage; the first block carries the stride and, if needed, the projection shortcut."""
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(_conv1x1(self.inplanes, out_channels, stride), nn.BatchNorm2d(out_channels))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_channels
        stage.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan-out) convolutions, unit BatchNorm scales."""
        if any(p.is_meta for p in self.parameters()):
            return  # nothing to fill on the meta device (and normal_ there is slow to set up)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (B, num_classes) for images ``x`` of shape (B, in_channels, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000, in_channels: int = 3, width: int = 64, small_input: bool = False) -> ResNet:
    """ResNet-18 (``BasicBlock``, 2-2-2-2 blocks); see :class:`ResNet` for the arguments.

    Returns
    -------
    ResNet
        With the defaults, key- and shape-compatible with ``torchvision.models.resnet18``.
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, width, small_input)


def resnet34(num_classes: int = 1000, in_channels: int = 3, width: int = 64, small_input: bool = False) -> ResNet:
    """ResNet-34 (``BasicBlock``, 3-4-6-3 blocks); see :class:`ResNet` for the arguments.

    Returns
    -------
    ResNet
        With the defaults, key- and shape-compatible with ``torchvision.models.resnet34``.
    """
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, width, small_input)


def resnet50(num_classes: int = 1000, in_channels: int = 3, width: int = 64, small_input: bool = False) -> ResNet:
    """ResNet-50 (``Bottleneck``, 3-4-6-3 blocks); see :class:`ResNet` for the arguments.

    Returns
    -------
    ResNet
        With the defaults, key- and shape-compatible with ``torchvision.models.resnet50``.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, width, small_input)
