"""Everything a training run is configured by, as one dataclass that a run directory and its checkpoints keep.

Defaults (docs/isnet.md#defaults): SGD with momentum 0.9 and gradient-norm clip 1; the heatmap loss's constants
are the authors' (P = 0.7, d = 0.9, E = 1, A = 1, B = 3, C1 = 1, the hybrid foreground term) but C2, LRP eps =
1e-2. The settings a preset governs (:mod:`isnet_kernels.isnet.presets`) are None until the preset fills them in:
``preset="default"`` gives what trained best across data sets (label class, live BatchNorm statistics, deep
supervision where the model has the layers, epsilon first layer, C2 = 1000, lr 0.15 with a cosine decay),
``"paper"`` the authors' (lowest logit, detached statistics, no deep supervision, Z^B, C2 = 25, lr 0.01 constant).
A saved configuration holds the resolved values.

``batch_size`` is the GLOBAL batch: under ``torchrun`` with W processes each process takes ``batch_size / W``
images per step (it must divide), so a run gives the same optimisation steps whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backends.dispatch import BACKENDS
from ..data.augment import AUGMENTATIONS
from ..data.masks import DEFAULT_MAX_SHARE, MaskConvention
from ..errors import ISNetError
from ..isnet.baselines import DEFAULT_LAMBDA
from ..isnet.loss import FOREGROUND_RULES, NONFINITE_POLICIES, check_band, check_cut
from ..isnet.presets import PRESETS, TRAINER_PRESETS
from ..isnet.wrapper import HEATMAPS, MEMORY_MODES, SELECTIONS, TASKS
from ..lrp.engine import BATCH_STATS, FIRST_LAYER_RULES, check_eps
from ..models import ARCHITECTURES, ModelArgumentError, build_model
from ..models.hub import check_name
from .errors import TrainError

#: ``"none"`` trains the plain classifier with cross-entropy; ``"rrr"`` with Right for the Right Reasons (the input
#: gradient penalised on the background, :class:`~isnet_kernels.isnet.RRRLoss`); the others are
#: :class:`~isnet_kernels.ISNet` variants.
TRAIN_VARIANTS = ("none", "rrr", "original", "selective", "stochastic", "dual")
DEVICES = ("auto", "cpu", "cuda")
#: Learning-rate schedules: ``"constant"``, or ``"cosine"``: ``lr * (1 + cos(pi * t / T)) / 2`` at optimisation step
#: ``t`` of the run's ``T = epochs * steps_per_epoch`` (a resumed run that extends ``epochs`` stretches it).
LR_SCHEDULES = ("constant", "cosine")
CHANNELS = (1, 3)
#: ``--optimizer``: SGD with momentum, or AdamW (no weight decay on biases and norms; :mod:`.backbone`).
OPTIMIZERS = ("sgd", "adamw")
#: ``--precision``: float32, or bf16 autocast for the forward and the relevance pass (float32 master weights).
PRECISIONS = ("32", "bf16")
#: Defaults of ``lr`` and ``weight_decay`` for AdamW (SGD's: the preset's lr, no weight decay).
ADAMW_DEFAULTS = {"lr": 1e-3, "weight_decay": 0.05}

#: Fields a resumed run may change: they do not alter what is computed (``epochs`` only extends the run; ``data``
#: only to the same data set at another path, which the trainer checks). ``out`` is where the run is, whatever its
#: spelling: not a setting.
RESUMABLE_FIELDS = ("epochs", "device", "num_workers", "progress", "backend", "data", "threads", "memory",
                    "tensorboard")


def _preset_text(name: str) -> str:
    """How the command line states a preset-governed default."""

    def show(value: Any) -> str:
        return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)

    return f"{show(TRAINER_PRESETS['default'][name])}; {show(TRAINER_PRESETS['paper'][name])} with --preset paper"


def option(default: Any, help: str, *, choices: tuple | None = None, flag: str | None = None,
           metavar: str | None = None, default_text: str | None = None) -> Any:
    """A :class:`TrainConfig` field with what the command line needs to offer it (``isnet train``): the help
    text, the valid values (the same constants the validation and the engine use) and, where it is not
    ``--field-name``, the flag; ``default_text`` says what a default of None means. A callable ``default`` is a
    default factory (mutable defaults)."""
    meta = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "default_text": default_text}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    """The ``isnet train`` flag of the :class:`TrainConfig` field ``name`` (``batch_size``: ``--batch-size``,
    ``progress``: ``--quiet``)."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}.get(name)
    flag = f.metadata.get("flag") if f is not None else None
    return flag or "--" + name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    """The default value of a :class:`TrainConfig` field."""
    factory: Callable[[], Any] | Any = f.default_factory
    return factory() if factory is not dataclasses.MISSING else f.default


