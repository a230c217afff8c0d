"""A compact CNN for tiny images (8x8 to 32x32 digits and the like) that trains in seconds on a CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks, global average pooling and a linear classifier.

    ``features`` holds, per block ``i = 0, 1, 2``, ``Conv2d(3x3, padding 1, no bias)``, ``BatchNorm2d``, ``ReLU``
    and ``MaxPool2d(2, 2)``, with ``width``, ``2 * width`` and ``4 * width`` channels; then ``avgpool`` (global),
    flatten and ``fc``. Each max-pool halves the spatial size (rounding down), so inputs must be at least 8x8.

    Parameters
    ----------
    num_classes : int, default 10
        Outputs of ``fc``.
    in_channels : int, default 1
        Input image channels.
    width : int, default 16
        Channels of the first block.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise InputError(f"width must be a positive int, got {width!r}", param="width")
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (B, num_classes) for images ``x`` of shape (B, in_channels, H, W), H, W >= 8."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)
