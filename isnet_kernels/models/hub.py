"""Models by name from the package, torchvision and timm, their pretrained weights and the preprocessing they expect.

Names (:func:`build`):

- the package's own (:data:`~isnet_kernels.models.ARCHITECTURES`: ``small``);
- any torchvision classification builder (``torchvision.models.list_models(module=torchvision.models)``:
  ``resnet18``, ``vgg11_bn``, ``densenet121``, ``convnext_tiny``, ``vit_b_16``, ...); ``torchvision:NAME`` is
  accepted as another spelling of the same name (run directories that recorded it keep loading);
- ``timm:NAME``: any timm model (``timm.create_model(NAME, num_classes=K)``).

Two rules adapt a torchvision model without copying it: ``in_channels`` other than 3 replaces the first
convolution that reads 3 channels (:func:`set_in_channels`), and ``small_input=True`` gives the ResNet and DenseNet
families a 3x3 stride-1 stem without its max-pool, for 32x32 to 64x64 images (:func:`small_stem`).

Checkpoints of the package's former ResNet-18/34/50, VGG-11/16 and DenseNet-121 copies (the same names, whose
``state_dict`` keys were built to equal torchvision's) load into torchvision's builders: their constructor arguments
(:data:`LEGACY_ARGUMENTS`) are translated where torchvision builds the same model (``width=64``; VGG's
``batch_norm=True`` is ``vgg11_bn``/``vgg16_bn``), and any other value is a :class:`ModelArgumentError` saying
what to do.

The class count is set by building with ``num_classes=K``. Pretrained weights (``weights=``): a torchvision weights
name (``DEFAULT``, ``IMAGENET1K_V2``, ...: the model is built as torchvision builds it for those weights, its
layers that produce the weights' class scores replaced by fresh ones with K outputs, then the weights are fetched
through torchvision's own API and cache), ``pretrained`` (timm's default pretrained tag, through
``timm.create_model(pretrained=True)``), or a local file (``.pt``/``.pth``: a state dict, or a checkpoint dict
holding one; ``.safetensors`` through the safetensors package) loaded by :func:`load_state` (the head left out when
its shape differs, every other key required to match).

torchvision, timm and safetensors are optional: each is imported only when a name or a file asks for it, and a
missing one is an :class:`~isnet_kernels.ISNetError` naming what to install.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ISNetError
from .preprocess import Preprocess

__all__ = ["LEGACY_ARGUMENTS", "MissingExtraError", "ModelArgumentError", "UnknownModelError", "WeightsError",
           "build", "check_name", "load_state", "preprocessing", "read_state_dict", "resolve", "set_in_channels",
           "small_stem"]

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
#: The weights value that asks timm for its default pretrained tag.
TIMM_PRETRAINED = "pretrained"
#: Suffixes read as local weights files.
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
#: Entries of a checkpoint dict that may hold the state dict, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


class UnknownModelError(ISNetError, ValueError):
    """A model name that neither the package, torchvision nor timm knows; the message lists close matches."""


class MissingExtraError(ISNetError, ImportError):
    """An optional package (torchvision, timm, safetensors) that a model name or a weights file needs is missing."""


class WeightsError(ISNetError, ValueError):
    """Weights that do not exist or do not fit the model; the message names the missing and unexpected keys."""


class ModelArgumentError(ISNetError, ValueError):
    """A model argument that cannot apply: ``small_input`` for a model without a ResNet/DenseNet stem, or an
    argument of the package's former ResNet/VGG/DenseNet copies with a value torchvision's builder does not build."""


#: Arguments of the package's former ResNet/VGG/DenseNet copies, by name, with the value torchvision's builder of
#: that name has (such a value is dropped; ``batch_norm`` picks the ``_bn`` builder; another value is an error).
LEGACY_ARGUMENTS: dict[str, dict[str, Any]] = {
    **{name: {"width": 64} for name in ("resnet18", "resnet34", "resnet50")},
    **{name: {"width": 64, "hidden": 4096, "pool_size": 7, "batch_norm": False} for name in ("vgg11", "vgg16")},
    "densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64},
}


def _import(module: str, extra: str, why: str) -> ModuleType:
    """Import an optional package, or raise :class:`MissingExtraError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{why} needs the package {module.split('.')[0]}, which is not installed ({exc}); "
                                f"install it with: pip install 'isnet-kernels[{extra}]'") from None
    except Exception as exc:  # a wheel built for another torch fails with RuntimeError while registering its ops
        raise MissingExtraError(f"{why} needs {module.split('.')[0]}, which is installed but does not import "
                                f"({type(exc).__name__}: {exc}); install the release built for torch "
                                f"{torch.__version__.split('+')[0]}: pip install 'isnet-kernels[{extra}]'") from None


def _torchvision_models(why: str) -> ModuleType:
    return _import("torchvision.models", "vision", why)


def _timm(why: str) -> ModuleType:
    return _import("timm", "timm", why)


def _package_architectures() -> dict[str, Any]:
    from . import ARCHITECTURES

    return ARCHITECTURES


def _close(name: str, candidates: list[str]) -> str:
    matches = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


def resolve(name: str) -> tuple[str, str]:
    """``(source, builder)`` of a model name: source ``"package"``, ``"torchvision"`` or ``"timm"``.

    Raises :class:`UnknownModelError` (close matches listed) for a name no source knows, and
    :class:`MissingExtraError` when the source a name needs is not installed.
    """
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"a model name must be a non-empty string (--arch), got {name!r}")
    if name.startswith(TIMM_PREFIX):
        model = name[len(TIMM_PREFIX):]
        timm = _timm(f"--arch {name}")
        if not timm.is_model(model):
            candidates = timm.list_models()
            raise UnknownModelError(f"timm has no model {model!r} (--arch {name}){_close(model, candidates)} "
                                    "(timm.list_models() lists them)")
        return "timm", model
    forced = name.startswith(TORCHVISION_PREFIX)  # an accepted spelling of the plain torchvision name
    model = name[len(TORCHVISION_PREFIX):] if forced else name
    package = _package_architectures()
    if not forced and model in package:
        return "package", model
    try:
        M = _torchvision_models(f"--arch {name}")
    except MissingExtraError as exc:
        if forced:
            raise
        raise MissingExtraError(f"{exc} (every name but the package's own {', '.join(package)} is a torchvision "
                                f"builder; a timm model is named timm:NAME){_close(name, list(package))}") from None
    names = M.list_models(module=M)
    if model in names:
        return "torchvision", model
    candidates = list(dict.fromkeys(names + ([] if forced else list(package))))
    raise UnknownModelError(f"unknown architecture {name!r} (--arch){_close(model, candidates)} Valid: the "
                            f"package's {', '.join(package)}, a torchvision classification builder (resnet18, "
                            "convnext_tiny, ...: torchvision.models.list_models(module=torchvision.models)), or "
                            "timm:NAME")


def check_name(name: str) -> str:
    """``name`` when :func:`resolve` knows it (raises otherwise)."""
    resolve(name)
    return name


def is_weights_file(weights: str) -> bool:
    """Whether a ``weights`` value names a local file (a path with a separator, or a weights-file suffix)."""
    return os.sep in weights or "/" in weights or weights.lower().endswith(WEIGHT_FILE_SUFFIXES) or \
        Path(weights).is_file()


# --- building ------------------------------------------------------------------------------------------------------
def build(name: str, num_classes: int, in_channels: int = 3, *, weights: str | None = None,
          load_weights: bool = True, **kwargs: Any) -> nn.Module:
    """The model ``name`` with ``num_classes`` outputs (module docstring for names and ``weights``).

    ``load_weights=False`` builds the model exactly as for ``weights`` (a torchvision weights name can change
    constructor arguments, e.g. Inception's ``transform_input``) without fetching or reading them: what a
    checkpoint's state dict is then loaded into.
    """
    source, builder = resolve(name)
    if weights is not None and (not isinstance(weights, str) or not weights):
        raise WeightsError(f"weights must be a name or a file path (--weights), got {weights!r}")
    file = weights if weights is not None and is_weights_file(weights) else None
    if source == "package":
        if weights is not None and file is None:
            raise WeightsError(f"--weights {weights!r}: the package's {builder} model has no named pretrained "
                               "weights; pass a weights file (.pt, .pth, .safetensors) or no --weights")
        model = _package_architectures()[builder](num_classes=num_classes, in_channels=in_channels, **kwargs)
    elif source == "torchvision":
        builder, kwargs = _translate_legacy(builder, kwargs, name)
        small = kwargs.pop("small_input", False)
        if not isinstance(small, bool):
            raise ModelArgumentError(f"--model-arg small_input={small!r}: small_input must be True or False")
        M = _torchvision_models(f"--arch {name}")
        if weights is None or file is not None:
            model = M.get_model(builder, weights=None, num_classes=num_classes, **kwargs)
        else:
            if weights == TIMM_PRETRAINED:
                raise WeightsError(f"--weights pretrained is timm's; for --arch {name} give a torchvision weights "
                                   "name (DEFAULT, IMAGENET1K_V1, ...) or a file")
            if in_channels != 3:
                raise WeightsError(f"torchvision's {builder} {weights} weights take 3-channel images, the data has "
                                   f"{in_channels}; pass --channels 3 (grey images are repeated over RGB)")
            if small:
                raise WeightsError(f"--model-arg small_input=True replaces the stem that torchvision's {builder} "
                                   f"{weights} weights were trained with; drop small_input, or train without them")
            entry = _torchvision_weights(builder, weights, name)
            with _without_fetching():
                model = M.get_model(builder, weights=entry, **kwargs)  # as torchvision builds it for these weights
            _replace_heads(model, len(entry.meta["categories"]), num_classes)
            if load_weights:
                state = _fetch(entry, name)
                if hasattr(model, "aux_logits") and not getattr(model, "aux_logits", True):
                    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
                load_state(model, state, num_classes, what=f"torchvision's {builder} {entry.name} weights")
        if small:
            small_stem(model, builder)
        if in_channels != 3:
            set_in_channels(model, in_channels, builder)
    else:
        timm = _timm(f"--arch {name}")
        pretrained = weights == TIMM_PRETRAINED
        if weights is not None and not pretrained and file is None:
            raise WeightsError(f"--weights {weights!r} for --arch {name}: timm takes 'pretrained' (its default "
                               "pretrained tag; another tag goes in the name, timm:NAME.TAG) or a file")
        try:
            model = timm.create_model(builder, pretrained=pretrained and load_weights, num_classes=num_classes,
                                      in_chans=in_channels, **kwargs)
        except (OSError, RuntimeError) as exc:
            if not (pretrained and load_weights):
                raise
            raise WeightsError(f"cannot fetch timm's pretrained weights of {builder} ({type(exc).__name__}: {exc}); "
                               "where there is no network, pass a weights file (--weights FILE)") from None
    if file is not None and load_weights:
        load_state(model, read_state_dict(file), num_classes, what=f"weights file {file}")
    return model


def _translate_legacy(builder: str, kwargs: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The torchvision builder and arguments for arguments of the package's former copy named ``builder``
    (:data:`LEGACY_ARGUMENTS`): a value torchvision's builder has is dropped, ``batch_norm=True`` picks the
    ``_bn`` builder, any other value raises :class:`ModelArgumentError` saying what to do."""
    legacy = LEGACY_ARGUMENTS.get(builder, {})
    kwargs = dict(kwargs)
    for key in [k for k in kwargs if k in legacy]:
        value = kwargs.pop(key)
        same = tuple(value) == legacy[key] if isinstance(value, (list, tuple)) else value == legacy[key]
        if key == "batch_norm" and not isinstance(value, bool):
            raise ModelArgumentError(f"--model-arg batch_norm={value!r} of --arch {name}: must be True or False "
                                     f"(True builds torchvision's {builder}_bn)")
        if key == "batch_norm" and value is True:
            builder = f"{builder}_bn"
        elif not same:
            if builder.startswith("densenet"):
                fix = ("build torchvision.models.DenseNet(growth_rate=..., block_config=..., num_init_features=...) "
                       "yourself and load the checkpoint's 'model' state dict into it")
            else:
                fix = (f"torchvision's {builder} has no such argument, so a run trained with it cannot be rebuilt "
                       "by name; train again with torchvision's widths or with --arch small --model-arg width=N")
            raise ModelArgumentError(f"--model-arg {key}={value!r} of --arch {name}: an argument of the package's "
                                     f"former {builder} copy, which is torchvision's {builder} now (fixed at "
                                     f"{key}={legacy[key]!r}); {fix}")
    return builder, kwargs


def _stem_init(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with torchvision's ResNet initialisation (Kaiming-normal, fan-out)."""
    if not conv.weight.is_meta:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def small_stem(model: nn.Module, builder: str = "the model") -> nn.Module:
    """Give a torchvision ResNet-family model (a ``conv1`` and a ``maxpool`` at the top) or DenseNet-family model
    (``features.conv0`` and ``features.pool0``) a 3x3 stride-1 stem convolution (padding 1, freshly initialised)
    and no stem max-pool: it then downsamples by 8 instead of 32, for 32x32 to 64x64 images (CIFAR, Tiny
    ImageNet). The ``state_dict`` keys stay torchvision's; the stem's kernel is 3x3 instead of 7x7. In place;
    returns ``model``. :func:`build` applies it for ``small_input=True``."""
    holder: nn.Module | None = None
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool"):
        holder, conv_name, pool_name = model, "conv1", "maxpool"
    else:
        features = getattr(model, "features", None)
        if isinstance(getattr(features, "conv0", None), nn.Conv2d) and hasattr(features, "pool0"):
            holder, conv_name, pool_name = features, "conv0", "pool0"
    if holder is None:
        raise ModelArgumentError(f"--model-arg small_input=True applies to torchvision's ResNet and DenseNet "
                                 f"families (a conv1 and maxpool, or features.conv0 and pool0); {builder} has "
                                 "neither: drop small_input, or resize the images (--size)")
    old = getattr(holder, conv_name)
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1,
                    bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(holder, conv_name, _stem_init(new))
    setattr(holder, pool_name, nn.Identity())
    return model


def set_in_channels(model: nn.Module, in_channels: int, builder: str = "the model") -> nn.Module:
    """Replace the first convolution (in module order) that reads 3 channels by one reading ``in_channels``, with
    the same output channels, kernel, stride and padding, freshly initialised. In place; returns ``model``.
    :func:`build` applies it to torchvision models for ``in_channels`` other than 3."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ModelArgumentError(f"in_channels must be a positive int, got {in_channels!r} (--channels)")
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3),
                 None)
    if found is None:
        raise ModelArgumentError(f"{builder} has no convolution reading 3 channels to replace by one reading "
                                 f"{in_channels}; pass --channels 3")
    name, old = found
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, bias=old.bias is not None, padding_mode=old.padding_mode)
    new = _stem_init(new.to(device=old.weight.device, dtype=old.weight.dtype))
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _fetch(entry: Any, name: str) -> dict[str, Tensor]:
    """The state dict of a torchvision weights entry, through torchvision's API and the torch hub cache."""
    try:
        return entry.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a damaged download fails the hash check
        raise WeightsError(f"cannot fetch torchvision's {entry} for --arch {name} ({type(exc).__name__}: {exc}); "
                           f"where there is no network, put the file in {torch.hub.get_dir()}/checkpoints or pass "
                           "a weights file (--weights FILE)") from None


def _torchvision_weights(builder: str, weights: str, name: str) -> Any:
    """The torchvision weights entry ``weights`` of ``builder``; an unknown one lists the valid names."""
    M = _torchvision_models(f"--arch {name} --weights {weights}")
    try:
        enum = M.get_model_weights(builder)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"torchvision has no weights for {builder} ({exc}); pass a weights file") from None
    valid = list(enum.__members__)
    if weights not in valid:
        raise WeightsError(f"torchvision's {builder} has no weights {weights!r} (--weights){_close(weights, valid)} "
                           f"Valid: {', '.join(valid)}, or a weights file (.pt, .pth, .safetensors)")
    return enum[weights]


@contextlib.contextmanager
def _without_fetching() -> Iterator[None]:
    """A torchvision builder called with weights builds its model as for them but fetches and loads nothing."""
    from torchvision.models._api import WeightsEnum

    get, load = WeightsEnum.get_state_dict, nn.Module.load_state_dict

    def no_state(self: Any, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        return {}

    def no_load(self: nn.Module, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        return torch.nn.modules.module._IncompatibleKeys([], [])

    WeightsEnum.get_state_dict = no_state  # type: ignore[method-assign]
    nn.Module.load_state_dict = no_load  # type: ignore[method-assign]
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = get  # type: ignore[method-assign]
        nn.Module.load_state_dict = load  # type: ignore[method-assign]


def _outputs(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None


def _replace_heads(model: nn.Module, weights_classes: int, num_classes: int) -> list[str]:
    """Replace every ``Linear`` / ``Conv2d`` producing ``weights_classes`` outputs (the weights' class scores: the
    classifier, and auxiliary classifiers) by a freshly initialised one with ``num_classes`` outputs. Returns the
    replaced module names."""
    if weights_classes == num_classes:
        return []
    names = [n for n, m in model.named_modules() if n and _outputs(m) == weights_classes]
    if not names:
        raise WeightsError(f"found no layer producing the weights' {weights_classes} class scores to replace by "
                           f"{num_classes} outputs; build the model without weights and load a file")
    for name in names:
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                            old.groups, bias=old.bias is not None, padding_mode=old.padding_mode)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return names


# --- weights files -------------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict in a weights file: ``.safetensors`` (safetensors package), else ``torch.load`` with
    ``weights_only=True`` of a state dict or of a checkpoint dict holding one (under ``state_dict``,
    ``model_state_dict``, ``model``, ...; an ``isnet train`` checkpoint too). A ``module.`` prefix on every key
    (saved from DistributedDataParallel) is removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (--weights); pass a .pt, .pth or .safetensors file, "
                           "a torchvision weights name (DEFAULT, ...) or, for timm models, 'pretrained'")
    if path.suffix.lower() == ".safetensors":
        st = _import("safetensors.torch", "timm", f"the weights file {path}")
        state: Any = st.load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}; save the state dict "
                               "alone: torch.save(model.state_dict(), path)") from None
    if isinstance(state, Mapping) and not _is_state_dict(state):
        for key in STATE_DICT_KEYS:
            if isinstance(state.get(key), Mapping) and _is_state_dict(state[key]):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not _is_state_dict(state) or not state:
        keys = list(state)[:8] if isinstance(state, Mapping) else type(state).__name__
        raise WeightsError(f"{path} holds no state dict (a mapping of parameter names to tensors, alone or under one "
                           f"of {', '.join(STATE_DICT_KEYS)}); found {keys}")
    state = dict(state)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_state_dict(value: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_state(model: nn.Module, state: Mapping[str, Tensor], num_classes: int, *, what: str = "weights") -> list[str]:
    """Load ``state`` into ``model``: every key must match in name and shape, except the head: a ``Linear`` or
    ``Conv2d`` of the model producing the ``num_classes`` class scores whose stored weight differs only in its
    number of outputs (weights for another class count) keeps its fresh initialisation. Returns the keys left
    out; raises :class:`WeightsError` listing the missing, unexpected and mismatched keys otherwise."""
    own = model.state_dict()
    heads = {n for n, m in model.named_modules() if _outputs(m) == num_classes}
    skipped, mismatched = [], []
    for key, value in state.items():
        if key not in own or tuple(value.shape) == tuple(own[key].shape):
            continue
        module, _, param = key.rpartition(".")
        target = own[key]
        if module in heads and param in ("weight", "bias") and value.dim() == target.dim() and \
                tuple(value.shape[1:]) == tuple(target.shape[1:]):
            skipped.append(key)
        else:
            mismatched.append(f"{key} {tuple(value.shape)} vs the model's {tuple(target.shape)}")
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shapes that differ: {_listing(mismatched)}")
        raise WeightsError(f"{what} do not fit the model ({type(model).__name__}, {num_classes} classes): "
                           f"{'; '.join(parts)}. They were saved from another architecture or configuration: pass "
                           "the --arch (and --model-arg) they were trained with (--weights)")
    kept = {k: v for k, v in state.items() if k not in skipped}
    result = model.load_state_dict({**{k: own[k] for k in skipped}, **kept}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return skipped


# --- preprocessing ---------------------------------------------------------------------------------------------------
def preprocessing(name: str, weights: str | None = None, **kwargs: Any) -> Preprocess:
    """The preprocessing the weights of model ``name`` expect, from their metadata: torchvision's
    ``weights.transforms()`` (mean, std, crop size), timm's ``resolve_data_config`` (mean, std, input size).

    Without weights: none (inputs in [0, 1], images as stored), except 3 channels for torchvision and timm models.
    A weights file: the metadata of the builder's default pretrained weights (torchvision ``DEFAULT``, timm's
    pretrained config), the convention for files of ImageNet weights; override with ``--mean/--std/--size``.
    """
    source, builder = resolve(name)
    if weights is None:
        return Preprocess(channels=3 if source != "package" else None, source="no weights: inputs in [0, 1]")
    file = is_weights_file(weights)
    if source == "package":
        return Preprocess(source="a weights file of the package's model: inputs in [0, 1]")
    if source == "torchvision":
        builder, _ = _translate_legacy(builder, kwargs, name)
        M = _torchvision_models(f"--arch {name}")
        try:
            enum = M.get_model_weights(builder)
        except (KeyError, ValueError):
            return Preprocess(channels=3, source="no torchvision metadata: inputs in [0, 1]")
        entry = enum.DEFAULT if file else _torchvision_weights(builder, weights, name)
        t = entry.transforms()
        size = getattr(t, "crop_size", None)
        size = int(size[0]) if isinstance(size, (list, tuple)) and size else None
        where = f"torchvision {builder} {entry.name} metadata" + (" (default weights; a file given)" if file else "")
        return Preprocess(tuple(t.mean), tuple(t.std), size, 3, where)
    timm = _timm(f"--arch {name}")
    pcfg = timm.models.get_pretrained_cfg(builder, allow_unregistered=True)
    cfg = timm.data.resolve_data_config(pretrained_cfg=pcfg.to_dict() if pcfg is not None else {})
    channels, height, _ = cfg["input_size"]
    if isinstance(kwargs.get("img_size"), int):  # a model built for another size (e.g. a ViT's img_size)
        height = kwargs["img_size"]
    tag = getattr(pcfg, "tag", None)
    where = f"timm {builder}{'.' + tag if tag else ''} pretrained config" + (" (a file given)" if file else "")
    return Preprocess(tuple(cfg["mean"]), tuple(cfg["std"]), int(height), int(channels), where)
