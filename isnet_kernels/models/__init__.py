"""Model zoo: ResNet, VGG and DenseNet with torchvision's parameter names, and a small CNN for tiny images.

At their default (torchvision) settings the ResNet, VGG and DenseNet constructors build models whose
``state_dict`` keys and shapes equal torchvision's, so torchvision weights load with ``strict=True``. All models
use only layers the LRP engine has rules for and trace with ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import InputError
from .densenet import DenseNet, densenet121
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .small import SmallCNN
from .vgg import VGG, vgg11, vgg16

__all__ = [
    "ARCHITECTURES",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "ResNet",
    "SmallCNN",
    "build_model",
    "densenet121",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg11",
    "vgg16",
]

#: Constructor for each name :func:`build_model` accepts.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small": SmallCNN,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "densenet121": densenet121,
}


def build_model(arch: str, num_classes: int, in_channels: int = 3, **kw: Any) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    arch : str
        One of ``"small"``, ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"vgg11"``, ``"vgg16"``,
        ``"densenet121"``.
    num_classes : int
        Number of outputs.
    in_channels : int, default 3
        Input image channels.
    **kw
        Further keyword arguments of the constructor, e.g. ``width`` and ``small_input`` (ResNet), ``width``,
        ``batch_norm``, ``hidden`` and ``pool_size`` (VGG), ``growth_rate`` and ``small_input`` (DenseNet),
        ``width`` (small).

    Returns
    -------
    nn.Module
        The model, freshly initialised.

    Raises
    ------
    ValueError
        If ``arch`` is not a known name; the message lists the valid ones.
    """
    try:
        constructor = ARCHITECTURES[arch]
    except (KeyError, TypeError):
        valid = ", ".join(repr(name) for name in ARCHITECTURES)
        raise InputError(f"unknown architecture {arch!r}; valid names are {valid}") from None
    return constructor(num_classes=num_classes, in_channels=in_channels, **kw)
