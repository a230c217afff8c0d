"""VGG-11/16 (optionally with BatchNorm) with torchvision's module structure and parameter names.

At the default settings (``width=64``, ``hidden=4096``, ``pool_size=7``, ``in_channels=3``) every ``state_dict``
key and shape equals that of ``torchvision.models.vgg11/vgg16`` (``vgg11_bn/vgg16_bn`` with
``batch_norm=True``), so torchvision weights load with ``load_state_dict(strict=True)``. ReLUs are not in-place,
which does not touch the ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["VGG", "make_vgg_features", "vgg11", "vgg16"]

#: Convolution widths at ``width=64`` ("M" is a 2x2 max-pool); torchvision's configurations "A" and "D".
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_vgg_features(
    config: Sequence[int | str], in_channels: int = 3, batch_norm: bool = False, width: int = 64
) -> tuple[nn.Sequential, int]:
    """Build the ``features`` stack of a VGG.

    Parameters
    ----------
    config : sequence of int or "M"
        Convolution widths at ``width=64``; ``"M"`` inserts ``MaxPool2d(2, 2)``.
    in_channels : int, default 3
        Input image channels.
    batch_norm : bool, default False
        Insert ``BatchNorm2d`` between each convolution and its ReLU.
    width : int, default 64
        Every convolution width is scaled by ``width / 64`` (at least 1 channel).

    Returns
    -------
    features : nn.Sequential
        The layers, indexed as torchvision indexes them.
    out_channels : int
        Channels of the last convolution.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = max(1, int(v) * width // 64)
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        channels = out
    return nn.Sequential(*layers), channels


class VGG(nn.Module):
    """VGG classifier: ``features`` -> ``avgpool`` -> flatten -> ``classifier``.

    Parameters
    ----------
    features : nn.Sequential
        Convolutional stack, e.g. from :func:`make_vgg_features`.
    feature_channels : int
        Channels output by ``features``.
    num_classes : int, default 1000
        Outputs of the last linear layer.
    hidden : int, default 4096
        Width of the two hidden linear layers.
    pool_size : int, default 7
        Output size of ``avgpool = AdaptiveAvgPool2d((pool_size, pool_size))``; the first linear layer takes
        ``feature_channels * pool_size**2`` inputs. Use 1 for small images (e.g. 32x32, pooled to 1x1 already).
    dropout : float, default 0.5
        Dropout probability of the two ``nn.Dropout`` layers.
    """

    def __init__(
        self,
        features: nn.Sequential,
        feature_channels: int,
        num_classes: int = 1000,
        hidden: int = 4096,
        pool_size: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(feature_channels * pool_size * pool_size, hidden),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation (Kaiming-normal convolutions, N(0, 0.01) linear weights, zero biases)."""
        if any(p.is_meta for p in self.parameters()):
            return  # nothing to fill on the meta device (and normal_ there is slow to set up)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (B, num_classes) for images ``x`` of shape (B, in_channels, H, W)."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(
    name: str, num_classes: int, in_channels: int, batch_norm: bool, width: int, hidden: int, pool_size: int
) -> VGG:
    features, channels = make_vgg_features(VGG_CONFIGS[name], in_channels, batch_norm, width)
    return VGG(features, channels, num_classes=num_classes, hidden=hidden, pool_size=pool_size)


def vgg11(
    num_classes: int = 1000,
    in_channels: int = 3,
    batch_norm: bool = False,
    width: int = 64,
    hidden: int = 4096,
    pool_size: int = 7,
) -> VGG:
    """VGG-11 (configuration "A"); see :func:`make_vgg_features` and :class:`VGG` for the arguments.

    Returns
    -------
    VGG
        With the defaults, key- and shape-compatible with ``torchvision.models.vgg11`` (``vgg11_bn`` when
        ``batch_norm=True``).
    """
    return _vgg("vgg11", num_classes, in_channels, batch_norm, width, hidden, pool_size)


def vgg16(
    num_classes: int = 1000,
    in_channels: int = 3,
    batch_norm: bool = False,
    width: int = 64,
    hidden: int = 4096,
    pool_size: int = 7,
) -> VGG:
    """VGG-16 (configuration "D"); see :func:`make_vgg_features` and :class:`VGG` for the arguments.

    Returns
    -------
    VGG
        With the defaults, key- and shape-compatible with ``torchvision.models.vgg16`` (``vgg16_bn`` when
        ``batch_norm=True``).
    """
    return _vgg("vgg16", num_classes, in_channels, batch_norm, width, hidden, pool_size)