#: The types of the architectures' constructor arguments, by their annotation.
_ARGUMENT_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("a positive int", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "bool": ("True or False", lambda v: isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
    "Sequence[int]": ("a tuple of positive ints, e.g. (6, 12, 24, 16)",
                      lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                      and all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v)),
}


def _check_model_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    """Each model argument must be a parameter of the architecture's constructor, of the type it is annotated with
    (its integer arguments are sizes: positive); ``num_classes`` and ``in_channels`` come from the data."""
    parameters = inspect.signature(ARCHITECTURES[arch]).parameters
    settable = [name for name in parameters if name not in ("num_classes", "in_channels")]
    for name, value in kwargs.items():
        if name in ("num_classes", "in_channels"):
            raise TrainError(f"model_kwargs {name}={value!r}: {name} is set from the data set (its classes and its "
                             "images' channels; channels=1 or channels=3 converts the images)", param="model_kwargs")
        if name not in parameters:
            raise TrainError(f"model_kwargs {name}={value!r}: architecture {arch!r} has no argument {name!r}; its "
                             f"arguments are {', '.join(settable)}", param="model_kwargs")
        kind = _ARGUMENT_TYPES.get(str(parameters[name].annotation))
        if kind is not None and not kind[1](value):
            raise TrainError(f"model_kwargs {name}={value!r}: {name} of architecture {arch!r} must be {kind[0]}",
                             param="model_kwargs")


