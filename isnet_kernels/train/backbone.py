"""What a run builds around its model: the model by name with its weights, the preprocessing those weights expect,
the optimizer (SGD or AdamW, warm-up, schedule) and the numeric precision (float32 or bf16 autocast).

The preprocessing is resolved once, when a run starts (the weights' metadata, overridden by ``--mean/--std/--size/
--channels``), and kept in every checkpoint (``model_spec``), so that evaluation, ``isnet explain`` and a resumed run
feed the model exactly the inputs it was trained on: the images are resized and converted as the data set loader
does, then normalised per channel (:class:`Normalized`), and the Z^B rule of the first layer gets the matching
per-channel bounds (:meth:`~isnet_kernels.models.Preprocess.bounds`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..isnet import ISNet, ISNetLoss
from ..models import MissingExtraError, Preprocess, UnknownModelError, WeightsError, build_model, preprocessing
from .config import TrainConfig
from .errors import TrainError


def resolve_preprocess(cfg: TrainConfig) -> Preprocess:
    """The run's preprocessing: the weights' metadata (:func:`~isnet_kernels.models.preprocessing`), each value
    replaced by ``cfg.mean``/``cfg.std``/``cfg.size``/``cfg.channels`` where given."""
    base = preprocessing(cfg.arch, cfg.weights, **cfg.model_kwargs)
    given = [flag for flag, value in (("--mean", cfg.mean), ("--std", cfg.std), ("--size", cfg.size),
                                      ("--channels", cfg.channels)) if value is not None]
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None or cfg.std is not None else (base.mean, base.std)
    if (mean is None) != (std is None):
        raise TrainError("pass both --mean and --std (one value per channel, or one for all), or neither")
    source = base.source + (f"; {', '.join(given)} given" if given else "")
    try:
        return Preprocess(mean, std, cfg.size if cfg.size is not None else base.size,
                          cfg.channels if cfg.channels is not None else base.channels, source)
    except ValueError as exc:
        raise TrainError(f"{exc} (--mean, --std, --size)") from None


class Normalized(Dataset):
    """A masked image data set whose images are normalised by ``preprocess`` (masks and labels unchanged)."""

    def __init__(self, dataset: Any, preprocess: Preprocess):
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return (self.preprocess.normalize(item[0]), *item[1:])

    def __getattr__(self, name: str) -> Any:  # classes, samples, ... of the data set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def wrap(dataset: Any, preprocess: Preprocess) -> Any:
    """``dataset`` with normalised images (itself when the preprocessing does not normalise)."""
    return Normalized(dataset, preprocess) if preprocess.normalises else dataset


def build_for_run(cfg: TrainConfig, num_classes: int, in_channels: int, *, load_weights: bool) -> nn.Module:
    """``build_model(cfg.arch, ...)`` with the run's weights (read only when ``load_weights``: a new run)."""
    try:
        return build_model(cfg.arch, num_classes, in_channels, weights=cfg.weights, load_weights=load_weights,
                           **cfg.model_kwargs)
    except (UnknownModelError, MissingExtraError, WeightsError):
        raise
    except TypeError as exc:  # a constructor argument the builder does not take
        raise TrainError(f"--arch {cfg.arch} does not take the arguments {cfg.model_kwargs} ({exc}); check "
                         "--model-arg") from None


def model_spec(cfg: TrainConfig, preprocess: Preprocess, num_classes: int, in_channels: int) -> dict[str, Any]:
    """What a checkpoint records to rebuild the model and feed it: name, constructor arguments, weights (the
    architecture may depend on them), class count, channels and preprocessing."""
    return {"arch": cfg.arch, "kwargs": dict(cfg.model_kwargs), "weights": cfg.weights, "num_classes": num_classes,
            "in_channels": in_channels, "preprocess": preprocess.to_dict()}


def rebuild(spec: dict[str, Any]) -> nn.Module:
    """The model a :func:`model_spec` describes, freshly initialised (load the checkpoint's state dict into it)."""
    return build_model(spec["arch"], int(spec["num_classes"]), int(spec["in_channels"]), weights=spec["weights"],
                       load_weights=False, **spec["kwargs"])


