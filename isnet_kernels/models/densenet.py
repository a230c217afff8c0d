"""DenseNet-BC with torchvision's module structure and parameter names.

At the default settings (``in_channels=3``, ``small_input=False``, torchvision's growth rate and block
configuration) every ``state_dict`` key and shape equals that of ``torchvision.models.densenet121`` as the model
holds it (keys such as ``features.denseblock1.denselayer1.norm1.weight``), so a torchvision ``state_dict`` loads
with ``load_state_dict(strict=True)``. (The old ``norm.1``-style keys in torchvision's checkpoint files are
renamed by torchvision's loader before they reach the model; rename them the same way to load a raw file.)

The code is written to be traced by ``torch.fx.symbolic_trace``: no checkpointing, no memory-efficient path, no
type checks on inputs and no data-dependent control flow. ReLUs are not in-place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenseNet", "densenet121"]


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 producing ``growth_rate`` new channels from all earlier features.

    Parameters
    ----------
    num_input_features : int
        Total channels of the features the layer receives.
    growth_rate : int
        Output channels.
    bn_size : int
        The 1x1 bottleneck has ``bn_size * growth_rate`` channels.
    drop_rate : float, default 0.0
        Dropout probability on the output (``F.dropout``, applied only if positive).
    """

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features: list[Tensor]) -> Tensor:
        """New features (B, growth_rate, H, W) from the list of all earlier feature maps of the block."""
        x = features[0] if len(features) == 1 else torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        x = self.conv2(self.relu2(self.norm2(x)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers named ``denselayer1..N``; outputs the input concatenated with all new features.

    Parameters
    ----------
    num_layers : int
        Number of dense layers.
    num_input_features : int
        Channels of the block input.
    bn_size : int
        Bottleneck factor of each layer.
    growth_rate : int
        Channels each layer adds.
    drop_rate : float, default 0.0
        Dropout probability of each layer.
    """

    def __init__(
        self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenation (B, num_input_features + num_layers * growth_rate, H, W) of ``x`` and every layer's output."""
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 then 2x2 average pooling between dense blocks.

    Parameters
    ----------
    num_input_features : int
        Input channels.
    num_output_features : int
        Output channels.
    """

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al., 2017) with torchvision's attribute names.

    Parameters
    ----------
    growth_rate : int, default 32
        Channels each dense layer adds (``k`` in the paper).
    block_config : sequence of ints, default (6, 12, 24, 16)
        Dense layers per block.
    num_init_features : int, default 64
        Channels of the stem convolution.
    bn_size : int, default 4
        Bottleneck factor: the 1x1 convolutions output ``bn_size * growth_rate`` channels.
    drop_rate : float, default 0.0
        Dropout probability after each dense layer.
    num_classes : int, default 1000
        Outputs of ``classifier``.
    in_channels : int, default 3
        Input image channels.
    small_input : bool, default False
        If True, ``features.conv0`` is a 3x3 stride-1 convolution (padding 1) and ``features.pool0`` is
        ``nn.Identity``, so the network downsamples by 8 instead of 32: suited to 32x32 to 64x64 images. Keys are
        unchanged but ``conv0.weight`` is 3x3, so torchvision weights no longer load. If False, the stem is
        torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool.
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if small_input:
            conv0 = nn.Conv2d(in_channels, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)
            pool0: nn.Module = nn.Identity()
        else:
            conv0 = nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)
            pool0 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.features = nn.Sequential(
            OrderedDict(
                [("conv0", conv0), ("norm0", nn.BatchNorm2d(num_init_features)), ("relu0", nn.ReLU()), ("pool0", pool0)]
            )
        )
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, channels, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation (Kaiming-normal convolutions, unit BatchNorm scales, zero biases)."""
        if any(p.is_meta for p in self.parameters()):
            return  # nothing to fill on the meta device (and normal_ there is slow to set up)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (B, num_classes) for images ``x`` of shape (B, in_channels, H, W)."""
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def densenet121(
    num_classes: int = 1000,
    in_channels: int = 3,
    growth_rate: int = 32,
    block_config: Sequence[int] = (6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
    small_input: bool = False,
    drop_rate: float = 0.0,
) -> DenseNet:
    """DenseNet-121; see :class:`DenseNet` for the arguments.

    Returns
    -------
    DenseNet
        With the defaults, key- and shape-compatible with ``torchvision.models.densenet121``.
    """
    return DenseNet(
        growth_rate=growth_rate,
        block_config=block_config,
        num_init_features=num_init_features,
        bn_size=bn_size,
        drop_rate=drop_rate,
        num_classes=num_classes,
        in_channels=in_channels,
        small_input=small_input,
    )