def _takes(model: torch.nn.Module, channels: int, hw: tuple[int, int]) -> bool:
    """Whether a model on the meta device accepts a batch of one (channels, *hw) image (eval mode, no data)."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(1, channels, *hw, device="meta"))
    except Exception:  # a shape error, of whatever type the model's layers raise
        return False
    return True


def _smallest_size(model: torch.nn.Module, channels: int, limit: int = 1024) -> int | None:
    """The smallest square input side a model on the meta device accepts (bisection; None beyond ``limit``)."""
    if not _takes(model, channels, (limit, limit)):
        return None
    low, high = 1, limit  # the answer lies in (low - 1, high]
    while low < high:
        mid = (low + high) // 2
        if _takes(model, channels, (mid, mid)):
            high = mid
        else:
            low = mid + 1
    return high


@dataclass
class TrainConfig:
    """Settings of one training run (module docstring for the defaults and the batch size semantics).

    Parameters
    ----------
    data : the data set folder (``ROOT/images/<split>/<class>/*.png`` with masks, see :mod:`isnet_kernels.data`).
    out : the run directory: ``config.json``, ``metrics.csv``, ``metrics.json``, ``last.pt``, ``best.pt``.
    arch : a model name of :func:`isnet_kernels.models.build_model`: the package's ``small``, a torchvision
        classification builder (``resnet18``, ``convnext_tiny``, ...), or ``timm:NAME``; ``model_kwargs`` go to its
        constructor (e.g. ``{"width": 8}`` for ``small``, ``{"small_input": True}`` for a torchvision ResNet).
    weights : pretrained weights: a torchvision weights name, ``"pretrained"`` (timm) or a file (None: none).
    mean, std : per-channel input normalisation (None: from the weights' metadata, or none without weights).
    variant : ``"none"`` (plain classifier, cross-entropy only) or an ISNet variant: ``"original"``,
        ``"selective"``, ``"stochastic"``, ``"dual"``.
    task : ``"multiclass"`` (one class per image: cross-entropy) or ``"multilabel"`` (a manifest's ``labels``
        column: binary cross-entropy, the ISNet explains each positive label); None: from the data, and a saved
        configuration holds the task found. A task that does not match the data is an error.
    epochs, batch_size : epochs to train in all, and the global batch (module docstring).
    lr, lr_schedule, momentum, clip, weight_decay : the optimizer and its learning-rate schedule
        (:data:`LR_SCHEDULES`); ``clip`` is the gradient-norm clip (``None`` or 0: no clipping).
    optimizer, warmup_epochs : ``"sgd"`` (momentum) or ``"adamw"``; epochs of linear learning-rate warm-up.
    precision : ``"32"`` or ``"bf16"`` (autocast; float32 master weights and losses).
    P, d, E, A, B, C1, C2, foreground, d_loss, nonfinite : the :class:`~isnet_kernels.ISNetLoss` parameters
        (C1/C2 a number, or per level as :func:`~isnet_kernels.tune_cut` returns them).
    preset : ``"default"`` or ``"paper"``: the values of ``lr``, ``lr_schedule``, ``first_layer``,
        ``deep_supervision``, ``select`` and ``batch_stats`` left at None (module docstring).
    eps, first_layer, deep_supervision, select, batch_stats : the :class:`~isnet_kernels.ISNet` (and evaluation
        heatmap) settings; ``deep_supervision`` is False, True, ``"auto"`` or a list of module names;
        ``batch_stats="live"`` keeps train-mode BatchNorm statistics on the heatmap's graph (``"detached"``: the
        reference code's constants).
    tune_cut : epochs of :func:`~isnet_kernels.tune_cut` run before training to choose C1/C2 (0: use C1/C2).
    seed : seeds the model's initialisation, the data order and every random draw.
    num_workers : DataLoader worker processes.
    threads : ``torch.set_num_threads`` for the run (restored afterwards); None: the process's setting (PyTorch's
        default, the cores) less ``num_workers``, at least 1 (:func:`~.environment.default_threads`).
    size : resize images and masks to ``size`` x ``size`` when loading (None: the weights' size, else as stored).
    channels : convert images to 1 or 3 channels (None: 3 for torchvision and timm models, else as stored).
    mask_foreground, mask_threshold, mask_invert : which mask pixels are foreground (:mod:`isnet_kernels.data.masks`):
        pixel values of a label map (``"1"`` for an Oxford-IIIT Pet trimap, ``"1,3"`` with its border), a threshold
        on a soft mask's grey level, masks that mark the background.
    mask_check : the largest share of a split's masks that may be all foreground or all background before a run that
        uses the masks refuses to start (1: never refuse).
    augment : ``"none"`` or ``"standard"`` (random resized crop, horizontal flip, colour jitter; masks follow the
        image; :mod:`isnet_kernels.data.augment`).
    train_split, val_split : split folder names; ``val_split=""`` trains without validation (no ``best.pt``).
    device : ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; ``backend`` the relevance backend.
    progress : tqdm bars.
    tensorboard : also write TensorBoard event files into ``out/tensorboard`` (:mod:`.board`).
    """

    data: str = option("", "data set folder (images/<split>/<class>/*.png, masks/...) or manifest FILE.csv",
                       metavar="ROOT")
    out: str = option("", "run directory (created; holds config.json, metrics, checkpoints)", metavar="RUN_DIR")
    arch: str = option("small", f"model: the package's ({', '.join(ARCHITECTURES)}), any torchvision "
                       "classification builder (resnet18, densenet121, convnext_tiny, vit_b_16, ...), or timm:NAME",
                       metavar="NAME")
    model_kwargs: dict[str, Any] = option(dict, "constructor argument of the architecture, e.g. width=8 "
                                          "(small), small_input=True (a torchvision ResNet or DenseNet for 32-64 "
                                          "pixel images) (repeatable)", flag="--model-arg", metavar="KEY=VALUE")
    weights: str | None = option(None, "pretrained weights: a torchvision weights name (DEFAULT, IMAGENET1K_V2, "
                                 "...), 'pretrained' (timm), or a .pt/.pth/.safetensors file; the head is left out "
                                 "when its shape differs", metavar="WEIGHTS", default_text="none: random init")
    mean: list[float] | None = option(None, "per-channel mean of the input normalisation (x - mean) / std",
                                      default_text="the weights' metadata; none without weights")
    std: list[float] | None = option(None, "per-channel std of the input normalisation",
                                     default_text="the weights' metadata; none without weights")
    preset: str = option("default", "where a setting it governs is not given: 'default' (what trains best across "
                         "data sets) or 'paper' (the authors' settings)", choices=PRESETS)
    variant: str = option("selective", "none = plain classifier (no LRP); rrr = Right for the Right Reasons (input "
                          "gradient penalised on the background); else the ISNet variant", choices=TRAIN_VARIANTS)
    task: str | None = option(None, "multiclass: one class per image (cross-entropy); multilabel: several per image, "
                              "a manifest's labels column (binary cross-entropy; the ISNet explains each positive "
                              "label)", choices=TASKS, default_text="from the data: multilabel for a manifest with a "
                              "labels column, else multiclass")
    heatmap: str = option("lrp", "the ISNet's heatmaps: LRP, or Grad x Input (the authors' ablation)",
                          choices=HEATMAPS)
    rrr_lambda: float = option(DEFAULT_LAMBDA, "weight of the RRR penalty (variant rrr; for inputs in [0, 1])")
    map_chunk: int | None = option(None, "maps per chunk of the original variant's relevance pass",
                                   default_text="chosen from the memory available")
    memory: str = option("default", "low: recompute the relevance pass in the backward (checkpointed segments) "
                         "instead of keeping it, for less memory at the cost of one more relevance pass per step",
                         choices=MEMORY_MODES)
    epochs: int = option(24, "epochs in all (on --resume, extends the run); the ISNet needs more optimisation steps "
                         "than a plain classifier: about 800 (24 epochs of 1,100 images at batch 32)")
    batch_size: int = option(32, "GLOBAL batch, split over torchrun processes")
    lr: float = option(None, "learning rate", default_text=_preset_text("lr") + "; 0.001 with --optimizer adamw")
    lr_schedule: str = option(None, "learning-rate schedule over the run's steps", choices=LR_SCHEDULES,
                              default_text=_preset_text("lr_schedule"))
    optimizer: str = option("sgd", "optimizer: SGD with momentum, or AdamW (no decay on biases and norms)",
                            choices=OPTIMIZERS)
    warmup_epochs: float = option(0.0, "epochs of linear learning-rate warm-up before the schedule")
    momentum: float = option(0.9, "SGD momentum")
    clip: float | None = option(1.0, "gradient-norm clip, 0 = none")
    weight_decay: float = option(None, "weight decay", default_text="0; 0.05 with --optimizer adamw")
    P: float = option(0.7, "heatmap loss weight")
    d: float = option(0.9, "GWRP decay of the background term")
    E: float = option(1.0, "background saturation")
    A: float = option(1.0, "background weight")
    B: float = option(3.0, "foreground weight")
    mass: float = option(0.0, "weight of the background-mass term: the share of the relevance outside the mask "
                         "(0 = off)")
    C1: float | dict[str, Any] = option(1.0, "foreground lower bound")
    C2: float | dict[str, Any] = option(None, "foreground upper bound", default_text=_preset_text("C2"))
    foreground: str = option("hybrid", "foreground term", choices=FOREGROUND_RULES)
    d_loss: float = option(1.0, "GWRP decay over deep-supervision levels")
    nonfinite: str = option("raise", "non-finite loss policy", choices=NONFINITE_POLICIES)
    eps: float = option(1e-2, "LRP stabiliser")
    first_layer: str = option(None, "first-layer rule", choices=FIRST_LAYER_RULES,
                              default_text=_preset_text("first_layer"))
    deep_supervision: bool | str | list[str] = option(
        None, "penalise intermediate heatmaps too: no MODULE = the default layers, 'auto' = those when the model has "
        "them, 'off' = none, else the modules named", metavar="MODULE", default_text=_preset_text("deep_supervision"))
    select: str = option(None, "selective variant's class", choices=SELECTIONS, default_text=_preset_text("select"))
    batch_stats: str = option(None, "train-mode BatchNorm statistics in the heatmap's gradient: live (as in the "
                              "forward) or detached constants (the reference code)", choices=BATCH_STATS,
                              default_text=_preset_text("batch_stats"))
    tune_cut: int = option(0, "choose C1/C2 by tune_cut first: EPOCHS of plain training on a copy (0: use C1/C2)",
                           metavar="EPOCHS")
    seed: int = option(0, "seed of the initialisation, the data order and every random draw")
    num_workers: int = option(0, "DataLoader workers")
    threads: int | None = option(None, "CPU threads of the training process (torch.set_num_threads): a fixed count "
                                 "makes CPU results independent of the machine's core count",
                                 default_text="the cores less --num-workers, at least 1")
    size: int | None = option(None, "resize images to SIZE x SIZE", default_text="the weights' size, else as stored")
    channels: int | None = option(None, "convert images to 1 or 3 channels", choices=CHANNELS,
                                default_text="3 for torchvision and timm models, else as stored")
    mask_foreground: str | None = option(None, "mask pixel values that are foreground, e.g. 1 for an Oxford-IIIT Pet "
                                         "trimap (1,3 counts its border in)", metavar="VALUES",
                                         default_text="every nonzero pixel")
    mask_threshold: float | None = option(None, "soft or lossy masks: foreground where the grey level in [0, 1] is "
                                          ">= T", metavar="T", default_text="none")
    mask_invert: bool = option(False, "the masks mark the background, not the foreground")
    mask_check: float = option(DEFAULT_MAX_SHARE, "refuse to train when more than this share of a split's masks is all "
                               "foreground or all background (1 = never)", metavar="SHARE")
    augment: str = option("none", "training augmentation: standard = random resized crop, horizontal flip and colour "
                          "jitter, masks moved with the images (needs torchvision)", choices=AUGMENTATIONS)
    train_split: str = option("train", "training split")
    val_split: str = option("val", "validation split ('' = none)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    backend: str | None = option(None, "relevance backend", choices=BACKENDS, default_text="auto")
    precision: str = option("32", "numeric precision: float32, or bf16 autocast for the forward and the relevance "
                            "pass (float32 master weights and losses)", choices=PRECISIONS)
    progress: bool = option(True, "no progress bars (the per-epoch lines stay)", flag="--quiet")
    tensorboard: bool = option(False, "also write TensorBoard events into RUN_DIR/tensorboard: the metrics per "
                               "epoch, the learning rate and a heatmap grid of fixed validation images (needs the "
                               "tensorboard package)")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise TrainError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name, value in (ADAMW_DEFAULTS if self.optimizer == "adamw" else {"weight_decay": 0.0}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, value in TRAINER_PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("mean", "std"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Check every field; a :class:`TrainError` names the first bad one and the valid values (and the field, in
        ``params``; an unknown architecture: :class:`~isnet_kernels.models.UnknownModelError`, with close matches).
        Reads no data: a bad setting fails before any file is opened."""

        def bad(name: str, expected: str) -> TrainError:
            return TrainError(f"{name} must be {expected}, got {getattr(self, name)!r}", param=name)

        check_name(self.arch)  # UnknownModelError with close matches; MissingExtraError naming the extra
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise bad("weights", "None, a weights name or a file path")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (list, tuple)) or not value or not all(
                    isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
                raise bad(name, "None or a list of finite numbers, one per channel")
        if (self.mean is None) != (self.std is None):
            raise TrainError("pass both --mean and --std (one value per channel, or one for all), or neither")
        if self.std is not None and not all(v > 0 for v in self.std):
            raise bad("std", "positive")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {OPTIMIZERS}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"one of {PRECISIONS}")
        if not isinstance(self.warmup_epochs, (int, float)) or isinstance(self.warmup_epochs, bool) or \
                not math.isfinite(self.warmup_epochs) or self.warmup_epochs < 0:
            raise bad("warmup_epochs", "a number >= 0")
        if self.variant not in TRAIN_VARIANTS:
            raise TrainError(f"unknown variant {self.variant!r}; choose one of {', '.join(TRAIN_VARIANTS)}")
        if not isinstance(self.model_kwargs, dict):
            raise bad("model_kwargs", "a dict of constructor arguments")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "epochs" else 1):
                raise bad(name, "a positive int" if name == "batch_size" else "an int >= 0")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise bad("threads", "a positive int (or not given: PyTorch's setting)")
        for name in ("tune_cut", "num_workers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "an int >= 0")
        for name in ("lr", "momentum", "weight_decay", "E", "A", "B", "mass", "rrr_lambda"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(name, "a finite number >= 0")
        if not self.lr > 0:
            raise bad("lr", "positive")
        if not self.E > 0:
            raise bad("E", "positive")
        try:
            check_eps(self.eps)
        except ISNetError as exc:
            raise TrainError(str(exc), param="eps") from None
        if self.clip is not None and (not isinstance(self.clip, (int, float)) or not self.clip >= 0):
            raise bad("clip", "a number >= 0 (0 or None: no clipping)")
        for name in ("P", "d", "d_loss"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise bad(name, "a number in [0, 1]")
        for name in ("C1", "C2"):
            value = getattr(self, name)
            if not isinstance(value, dict) and (not isinstance(value, (int, float)) or not value > 0):
                raise bad(name, "a positive number (or a dict per level, as tune_cut returns)")
        try:
            check_band(check_cut(self.C1, "C1"), check_cut(self.C2, "C2"))
        except ISNetError as exc:
            raise TrainError(str(exc), param=exc.params) from None
        if self.foreground not in FOREGROUND_RULES:
            raise bad("foreground", f"one of {FOREGROUND_RULES}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise bad("nonfinite", f"one of {NONFINITE_POLICIES}")
        if self.first_layer not in FIRST_LAYER_RULES:
            raise bad("first_layer", f"one of {FIRST_LAYER_RULES}")
        if self.heatmap not in HEATMAPS:
            raise bad("heatmap", f"one of {HEATMAPS}")
        if self.memory not in MEMORY_MODES:
            raise bad("memory", f"one of {MEMORY_MODES}")
        if self.heatmap == "gradinput" and self.variant == "dual":
            raise TrainError("the dual variant's z+ map has no Grad x Input counterpart; use --heatmap lrp with "
                             "--variant dual")
        if self.map_chunk is not None and (isinstance(self.map_chunk, bool) or not isinstance(self.map_chunk, int)
                                           or self.map_chunk < 1):
            raise bad("map_chunk", "a positive int (or not given: chosen from the memory available)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"one of {LR_SCHEDULES}")
        if self.select not in SELECTIONS:
            raise bad("select", f"one of {SELECTIONS}")
        if self.batch_stats not in BATCH_STATS:
            raise bad("batch_stats", f"one of {BATCH_STATS}")
        if not isinstance(self.deep_supervision, (bool, list)) and self.deep_supervision != "auto":
            raise bad("deep_supervision", "True, False, 'auto' or a list of module names")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise bad("size", "a positive int (or not given: the images' own size)")
        if self.channels is not None and self.channels not in CHANNELS:
            raise bad("channels", "1 or 3 (or not given: as stored)")
        try:
            self.mask_convention  # noqa: B018 - validates the mask settings
        except ISNetError as exc:
            raise TrainError(str(exc), param=exc.params) from None
        if isinstance(self.mask_check, bool) or not isinstance(self.mask_check, (int, float)) \
                or not 0 <= self.mask_check <= 1:
            raise bad("mask_check", "a share in [0, 1]")
        if self.augment not in AUGMENTATIONS:
            raise bad("augment", f"one of {AUGMENTATIONS}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise bad("device", f"one of {DEVICES} or 'cuda:N'")
        if self.backend is not None and self.backend not in BACKENDS:
            raise bad("backend", f"one of {BACKENDS} (or not given: auto)")
        if not self.train_split:
            raise bad("train_split", "a split folder name")
        if self.task is not None and self.task not in TASKS:
            raise bad("task", f"one of {TASKS} (or not given: from the data)")
        self.check_task(self.task)
        if self.variant in ("none", "rrr") and self.tune_cut:
            raise TrainError(f"tune_cut chooses C1/C2 of the heatmap loss, which variant {self.variant!r} does not "
                             "use; drop --tune-cut or pick an ISNet variant")

    def check_task(self, task: str | None) -> None:
        """Raise a :class:`TrainError` for settings that a ``task`` (the configured or the data's) does not
        support: multi-label training with ``--variant rrr`` (its penalty is the input gradient of the summed
        log-softmax, a single-label quantity) or ``--tune-cut`` (its copy is trained with cross-entropy)."""
        if task != "multilabel":
            return
        if self.variant == "rrr":
            raise TrainError("--variant rrr penalises the input gradient of the log-softmax, a single-label quantity; "
                             "train the multi-label data with an ISNet variant (selective) or --variant none",
                             param="variant")
        if self.tune_cut:
            raise TrainError("--tune-cut trains its copy with cross-entropy over classes, not for multi-label data; "
                             "drop --tune-cut and give --C1/--C2", param="tune_cut")

    def check_model(self, image_size: tuple[int, int] | None = None, in_channels: int | None = None) -> None:
        """Check that ``arch`` can be built with ``model_kwargs`` and takes images of ``size`` (or of
        ``image_size``, the data's own, when ``size`` is not given), without reading data: the model is built on
        PyTorch's meta device (no memory, no computation) and run on an empty batch of that shape. A
        :class:`TrainError` names the setting (``model_kwargs`` or ``size``) and, for a too-small size, the
        smallest the architecture takes. For a torchvision model the size is refused only when a smaller one than
        the smallest it takes is asked for (a model built for one input size, as a ViT, is left to its own check);
        timm models are checked when they are built, by their own constructors."""
        if self.arch.startswith("timm:"):
            return
        package = self.arch in ARCHITECTURES
        channels = in_channels or self.channels or (1 if package else 3)
        if package:
            _check_model_kwargs(self.arch, self.model_kwargs)
        try:
            with torch.device("meta"):
                model = build_model(self.arch, 2, channels, **self.model_kwargs)
        except ModelArgumentError as exc:  # names the argument and what to do already
            raise TrainError(str(exc), param="model_kwargs") from None
        except Exception as exc:  # the constructor's own message, whatever its type, with the setting that caused it
            given = ", ".join(f"{k}={v!r}" for k, v in self.model_kwargs.items()) or "(none given)"
            detail = str(exc) if isinstance(exc, ISNetError) else f"{type(exc).__name__}: {exc}"
            raise TrainError(f"model_kwargs {given} not accepted by architecture {self.arch!r}: {detail}",
                             param="model_kwargs") from None
        hw = (self.size, self.size) if self.size is not None else image_size
        if hw is None or _takes(model, channels, hw):
            return
        smallest = _smallest_size(model, channels)
        if not package and (smallest is None or smallest <= min(hw)):
            return
        which = f"size {self.size} is" if self.size is not None else f"the images ({hw[0]} x {hw[1]} pixels) are"
        fix = (f"its smallest input is {smallest} x {smallest} pixels; pass size={smallest} or more"
               if smallest is not None else "pass a larger size")
        raise TrainError(f"{which} too small for architecture {self.arch!r}: {fix} (images and masks are resized "
                         "when loaded)", param="size")

    @property
    def mask_convention(self) -> MaskConvention:
        """The :class:`~isnet_kernels.data.masks.MaskConvention` of ``mask_foreground``, ``mask_threshold`` and
        ``mask_invert``."""
        return MaskConvention.from_options(self.mask_foreground, self.mask_threshold, self.mask_invert)

    @property
    def is_isnet(self) -> bool:
        """Whether the heatmap loss is trained (every variant but ``"none"`` and ``"rrr"``)."""
        return self.variant not in ("none", "rrr")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (kept in ``config.json`` and in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainError(f"unknown configuration keys {unknown}; valid keys are {sorted(known)}")
        if "preset" not in values:  # written before presets and schedules existed: it trained at a constant rate
            values = {"lr_schedule": "constant", **values}
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)
