"""The training loop: SGD with momentum (or AdamW) and gradient-norm clipping, per-epoch metrics, checkpoints,
exact resume, Ctrl-C, and DistributedDataParallel under ``torchrun``. The model by name with its weights, the
input preprocessing, the optimizer and bf16 autocast come from :mod:`.backbone`.

Per epoch, the run directory gets a row in ``metrics.csv`` / ``metrics.json`` (:data:`~.metrics.COLUMNS`: the
training loss parts and accuracy, running means over the epoch's batches in train mode; the validation
cross-entropy, accuracy and background-relevance fraction, see :mod:`.evaluate`), ``last.pt`` and, when the
validation accuracy is the best so far, ``best.pt`` (:mod:`.checkpoint`). With ``--tensorboard`` the same numbers,
and a heatmap grid of fixed validation images, go to TensorBoard event files in ``tensorboard/`` (:mod:`.board`).

Exact resume: a checkpoint describes a batch boundary (epochs and batches done, the model, the optimizer, every
RNG state, the metric sums of a partial epoch), and the data order is a function of (seed, epoch)
(:mod:`.sampling`), so a resumed run takes the same steps as one that was never stopped: on CPU its parameters
equal the uninterrupted run's bit for bit, whether it stopped at an epoch's end or in its middle.

Ctrl-C and SIGTERM (what cluster schedulers send before they kill a job): the first SIGINT or SIGTERM asks the
loop to stop at the next batch boundary; the run then saves ``last.pt``, says how to continue and returns
(``TrainResult.interrupted``, ``TrainResult.signal``; the command line exits with 128 + the signal's number, 130
or 143). A second one stops at once (a KeyboardInterrupt raised anywhere is handled the same way: the checkpoint
then holds the last completed step). DataLoader workers ignore both; the main process shuts them down.

Files: every file of the run directory is written atomically (:mod:`.files`); temporary files that a killed
process left behind are removed when a run opens the directory; a write that fails (a full disk, a read-only
folder) is one :class:`~.errors.TrainError` naming the cause, and the previous file stays intact. ``run.json``
records the run's progress and :func:`~.environment.environment` (the CPU, threads and library versions).

The run directory is where ``--out`` points, however it is spelled (relative, absolute, after the folder was
moved); the data set is recorded by its absolute path and its fingerprint (classes, images and file names of the
training and validation splits), and a resumed run checks that ``--data``, when given, is the same data set.

Distributed (``WORLD_SIZE`` > 1, :mod:`.distributed`): the :class:`~isnet_kernels.ISNet` itself, whose forward
runs the classifier and its relevance pass, is wrapped in ``DistributedDataParallel``, so the gradients of the
heatmap loss are all-reduced like those of the cross-entropy. ``batch_size`` is global: each of the W processes
takes ``batch_size / W`` images of the global batch; gradients are averaged, so with equal shares a step equals
one process's step on the global batch, up to floating-point summation order, for models without BatchNorm in
train mode: BatchNorm normalises each process's share with that share's statistics (the relevance pass folds the
statistics its own forward computed; SyncBatchNorm is not synchronised there), so BatchNorm models train
correctly but not identically to one process. Only rank 0 writes files; metric sums are added over processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..backends import dispatch
from ..errors import InputTypeError, ISNetError
from ..isnet import ISNetLossOutput, ISNetOutput, RRRLoss, tune_cut
from . import backbone
from .board import open_board, summary_writer
from .checkpoint import BEST, FORMAT, LAST, capture_rng, load_checkpoint, restore_rng, save_checkpoint
from .config import RESUMABLE_FIELDS, TrainConfig, flag_of
from .data import check_classes, check_split_masks, check_task, dataset_groups, open_split
from .distributed import Context, setup
from .environment import default_threads, environment
from .errors import TrainError
from .evaluate import evaluate, heatmap_support, split_scores
from .files import remove_stale_temporaries, write_atomic
from .metrics import LOSS_PARTS, Meter, correct, write_metrics
from .sampling import loader_seed
from .scores import SCORE_NAMES

TRAIN_METRICS = (*LOSS_PARTS, "accuracy")
#: Batches between two updates of the progress bar's loss (each one host synchronisation).
POSTFIX_EVERY = 10

Callback = Callable[["Trainer", int, int], None]
#: Signals that stop a run at the next batch boundary with a checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: ``run.json``: the run's progress and the environment it ran in, rewritten at every checkpoint.
RUN_INFO = "run.json"


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    run_dir: Path
    epochs_done: int
    step: int
    interrupted: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_accuracy: float | None = None
    C1: Any = None
    C2: Any = None
    #: The signal that stopped an interrupted run (``signal.SIGINT`` for Ctrl-C or a KeyboardInterrupt,
    #: ``signal.SIGTERM``), None when the run was not interrupted.
    signal: int | None = None


class _StopRequested(KeyboardInterrupt):
    """Raised at a batch boundary after Ctrl-C or SIGTERM asked the run to stop."""


class Trainer:
    """Train a classifier, plain (``variant="none"``) or as an ISNet, into ``config.out`` (module docstring).

    Parameters
    ----------
    config : the run's :class:`~.config.TrainConfig`.
    model : a classifier to train instead of ``build_model(config.arch, ...)`` (the checkpoints then record that
        the model cannot be rebuilt from its name; ``isnet eval`` needs an architecture name).
    resume : continue the run in ``config.out`` from its ``last.pt``. ``config`` may differ from the saved one
        only in :data:`~.config.RESUMABLE_FIELDS` (``epochs`` extends the run).
    callbacks : functions ``callback(trainer, epoch, step)`` called after every training step (epoch from 0,
        ``step`` the batches done in that epoch).
    log : where progress messages go (rank 0 only); ``print`` by default.

    ``Trainer(config).fit()`` returns a :class:`TrainResult`.
    """

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, resume: bool = False,
                 callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = None):
        if not isinstance(config, TrainConfig):
            raise InputTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        config.validate()
        if not config.out:
            raise TrainError("no run directory given; pass --out RUN_DIR (created if needed)")
        if model is None:  # before any data is read: the model's arguments, and the size when one is given
            config.check_model()
        self.config = config
        self.custom_model = model
        self.resume = resume
        self.callbacks = list(callbacks)
        self._log = log or print
        self.run_dir = Path(config.out)
        self._stop: int | None = None  # the signal that asked the run to stop
        self.epoch = 0
        self.step = 0

    # --- public -------------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run (or continue) the training; returns when done, or after saving a checkpoint on Ctrl-C or SIGTERM."""
        self.ctx = setup(self.config.device)
        previous: dict[int, Any] = {}
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads or default_threads(self.config.num_workers))
        _set_interop_threads(torch.get_num_threads())
        self.board = None
        together = False  # every process ends here in step: they leave the process group together
        try:
            self._check_backend()  # before any data is read: a backend that cannot run fails at once
            if self.config.tensorboard:  # likewise a missing tensorboard package
                summary_writer()
            self._prepare()  # Ctrl-C here (data, model, tune_cut) simply stops: there is nothing to save yet
            if self.epoch >= self.config.epochs:
                self.info(f"{self.run_dir} has trained {self.epoch} epoch(s) already; nothing to do (pass --epochs "
                          f"N > {self.epoch} to train on)")
            if threading.current_thread() is threading.main_thread():
                previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
            stopped_by, coordinated = None, True
            try:
                self._train()
            except KeyboardInterrupt as exc:
                stopped_by, coordinated = self._stop or signal.SIGINT, isinstance(exc, _StopRequested)
                self._save_interrupted(coordinated=coordinated)
            self._write_run_info(finished=stopped_by is None)
            together = coordinated
            return TrainResult(self.run_dir, self.epoch, self.step, stopped_by is not None, list(self.history),
                               self.best, self.config.C1, self.config.C2, stopped_by)
        finally:
            if self.board is not None:
                self.board.close()
            torch.set_num_threads(threads)
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.ctx.close(together=together)

    def info(self, message: str) -> None:
        """A message from rank 0."""
        if self.ctx.is_main:
            self._log(message)

    # --- set-up -------------------------------------------------------------------------------------------------
    def _check_backend(self) -> None:
        """Raise :class:`~isnet_kernels.BackendUnavailableError` now if the relevance backend asked for cannot run
        tensors on the run's device (the check the first relevance pass would make, after the data had loaded)."""
        dispatch.resolve(self.config.backend, self.ctx.device)

    def _prepare(self) -> None:
        cfg, ctx = self.config, self.ctx
        if ctx.is_main:
            for path in remove_stale_temporaries(self.run_dir):
                self.info(f"removed {path}, a temporary file left by a process that was killed while writing")
        state = self._check_run_dir()
        if state is not None:
            cfg = self.config = self._resumed_config(state)
        if cfg.batch_size % ctx.world_size:
            raise TrainError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                             f"{ctx.world_size} processes; pass a multiple of {ctx.world_size}")
        self.local_batch = cfg.batch_size // ctx.world_size
        backbone.check_precision(cfg, ctx.device)
        _seed_everything(cfg.seed)

        # the preprocessing the model's weights expect (a resumed run keeps the one it started with)
        spec = state.get("model_spec") if state is not None else None
        pre = self.preprocess = backbone.spec_preprocess(spec) if spec else backbone.resolve_preprocess(cfg)
        self.info(f"inputs: {pre.describe()}")
        masks = cfg.mask_convention
        self.train_set = open_split(cfg.data, cfg.train_split, size=pre.size, channels=pre.channels,
                                    flag="--train-split", mask_convention=masks)
        self.classes = list(self.train_set.classes)
        task = check_task(self.train_set, cfg.task, cfg.data)  # --task, or found from the data
        cfg.check_task(task)
        if cfg.task != task:
            cfg = self.config = cfg.replace(task=task)
        self.val_set = None
        if cfg.val_split:
            self.val_set = open_split(cfg.data, cfg.val_split, size=pre.size, channels=pre.channels,
                                      flag="--val-split (or --val-split '' to train without validation)",
                                      mask_convention=masks, classes=self.classes, task=task)
            check_classes(self.classes, self.val_set.classes, f"validation split {cfg.val_split!r}")
        for dataset in (self.train_set, self.val_set):  # masks that cannot penalise anything stop a run using them
            if dataset is not None:
                check_split_masks(dataset, cfg.mask_check, refuse=cfg.variant != "none", log=self.info)
        self.val_groups = dataset_groups(self.val_set) if self.val_set is not None else None
        if cfg.augment != "none":  # on the images in [0, 1], before the normalisation the weights expect
            from ..data.augment import Augmented

            self.train_set = Augmented(self.train_set, cfg.augment, seed=cfg.seed)
        self.train_set = backbone.wrap(self.train_set, pre)
        if self.val_set is not None:
            self.val_set = backbone.wrap(self.val_set, pre)
        self.in_channels = int(self.train_set[0][0].shape[0])
        if self.custom_model is None and cfg.size is None:  # the images' own size, known now
            cfg.check_model(tuple(self.train_set[0][0].shape[-2:]), self.in_channels)
        self.data_record = self._data_record()
        if state is not None:
            check_classes(list(state["classes"]), self.classes, f"training split {cfg.train_split!r} of {cfg.data}")
            self._check_same_data(state)

        if self.custom_model is not None:
            if cfg.weights is not None:
                raise TrainError("--weights applies to a model built by name; load weights into a model passed as "
                                 "an object yourself (isnet_kernels.models.load_state)")
            model = self.custom_model
        else:
            model = backbone.build_for_run(cfg, len(self.classes), self.in_channels, load_weights=state is None)
        self.model_spec = backbone.model_spec(cfg, pre, len(self.classes), self.in_channels)
        self.bounds = pre.bounds(self.in_channels)
        self.model = model.to(ctx.device)
        self.generator = torch.Generator().manual_seed(cfg.seed + ctx.rank) if cfg.variant == "stochastic" else None
        # a plain classifier uses nothing of the LRP engine: a model with layers it has no rules for trains too
        self.isnet = backbone.make_isnet(cfg, self.model, bounds=self.bounds, generator=self.generator)
        self.optimizer = backbone.make_optimizer(cfg, self.model)
        self.net: nn.Module = self.isnet if self.isnet is not None else self.model
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.heatmap_note = heatmap_support(self.model)
        if self.heatmap_note is not None:
            self.info(f"background relevance will not be reported: {self.heatmap_note}")

        self.sampler = _sampler(len(self.train_set), cfg.seed, ctx, shuffle=True)
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(self.train_set, batch_size=self.local_batch, sampler=self.sampler,
                                 num_workers=cfg.num_workers, generator=self.loader_generator,
                                 pin_memory=ctx.device.type == "cuda", worker_init_fn=_ignore_sigint)
        self.val_loader = None
        if self.val_set is not None:
            self.val_loader = DataLoader(self.val_set, batch_size=self.local_batch,
                                         sampler=_sampler(len(self.val_set), cfg.seed, ctx, shuffle=False),
                                         num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(0),
                                         worker_init_fn=_ignore_sigint)

        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.meter = Meter(TRAIN_METRICS, ctx.device)
        if state is not None:
            self._restore(state)
            if ctx.is_main and self.history:  # a run killed after its checkpoint but before its metrics
                write_metrics(self.history, self.run_dir)
        elif cfg.tune_cut:
            self._tune_cut()
            cfg = self.config  # with the C1/C2 chosen
        if ctx.is_main:  # on resume: the data set's path and the epochs as they are now
            write_atomic(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n",
                         what="the run's settings")
        self.rrr = RRRLoss(cfg.rrr_lambda) if cfg.variant == "rrr" else None
        self.loss_fn = backbone.make_loss(cfg)
        self._boundary = self._snapshot()
        if cfg.tensorboard and ctx.is_main:
            self.board = open_board(self, self.info)

    def _check_run_dir(self) -> dict[str, Any] | None:
        last = self.run_dir / LAST
        if self.resume:
            if not last.is_file():
                raise TrainError(f"cannot resume: {last} does not exist; start the run without --resume, or pass "
                                 "the --out of a run that saved a checkpoint")
            return load_checkpoint(last, map_location="cpu")
        if last.is_file():
            raise TrainError(f"run directory {self.run_dir} already holds a checkpoint ({last}); pass --resume to "
                             "continue that run, or choose a new --out")
        return None

    def _resumed_config(self, state: dict[str, Any]) -> TrainConfig:
        saved = TrainConfig.from_dict(state["config"])
        mine, theirs = self.config.to_dict(), saved.to_dict()
        # out is where the run is now, however it is spelled or wherever it was moved: not a setting
        ignore = {"out", *RESUMABLE_FIELDS} | ({"C1", "C2"} if saved.tune_cut else set()) \
            | ({"task"} if self.config.task is None else set())  # not given: the task the run found in its data
        changed = sorted(k for k in mine if k not in ignore and mine[k] != theirs[k])
        if changed:
            diff = ", ".join(f"{flag_of(k)} {theirs[k]!r} -> {mine[k]!r}" for k in changed)
            allowed = ", ".join(flag_of(k) for k in RESUMABLE_FIELDS)
            raise TrainError(f"the run in {self.run_dir} was trained with other settings ({diff}); a resumed run "
                             f"may only change {allowed}. Drop those options, or train a new run into another "
                             "--out")
        if bool(state.get("custom_model")) != (self.custom_model is not None):
            raise TrainError(f"the run in {self.run_dir} was trained with a model "
                             f"{'passed as an object' if state.get('custom_model') else 'built by name'}; resume it "
                             "the same way")
        resumed = saved.replace(out=mine["out"], **{k: mine[k] for k in RESUMABLE_FIELDS})
        if resumed.task is None:  # a run saved before the task was recorded: one class per image
            resumed = resumed.replace(task="multiclass")
        recorded = (state.get("data") or {}).get("root")
        if resumed.data == saved.data and not Path(saved.data).exists() and recorded and Path(recorded).exists():
            resumed = resumed.replace(data=recorded)  # a relative --data of a run started in another folder
        return resumed

    def _data_record(self) -> dict[str, Any]:
        """Which data set the run trains on: its absolute path, and per split its classes, its image count and a
        hash of its file names (a moved copy of the data set has the same fingerprint)."""

        def split_record(dataset: Any) -> dict[str, Any]:
            names = hashlib.sha256()
            root = Path(dataset.root, "images", dataset.split)
            for image, _, label in dataset.samples:
                names.update(f"{Path(os.path.relpath(image, root)).as_posix()}\t{label}\n".encode())
            return {"classes": list(dataset.classes), "images": len(dataset), "names": names.hexdigest()}

        record = {"root": os.path.abspath(self.config.data), "train": split_record(self.train_set)}
        if self.val_set is not None:
            record["val"] = split_record(self.val_set)
        return record

    def _check_same_data(self, state: dict[str, Any]) -> None:
        """A resumed run must train on the data set it started with (its epochs, its position in an epoch and its
        learning-rate schedule count that data set's images): refuse another one, naming the difference."""
        saved = state.get("data")
        if not saved:  # a checkpoint written before data sets were recorded: the number of images still counts
            return
        for split in ("train", "val"):
            before, now = saved.get(split), self.data_record.get(split)
            if before is None or now is None or before == now:
                continue
            what = "classes" if before["classes"] != now["classes"] else \
                "images" if before["images"] != now["images"] else "file names"
            detail = {"classes": f"classes {now['classes']} where it had {before['classes']}",
                      "images": f"{now['images']} images where it had {before['images']}",
                      "file names": "other file names"}[what]
            raise TrainError(f"the data set in {self.config.data} is not the one the run in {self.run_dir} was "
                             f"trained on ({saved['root']}): its {split} split has {detail}; a resumed run keeps its "
                             "data set (its epochs and learning-rate schedule count its images): drop --data, or "
                             "pass as --data the folder the run's data set is in now, or train a new run into "
                             "another --out")

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.best = state["best"]
        rank = self.ctx.rank
        if self.step and self.ctx.world_size != int(state.get("world_size", 1)):
            raise TrainError(f"the checkpoint stopped in the middle of an epoch with {state.get('world_size', 1)} "
                             f"process(es); resume it with the same number of processes (now {self.ctx.world_size})")
        meters = state.get("epoch_meter")
        if meters and rank < len(meters) and meters[rank] is not None:
            self.meter.load_state_dict(meters[rank])
        # one entry per process; a checkpoint saved by one process alone (a KeyboardInterrupt outside the stop flag
        # under torchrun) holds rank 0's states only, which then stand for every process
        rng = state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0]
        restore_rng(rng, self.generator)
        self.info(f"resuming {self.run_dir} at epoch {self.epoch + 1}, batch {self.step}")

    def _tune_cut(self) -> None:
        cfg, ctx = self.config, self.ctx
        cut = None
        if ctx.is_main:
            self.info(f"choosing C1/C2: {cfg.tune_cut} epoch(s) without the heatmap loss (tune_cut)")
            loader = DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(cfg.seed), num_workers=cfg.num_workers)
            result = tune_cut(self.isnet, loader, epochs=cfg.tune_cut, lr=cfg.lr, momentum=cfg.momentum,
                              clip=cfg.clip or None, progress=cfg.progress)
            cut = (result.C1, result.C2)
        C1, C2 = ctx.broadcast_object(cut)
        self.config = cfg.replace(C1=C1, C2=C2)
        self.info(f"C1 = {C1}, C2 = {C2}")

    # --- the loop -----------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop is not None:
            raise KeyboardInterrupt
        self._stop = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.info(f"{name}: stopping after this batch and saving a checkpoint (send it again to stop at once)")

    def _snapshot(self) -> dict[str, Any]:
        """The state of the last batch boundary that is not in the model and optimizer themselves."""
        return {"epoch": self.epoch, "step": self.step, "rng": capture_rng(self.generator),
                "meter": self.meter.state_dict()}

    def _train(self) -> None:
        cfg, ctx = self.config, self.ctx
        from tqdm.auto import tqdm

        while self.epoch < cfg.epochs:
            if ctx.any(self._stop is not None):  # asked during the last epoch's validation and checkpoint
                raise _StopRequested
            self.sampler.set_epoch(self.epoch)
            if hasattr(self.train_set, "set_epoch"):  # augmentation drawn per (seed, epoch, image)
                self.train_set.set_epoch(self.epoch)
            self.sampler.skip(self.step * self.local_batch)
            self.loader_generator.manual_seed(loader_seed(cfg.seed, self.epoch))
            total = self.step + len(self.loader)
            bar = tqdm(self.loader, total=total, initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and ctx.is_main), leave=False)
            start = time.perf_counter()
            for images, masks, labels in bar:
                self._step(images, masks, labels)
                self.step += 1
                self._boundary = self._snapshot()
                for callback in self.callbacks:
                    callback(self, self.epoch, self.step)
                if ctx.any(self._stop is not None):
                    raise _StopRequested
                if self.step % POSTFIX_EVERY == 0 and cfg.progress and ctx.is_main:
                    bar.set_postfix(loss=f"{self.meter.means()['loss']:.4f}")
            bar.close()
            self._end_epoch(time.perf_counter() - start)

    def _step(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> None:
        cfg, dev = self.config, self.ctx.device
        x = images.to(dev, non_blocking=True)
        m = masks.to(dev, non_blocking=True)
        y = labels.to(dev, non_blocking=True)
        if self.rrr is not None:  # Right for the Right Reasons: the input gradient penalised on the background
            x = x.requires_grad_(True)
            with backbone.autocast(cfg, dev):
                out = ISNetOutput(self.net(x))
            out.logits = backbone.float32(out.logits)
            rrr = self.rrr(out.logits, x, y, m)
            zero = rrr.total.new_zeros(())
            loss = ISNetLossOutput(rrr.total, rrr.classification, rrr.penalty, zero, zero)
            loss = self.loss_fn.finish(loss)
        else:
            with backbone.autocast(cfg, dev):  # bf16: forward and relevance pass; the loss in float32 below
                out = self.net(x, y, heatmaps=True) if cfg.is_isnet else ISNetOutput(self.net(x))
            out.logits = backbone.float32(out.logits)
            loss = self.loss_fn(out, y, m)
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if cfg.lr_schedule == "cosine" or cfg.warmup_epochs:
            per_epoch = -(-(len(self.sampler) + self.sampler.start) // self.local_batch)  # before any skip
            t, total = self.epoch * per_epoch + self.step, cfg.epochs * per_epoch
            for group in self.optimizer.param_groups:
                group["lr"] = backbone.learning_rate(cfg, t, total, per_epoch)
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        n = y.shape[0]
        for name, value in zip(LOSS_PARTS, (loss.total, loss.classification, loss.heatmap, loss.background,
                                            loss.foreground)):
            self.meter.add(name, value, n)
        self.meter.add_sum("accuracy", correct(out.logits, y), n)

    def _end_epoch(self, seconds: float) -> None:
        cfg, ctx = self.config, self.ctx
        train = Meter(TRAIN_METRICS, ctx.device)
        train.load_state_dict(self.meter.state_dict())
        train.all_reduce()
        row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
        row.update({f"train_{k}": v for k, v in train.means().items()})
        val = {"loss": math.nan, "accuracy": math.nan, "background_fraction": math.nan,
               **dict.fromkeys(SCORE_NAMES)}
        if self.val_loader is not None:
            outputs: dict[str, list] = {}
            meter = evaluate(self.model, self.val_loader, device=ctx.device, eps=cfg.eps, first_layer=cfg.first_layer,
                             bounds=self.bounds, backend=cfg.backend, heatmaps=self.heatmap_note is None,
                             progress=cfg.progress and ctx.is_main, desc="validation", outputs=outputs)
            meter.all_reduce()
            val = {**val, **meter.means(), **self._val_scores(outputs)}
        row.update({f"val_{k}": v for k, v in val.items()})
        row["seconds"] = seconds
        self.history.append(row)
        improved = self.val_loader is not None and (self.best is None or val["accuracy"] > self.best)
        if improved:
            self.best = val["accuracy"]
        self.epoch += 1
        self.step = 0
        self.meter = Meter(TRAIN_METRICS, ctx.device)
        self._boundary = self._snapshot()
        state = self._state()
        if ctx.is_main:
            # best.pt first: a run killed between the two resumes from the previous last.pt and writes both again
            if improved:
                self._save(state, BEST)
            self._save(state, LAST)
            write_metrics(self.history, self.run_dir)
            if self.board is not None:
                self.board.write_epoch(row, self.model)
            self._write_run_info(finished=self.epoch >= cfg.epochs)
            self.info(_summary(row, cfg.epochs))
        ctx.barrier()

    def _val_scores(self, outputs: dict[str, list]) -> dict[str, float]:
        """Balanced accuracy, macro F1, AUROC and worst-group accuracy of the validation predictions (every
        process's, gathered; None where they cannot be computed or scikit-learn is missing)."""
        order = list(self.val_loader.sampler)
        local = {"probs": outputs.get("probs", []), "labels": outputs.get("labels", []),
                 "groups": [self.val_groups[i] for i in order] if self.val_groups else None}
        parts = self._gather(local)
        merged = {"probs": [t for p in parts for t in p["probs"]], "labels": [t for p in parts for t in p["labels"]]}
        groups = [g for p in parts for g in p["groups"]] if self.val_groups else None
        try:
            scores = split_scores(merged, self.classes, groups, bootstrap=0)
        except ISNetError:  # scikit-learn is not installed: the scores stay None
            return {}
        return {k: scores[k] for k in SCORE_NAMES}

    # --- checkpoints --------------------------------------------------------------------------------------------
    def _state(self, gather: bool = True) -> dict[str, Any]:
        b = self._boundary
        meter = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in b["meter"].items()}
        local = {"rng": b["rng"], "meter": meter if b["step"] else None}
        per_rank = self._gather(local) if gather else [local]
        return {
            "format": FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": b["epoch"],
            "step": b["step"],
            "epoch_meter": [p["meter"] for p in per_rank] if b["step"] else None,
            "rng": [p["rng"] for p in per_rank],
            "data_order": {**self.sampler.state_dict(), "epoch": b["epoch"], "start": b["step"] * self.local_batch,
                           "loader_generator": self.loader_generator.get_state()},
            "world_size": self.ctx.world_size,
            "config": self.config.to_dict(),
            "history": list(self.history),
            "best": self.best,
            "classes": list(self.classes),
            "in_channels": self.in_channels,
            "data": self.data_record,
            "custom_model": self.custom_model is not None,
            "model_spec": self.model_spec,
        }

    def _gather(self, local: dict[str, Any]) -> list[dict[str, Any]]:
        """Every process's ``local`` (RNG states, partial-epoch metric sums), by rank; rank 0 writes them all."""
        if not self.ctx.distributed:
            return [local]
        gathered: list[Any] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(gathered, local)
        return gathered

    def _save_interrupted(self, coordinated: bool) -> None:
        """Save the last batch boundary. ``coordinated``: every process stopped at the same boundary (Ctrl-C seen
        through the stop flag), so the RNG states of all are gathered; otherwise (a KeyboardInterrupt in one
        process) no collective call is made and rank 0's states stand for every process."""
        b = self._boundary
        state = self._state(gather=coordinated or not self.ctx.distributed)
        self.epoch, self.step = b["epoch"], b["step"]
        if self.ctx.is_main:
            path = self._save(state, LAST)
            self.info(f"interrupted at epoch {b['epoch'] + 1}, batch {b['step']}: saved {path}; continue with: "
                      f"isnet train --out {self.run_dir} --resume")

    def _save(self, state: dict[str, Any], name: str) -> Path:
        """Write checkpoint ``name``; a failed write says how to go on (the previous checkpoint is intact)."""
        try:
            return save_checkpoint(state, self.run_dir / name)
        except TrainError as exc:
            hint = f"free space or make {self.run_dir} writable, then continue with: isnet train --out " \
                   f"{self.run_dir} --resume" if (self.run_dir / LAST).is_file() else \
                   "free space or make the folder writable, then start the run again"
            raise TrainError(f"{exc}; {hint}") from exc.__cause__

    def _write_run_info(self, *, finished: bool) -> None:
        """``run.json``: epochs and batches done, whether the run finished, the best validation accuracy, the
        threads and the environment (:func:`~.environment.environment`)."""
        if not self.ctx.is_main:
            return
        info = {"run": str(self.run_dir.resolve()), "epochs_done": self.epoch, "step": self.step,
                "epochs": self.config.epochs, "finished": finished, "best_val_accuracy": self.best,
                "world_size": self.ctx.world_size, "device": str(self.ctx.device), "data": self.data_record,
                "environment": environment()}
        write_atomic(self.run_dir / RUN_INFO, json.dumps(info, indent=2) + "\n", what="the run's record")


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C and SIGTERM (the terminal, or a scheduler, sends them to every process of
    the job): the main process stops the run at a batch boundary and shuts them down; a worker that died of one
    would fail the run instead."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _set_interop_threads(count: int) -> None:
    """Inter-op threads as many as intra-op ones, where PyTorch still allows it (once per process, before any
    inter-op work); later calls keep the count set first."""
    if torch.get_num_interop_threads() == count:
        return
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:
        pass


def _sampler(size: int, seed: int, ctx: Context, shuffle: bool):
    from .sampling import EpochSampler

    return EpochSampler(size, seed=seed, rank=ctx.rank, world_size=ctx.world_size, shuffle=shuffle, pad=shuffle)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds the global state data sets and user code draw from
    random.seed(seed)


def _summary(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}",
             f"train acc {100 * row['train_accuracy']:.1f}%"]
    if not math.isnan(row["val_accuracy"]):
        parts.append(f"val acc {100 * row['val_accuracy']:.1f}%")
    if not math.isnan(row["val_background_fraction"]):
        parts.append(f"val background relevance {100 * row['val_background_fraction']:.1f}%")
    if row.get("val_auroc") is not None:
        parts.append(f"val AUROC {row['val_auroc']:.3f}")
    parts.append(f"{row['seconds']:.1f}s")
    return ", ".join(parts)


def train(config: TrainConfig, *, model: nn.Module | None = None, resume: bool = False,
          callbacks: Sequence[Callback] = ()) -> TrainResult:
    """``Trainer(config, model=model, resume=resume, callbacks=callbacks).fit()``."""
    return Trainer(config, model=model, resume=resume, callbacks=callbacks).fit()
