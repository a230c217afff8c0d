"""Model zoo: ResNet, VGG and DenseNet with torchvision's parameter names, a small CNN for tiny images, and
:func:`build_model`, which also builds any torchvision classifier or timm model by name with pretrained weights
(:mod:`.hub`) and knows the preprocessing those weights expect (:class:`Preprocess`).

At their default (torchvision) settings the ResNet, VGG and DenseNet constructors build models whose
``state_dict`` keys and shapes equal torchvision's, so torchvision weights load with ``strict=True``. All models
use only layers the LRP engine has rules for and trace with ``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .densenet import DenseNet, densenet121
from .hub import MissingExtraError, UnknownModelError, WeightsError, load_state, preprocessing, read_state_dict
from .preprocess import Preprocess
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .small import SmallCNN
from .vgg import VGG, vgg11, vgg16

__all__ = [
    "ARCHITECTURES",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "MissingExtraError",
    "Preprocess",
    "ResNet",
    "SmallCNN",
    "UnknownModelError",
    "WeightsError",
    "build_model",
    "densenet121",
    "load_state",
    "preprocessing",
    "read_state_dict",
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


def build_model(arch: str, num_classes: int, in_channels: int = 3, *, weights: str | None = None,
                load_weights: bool = True, **kw: Any) -> nn.Module:
    """Build a model by name, optionally with pretrained weights.

    Parameters
    ----------
    arch : str
        One of the package's names (:data:`ARCHITECTURES`: ``"small"``, ``"resnet18"``, ``"resnet34"``,
        ``"resnet50"``, ``"vgg11"``, ``"vgg16"``, ``"densenet121"``), any torchvision classification builder name
        (``"convnext_tiny"``, ``"vit_b_16"``, ...; ``"torchvision:resnet18"`` for torchvision's own where the
        package has a name), or ``"timm:NAME"`` for a timm model (extras ``[vision]``, ``[timm]``).
    num_classes : int
        Number of outputs (the classifier head is built or replaced for it).
    in_channels : int, default 3
        Input image channels (torchvision's builders take 3).
    weights : str, optional
        A torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V2"``, ...; also for the package's
        torchvision-compatible names), ``"pretrained"`` (timm's default tag), or a weights file (``.pt``/``.pth``
        state dict or checkpoint, ``.safetensors``); the head is left out when its shape differs, every other key
        must match (:func:`load_state`).
    load_weights : bool, default True
        False builds the model as for ``weights`` without reading them (to load a checkpoint into).
    **kw
        Further keyword arguments of the constructor, e.g. ``width`` and ``small_input`` (ResNet), ``width``,
        ``batch_norm``, ``hidden`` and ``pool_size`` (VGG), ``growth_rate`` and ``small_input`` (DenseNet),
        ``width`` (small); torchvision's and timm's own (``image_size``, ``img_size``, ``drop_rate``, ...).

    Returns
    -------
    nn.Module
        The model.

    Raises
    ------
    UnknownModelError
        If ``arch`` is not a known name; the message lists close matches.
    MissingExtraError
        If torchvision or timm is needed but not installed (the message names the extra).
    WeightsError
        If the weights do not exist or do not fit (missing and unexpected keys listed).
    """
    from .hub import build

    return build(arch, num_classes, in_channels, weights=weights, load_weights=load_weights, **kw)
