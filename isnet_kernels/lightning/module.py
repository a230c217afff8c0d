"""``ISNetModule``: a classifier trained as an ISNet (or plain, or with RRR) in a ``lightning.Trainer``, step for step
what ``isnet train`` does with the same settings.

What it shares with the package's trainer (:mod:`isnet_kernels.train.trainer`), by calling the same code:

- the settings, their validation and their defaults: a :class:`~isnet_kernels.train.TrainConfig` is built from the
  keyword arguments (:data:`SETTINGS`), so ``preset``, the AdamW defaults and every check are the trainer's;
- the model by name with its weights and preprocessing (:func:`~isnet_kernels.train.backbone.build_for_run`,
  :func:`~isnet_kernels.train.backbone.resolve_preprocess`: the Z^B bounds of normalised inputs);
- the optimizer (:func:`~isnet_kernels.train.backbone.make_optimizer`: SGD with momentum, or AdamW without decay on
  biases and norms) and the learning rate of every step (:func:`~isnet_kernels.train.backbone.learning_rate`:
  warm-up, then constant or cosine over the run's ``Trainer.estimated_stepping_batches``), set before each step;
- the step: the ISNet forward with heatmaps (bf16 under ``precision="bf16-mixed"``), the loss in float32 outside
  autocast, gradient-norm clipping at ``clip`` over the classifier's parameters;
- the metrics: running means over the epoch's batches (:class:`~isnet_kernels.train.Meter`, summed over the
  processes under DDP), the validation by :func:`~isnet_kernels.train.evaluate` (cross-entropy, accuracy and the
  background-relevance fraction of the evaluation heatmap, float32, eval mode).

Logged names (the columns of ``metrics.csv``), once per epoch: ``train_loss``, ``train_classification``,
``train_heatmap``, ``train_background``, ``train_foreground``, ``train_accuracy``, ``lr``; ``val_loss``,
``val_accuracy``, ``val_background_fraction``; for ``trainer.test``: ``test_loss``, ``test_accuracy``,
``test_background_fraction`` (with several test splits of a :class:`~.data.MaskedImageDataModule`, each split's
name in place of ``test``: ``test_biased_accuracy``). Also ``train_background_fraction``: the share of the
training heatmaps (those the loss penalises) outside the masks (ISNet variants only). ``loss``: each step's total,
on the progress bar only. A quantity that cannot be computed (the background fraction of a model the LRP engine
cannot explain) is not logged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from ..errors import InputError, InputTypeError
from ..isnet import ISNetLossOutput, ISNetOutput, RRRLoss
from ..lrp.engine import BoundsLike
from ..train import backbone
from ..train.config import TrainConfig
from ..train.evaluate import EVAL_METRICS, evaluate, heatmap_support
from ..train.metrics import LOSS_PARTS, Meter, background_fraction, correct

#: The :class:`~isnet_kernels.train.TrainConfig` fields an :class:`ISNetModule` takes as keyword arguments, with the
#: trainer's defaults. (The others belong to the data module, ``data``, ``batch_size``, ``augment``, ..., or to
#: ``lightning.Trainer``: ``epochs`` is ``max_epochs``, ``device`` ``accelerator``, ``precision`` ``precision``.)
SETTINGS = ("variant", "preset", "heatmap", "rrr_lambda", "map_chunk", "memory", "eps", "first_layer",
            "deep_supervision", "select", "batch_stats", "backend", "P", "d", "E", "A", "B", "mass", "C1", "C2",
            "foreground", "d_loss", "nonfinite", "optimizer", "lr", "lr_schedule", "momentum", "weight_decay",
            "warmup_epochs", "clip", "mean", "std", "size", "channels", "seed")
#: What a training epoch logs (``train_`` + each).
TRAIN_METRICS = (*LOSS_PARTS, "accuracy", "background_fraction")
#: Where the Trainer's own options stand for a TrainConfig field.
_TRAINER_OPTIONS = {"epochs": "lightning.Trainer(max_epochs=N)", "device": "lightning.Trainer(accelerator=...)",
                    "precision": "lightning.Trainer(precision='bf16-mixed')",
                    "threads": "torch.set_num_threads before training"}


class StepSchedule(LRScheduler):
    """The trainer's learning rate at every optimisation step (:func:`~isnet_kernels.train.backbone.learning_rate`),
    for all parameter groups: step ``t`` of ``total``, ``per_epoch`` steps an epoch. Step it after every
    optimizer step (Lightning's ``interval="step"``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, total: int, per_epoch: int):
        self.config, self.total, self.per_epoch = config, int(total), int(per_epoch)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = backbone.learning_rate(self.config, self.last_epoch, self.total, self.per_epoch)
        return [lr for _ in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:  # plain values only: the settings live in the module's hyperparameters
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "config")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k != "config"})


