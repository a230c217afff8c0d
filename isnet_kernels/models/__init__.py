"""Models by name: the package's small CNN for tiny images, any torchvision classifier and any timm model
(:func:`build_model`, :mod:`.hub`), their pretrained weights and the preprocessing those weights expect
(:class:`Preprocess`).

``resnet18``, ``vgg11``, ``densenet121``, ... are torchvision's builders (the package keeps no copies of them);
``small`` (:class:`SmallCNN`) is the package's own. Checkpoints of the package's former ResNet, VGG and DenseNet
copies load into torchvision's builders, whose ``state_dict`` keys they were built to match (:mod:`.hub`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .hub import (
    MissingExtraError,
    ModelArgumentError,
    UnknownModelError,
    WeightsError,
    load_state,
    preprocessing,
    read_state_dict,
)
from .preprocess import Preprocess
from .small import SmallCNN

__all__ = [
    "ARCHITECTURES",
    "MissingExtraError",
    "ModelArgumentError",
    "Preprocess",
    "SmallCNN",
    "UnknownModelError",
    "WeightsError",
    "build_model",
    "load_state",
    "preprocessing",
    "read_state_dict",
]

#: Constructor of each of the package's own model names (every other name is torchvision's or timm's).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small": SmallCNN,
}


def build_model(arch: str, num_classes: int, in_channels: int = 3, *, weights: str | None = None,
                load_weights: bool = True, **kw: Any) -> nn.Module:
    """Build a model by name, optionally with pretrained weights.

    Parameters
    ----------
    arch : str
        ``"small"`` (the package's :class:`SmallCNN`), any torchvision classification builder name
        (``"resnet18"``, ``"vgg11_bn"``, ``"densenet121"``, ``"convnext_tiny"``, ``"vit_b_16"``, ...; also spelled
        ``"torchvision:resnet18"``), or ``"timm:NAME"`` for a timm model (extras ``[vision]``, ``[timm]``).
    num_classes : int
        Number of outputs (the classifier head is built or replaced for it).
    in_channels : int, default 3
        Input image channels. torchvision's builders take 3; another count replaces the first convolution reading
        3 channels by one reading ``in_channels`` (freshly initialised; not with a torchvision weights name).
    weights : str, optional
        A torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V2"``, ...), ``"pretrained"`` (timm's default
        tag), or a weights file (``.pt``/``.pth`` state dict or checkpoint, ``.safetensors``); the head is left out
        when its shape differs, every other key must match (:func:`load_state`).
    load_weights : bool, default True
        False builds the model as for ``weights`` without reading them (to load a checkpoint into).
    **kw
        Further keyword arguments of the constructor: ``width`` (small); torchvision's and timm's own
        (``width_per_group``, ``bn_size``, ``image_size``, ``img_size``, ``drop_rate``, ...); and, for
        torchvision's ResNet and DenseNet families, ``small_input=True``: a 3x3 stride-1 stem convolution and no
        stem max-pool, for 32x32 to 64x64 images (:func:`~isnet_kernels.models.hub.small_stem`).

    Returns
    -------
    nn.Module
        The model.

    Raises
    ------
    UnknownModelError
        If ``arch`` is not a known name; the message lists close matches.
    ModelArgumentError
        If a keyword argument of the package's former ResNet/VGG/DenseNet copies (``width``, ``hidden``, ...) has
        a value torchvision's builder cannot build, or ``small_input`` is given for a model without such a stem.
    MissingExtraError
        If torchvision or timm is needed but not installed (the message names the extra).
    WeightsError
        If the weights do not exist or do not fit (missing and unexpected keys listed).
    """
    from .hub import build

    return build(arch, num_classes, in_channels, weights=weights, load_weights=load_weights, **kw)