# --- optimisation ----------------------------------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's convention: weight decay on weight matrices and convolution kernels; none on biases, norm scales
    (every parameter of one dimension or less) and the parameters a model lists in ``no_weight_decay()`` (timm's
    position embeddings, class tokens)."""
    skip: set[str] = set()
    if callable(getattr(model, "no_weight_decay", None)):
        skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 or name in skip or name.split(".")[-1] in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (weight decay on every parameter, as before), or AdamW with :func:`parameter_groups`."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_isnet(cfg: TrainConfig, model: nn.Module, *, bounds: Any, generator: torch.Generator | None
               ) -> ISNet | None:
    """The ISNet of the settings around ``model`` (None for a plain classifier or RRR: ``cfg.is_isnet`` false)."""
    if not cfg.is_isnet:
        return None
    return ISNet(model, cfg.variant, eps=cfg.eps, first_layer=cfg.first_layer, deep_supervision=cfg.deep_supervision,
                 select=cfg.select, generator=generator, bounds=bounds, backend=cfg.backend,
                 batch_stats=cfg.batch_stats, heatmap=cfg.heatmap, map_chunk=cfg.map_chunk, memory=cfg.memory,
                 task=cfg.task or "multiclass")


def make_loss(cfg: TrainConfig) -> ISNetLoss:
    """The loss of the settings: the ISNet's (``P = 0`` without heatmaps: cross-entropy alone)."""
    return ISNetLoss(P=cfg.P if cfg.is_isnet else 0.0, d=cfg.d, E=cfg.E, A=cfg.A, B=cfg.B, C1=cfg.C1, C2=cfg.C2,
                     foreground=cfg.foreground, d_loss=cfg.d_loss, nonfinite=cfg.nonfinite, mass=cfg.mass,
                     task=cfg.task or "multiclass")


def learning_rate(cfg: TrainConfig, t: int, total: int, per_epoch: int) -> float:
    """The learning rate at optimisation step ``t`` of ``total``: a linear warm-up over the first
    ``warmup_epochs * per_epoch`` steps (from ``lr / W`` to ``lr``), then the schedule over the remaining steps
    (``"cosine"``: ``lr * (1 + cos(pi * t' / T')) / 2``; without warm-up exactly the former schedule)."""
    warm = int(round(cfg.warmup_epochs * per_epoch))
    if t < warm:
        return cfg.lr * (t + 1) / warm
    if cfg.lr_schedule != "cosine":
        return cfg.lr
    return cfg.lr * (1 + math.cos(math.pi * (t - warm) / max(total - warm, 1))) / 2


# --- precision -------------------------------------------------------------------------------------------------------
def bf16_unsupported(device: torch.device) -> str | None:
    """None when bf16 autocast runs on ``device``, else why not."""
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            return f"the GPU {name} does not support bfloat16 (compute capability 8.0 or newer does)"
        return None
    if device.type == "cpu":
        return None  # CPU autocast supports bf16 everywhere (native with AVX512-BF16 or AMX, else emulated)
    return f"bf16 autocast is not supported on {device.type} devices here"


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    """Raise :class:`TrainError` when ``--precision bf16`` cannot run on ``device``."""
    if cfg.precision == "bf16":
        reason = bf16_unsupported(device)
        if reason is not None:
            raise TrainError(f"--precision bf16 cannot run here: {reason}; use --precision 32")


@contextlib.contextmanager
def autocast(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """bf16 autocast on ``device`` for ``--precision bf16``; nothing for ``32``."""
    if cfg.precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def float32(value: Tensor | None) -> Tensor | None:
    """``value`` as float32 (half-precision logits of an autocast forward), None as it is."""
    return value.float() if value is not None and value.is_floating_point() and value.dtype != torch.float64 \
        else value


def spec_preprocess(spec: dict[str, Any] | None) -> Preprocess:
    """The preprocessing a checkpoint's ``model_spec`` recorded (none for checkpoints written before it existed)."""
    return Preprocess.from_dict((spec or {}).get("preprocess"))