class ISNetModule(pl.LightningModule):
    """A classifier trained as an ISNet by ``lightning.Trainer`` (module docstring).

    Parameters
    ----------
    model : an ``nn.Module`` classifier (B, C, H, W) -> (B, K), or a model name as ``isnet train --arch`` takes it
        (the package's ``small``, ``resnet18``, ..., a torchvision builder, ``timm:NAME``).
    num_classes, in_channels : the classifier's outputs and input channels, for a model built by name
        (:attr:`~.data.MaskedImageDataModule.num_classes` and ``in_channels`` of the data module); ``in_channels``
        defaults to the weights' (3 for torchvision and timm models), else 3.
    weights, model_kwargs : the pretrained weights and the constructor arguments of a model built by name, as
        ``--weights`` and ``--model-arg`` (the weights' preprocessing sets the Z^B bounds, as in the trainer).
    bounds : the Z^B bounds of the inputs; default: from the preprocessing (``mean``/``std``, or the weights'), else
        (0, 1).
    settings : :data:`SETTINGS`, as ``TrainConfig`` fields with its defaults: the ISNet (``variant="selective"``,
        ``preset="default"``, ``eps``, ``first_layer``, ``deep_supervision``, ``select``, ``batch_stats``,
        ``heatmap``, ``map_chunk``, ``memory``, ``backend``; also ``"none"``, a plain classifier, and ``"rrr"``),
        the loss (``P``, ``d``, ``E``, ``A``, ``B``, ``mass``, ``C1``, ``C2``, ``foreground``, ``d_loss``,
        ``nonfinite``, ``rrr_lambda``), the optimisation (``optimizer``, ``lr``, ``lr_schedule``, ``momentum``,
        ``weight_decay``, ``warmup_epochs``, ``clip``), ``seed`` (the stochastic variant's draws: ``seed + rank``).

    A bad setting raises the trainer's :class:`~isnet_kernels.train.TrainError`; a model with a layer the LRP engine
    has no rule for raises :class:`~isnet_kernels.UnsupportedLayerError` here (ISNet variants with LRP heatmaps),
    not in the first step. ``module.model`` is the classifier, ``module.config`` the resolved settings.
    """

    def __init__(self, model: nn.Module | str, num_classes: int | None = None, in_channels: int | None = None, *,
                 weights: str | None = None, model_kwargs: dict[str, Any] | None = None,
                 bounds: BoundsLike | None = None, **settings: Any):
        super().__init__()
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            where = "; ".join(f"{k}: {_TRAINER_OPTIONS[k]}" for k in unknown if k in _TRAINER_OPTIONS)
            raise InputError(f"ISNetModule takes no setting {', '.join(unknown)}" + (f" ({where})" if where else "")
                             + f"; its settings are {', '.join(SETTINGS)}", param=unknown[0])
        name = model if isinstance(model, str) else None
        if name is None and not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module or a model name (e.g. 'resnet18'), got "
                                 f"{type(model).__name__}", param="model")
        if name is None and (weights is not None or model_kwargs):
            raise InputError("weights and model_kwargs apply to a model built by name; load weights into a module "
                             "yourself (isnet_kernels.models.load_state) and pass it", param="weights")
        self.save_hyperparameters(ignore=[] if name is not None else ["model"])
        cfg = TrainConfig(arch=name or "small", model_kwargs=dict(model_kwargs or {}), weights=weights, **settings)
        self.config = cfg
        self.preprocess = backbone.resolve_preprocess(cfg)
        if name is not None:
            if num_classes is None or isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                    or num_classes < 1:
                raise InputError(f"a model built by name needs num_classes, a positive int (e.g. the data module's "
                                 f"num_classes), got {num_classes!r}", param="num_classes")
            in_channels = in_channels or self.preprocess.channels or 3
            cfg.check_model(None, in_channels)
            model = backbone.build_for_run(cfg, num_classes, in_channels, load_weights=True)
        self.model = model
        self.bounds = bounds if bounds is not None else self.preprocess.bounds(in_channels)
        self.generator = torch.Generator().manual_seed(cfg.seed) if cfg.variant == "stochastic" else None
        # the ISNet wraps self.model and holds no state of its own: kept out of the module tree (one copy of the
        # weights in state_dict); building it compiles the relevance program, so an unsupported layer fails here
        isnet = backbone.make_isnet(cfg, model, bounds=self.bounds, generator=self.generator)
        object.__setattr__(self, "isnet", isnet)
        self.heatmap_note = heatmap_support(model)  # None, or why the background fraction cannot be computed
        self.rrr = RRRLoss(cfg.rrr_lambda) if cfg.variant == "rrr" else None
        self.loss_fn = backbone.make_loss(cfg)
        self._meters: dict[str, Meter] = {}
        self._last_lr: float | None = None

    # --- set-up -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Seed the stochastic variant's draws with ``seed + rank`` (as the trainer) and check that a
        :class:`~.data.MaskedImageDataModule` feeds the inputs the module's bounds assume."""
        if self.generator is not None:
            self.generator.manual_seed(self.config.seed + self.global_rank)
        from .data import MaskedImageDataModule

        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(data, MaskedImageDataModule) and data.preprocess is not None:
            mine, theirs = self.preprocess, data.preprocess
            if (mine.mean, mine.std) != (theirs.mean, theirs.std):
                raise InputError(f"the data module normalises the images with mean {theirs.mean} and std "
                                 f"{theirs.std} ({theirs.source}), the module expects mean {mine.mean} and std "
                                 f"{mine.std} ({mine.source}); give both the same arch and weights (or mean and "
                                 "std)", param="mean")

    def forward(self, x: Tensor) -> Tensor:
        """The classifier's logits (inference: no heatmaps)."""
        return self.model(x)

    # --- training -----------------------------------------------------------------------------------------------
    def _meter(self, key: str, names: Sequence[str]) -> Meter:
        meter = self._meters.get(key)
        if meter is None or meter.sums.device != self.device:
            meter = self._meters[key] = Meter(tuple(names), self.device)
        return meter

    def on_train_epoch_start(self) -> None:
        self._meters["train"] = Meter(TRAIN_METRICS, self.device)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """One step of the trainer's (:meth:`~isnet_kernels.train.Trainer._step`): forward with heatmaps under the
        Trainer's precision, the loss in float32."""
        x, m, y = batch[0], batch[1], batch[2]
        cfg = self.config
        if self.rrr is not None:  # Right for the Right Reasons: the input gradient penalised on the background
            x = x.requires_grad_(True)
            out = ISNetOutput(self.model(x))
            out.logits = backbone.float32(out.logits)
            with _no_autocast(x.device):
                rrr = self.rrr(out.logits, x, y, m)
                zero = rrr.total.new_zeros(())
                loss = self.loss_fn.finish(ISNetLossOutput(rrr.total, rrr.classification, rrr.penalty, zero, zero))
        else:
            out = self.isnet(x, y, heatmaps=True) if self.isnet is not None else ISNetOutput(self.model(x))
            out.logits = backbone.float32(out.logits)
            with _no_autocast(x.device):
                loss = self.loss_fn(out, y, m)
        meter = self._meter("train", TRAIN_METRICS)
        n = y.shape[0]
        for name, value in zip(LOSS_PARTS, (loss.total, loss.classification, loss.heatmap, loss.background,
                                            loss.foreground)):
            meter.add(name, value, n)
        meter.add_sum("accuracy", correct(out.logits, y), n)
        if cfg.is_isnet and out.heatmaps is not None:
            meter.add_sum("background_fraction", background_fraction(out.heatmaps.float(), m).sum(), n)
        self._last_lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else None
        self.log("loss", loss.total.detach(), prog_bar=True, logger=False, on_step=True, on_epoch=False,
                 batch_size=n)
        return loss.total

    def on_train_epoch_end(self) -> None:
        values = self._means("train")
        if self._last_lr is not None:
            values["lr"] = self._last_lr
        self._log_means(values)

    # --- evaluation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._meters["val"] = Meter(EVAL_METRICS, self.device)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_means(self._means("val"))

    def on_test_epoch_start(self) -> None:
        for key in [k for k in self._meters if k.startswith("test")]:
            del self._meters[key]

    def test_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(self._test_prefix(dataloader_idx), batch)

    def on_test_epoch_end(self) -> None:
        values: dict[str, float] = {}
        for key in sorted(k for k in self._meters if k.startswith("test")):
            values.update(self._means(key))
        self._log_means(values)

    def _test_prefix(self, index: int) -> str:
        """``test``, or with several test loaders the split's name (``test_biased``; ``test_SPLIT`` for a split
        whose name does not start with ``test``; ``test<index>`` for loaders of no data module)."""
        loaders = self.trainer.test_dataloaders
        if not isinstance(loaders, (list, tuple)) or len(loaders) <= 1:
            return "test"
        splits = getattr(getattr(self.trainer, "datamodule", None), "test_splits", None)
        if splits and index < len(splits):
            split = str(splits[index])
            return split if split.startswith("test") else f"test_{split}"
        return f"test{index}"

    def _evaluate(self, key: str, batch: Sequence[Tensor]) -> None:
        """Add one batch to ``key``'s sums, by the trainer's :func:`~isnet_kernels.train.evaluate` (float32, eval
        mode, the evaluation heatmap of the predicted class)."""
        cfg = self.config
        with _no_autocast(self.device):
            sums = evaluate(self.model, [tuple(batch[:3])], device=self.device, eps=cfg.eps,
                            first_layer=cfg.first_layer, bounds=self.bounds, backend=cfg.backend,
                            heatmaps=self.heatmap_note is None)
        meter = self._meter(key, EVAL_METRICS)
        meter.sums += sums.sums
        meter.counts += sums.counts

    def _means(self, key: str) -> dict[str, float]:
        """The means of a meter, summed over the processes first."""
        meter = self._meters.get(key)
        if meter is None:
            return {}
        meter.all_reduce()
        return {f"{key}_{name}": value for name, value in meter.means().items()}

    def _log_means(self, values: dict[str, float]) -> None:
        """Log the finite values (every process has the same ones: no further synchronisation)."""
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        if finite:
            self.log_dict(finite, on_step=False, on_epoch=True, sync_dist=False)

    # --- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """The trainer's optimizer and, per step, its learning rate (:class:`StepSchedule`)."""
        cfg = self.config
        optimizer = backbone.make_optimizer(cfg, self.model)
        total = self.trainer.estimated_stepping_batches
        batches = self.trainer.num_training_batches
        accumulate = max(int(self.trainer.accumulate_grad_batches), 1)
        per_epoch = max(math.ceil(batches / accumulate), 1) if math.isfinite(batches) else 1
        if not math.isfinite(total):
            if cfg.lr_schedule == "cosine":
                raise InputError("the cosine learning-rate schedule needs the run's length: pass "
                                 "lightning.Trainer(max_epochs=N) or max_steps=N, or lr_schedule='constant'",
                                 param="lr_schedule")
            total = per_epoch
        schedule = StepSchedule(optimizer, cfg, int(total), per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradient norm at ``clip`` (the trainer's; ``lightning.Trainer(gradient_clip_val=...)`` wins)."""
        clip = gradient_clip_val if gradient_clip_val is not None else self.config.clip
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm
                                or "norm")


def _no_autocast(device: torch.device | str) -> torch.autocast:
    """Autocast off on ``device``: the loss and the evaluation run in float32, as in the trainer."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)
