"""Training product: the trainer (checkpoints, exact resume, Ctrl-C, DDP), metrics, evaluation of runs.

Public API
----------
TrainConfig(data, out, arch, model_kwargs, weights, mean, std, preset, variant, task, heatmap, rrr_lambda, map_chunk,
    epochs, batch_size, lr, lr_schedule, optimizer, warmup_epochs, momentum, clip, weight_decay, P, d, E, A, B, mass,
    C1, C2, foreground, d_loss, nonfinite, eps, first_layer, deep_supervision, select, batch_stats, tune_cut, seed,
    num_workers, threads, size, channels, mask_foreground, mask_threshold, mask_invert, mask_check, augment,
    train_split, val_split, device, backend, precision, progress, tensorboard); ``data`` a masked image folder or a
    manifest CSV; ``task`` multiclass or multilabel (a manifest's labels column), found from the data when None
Trainer(config, *, model=None, resume=False, callbacks=()).fit() -> TrainResult
train(config, *, model=None, resume=False, callbacks=()) -> TrainResult
evaluate(model, loader, *, device, eps, first_layer, bounds, backend) -> Meter of loss, accuracy, background_fraction
evaluate_run(run_dir, data=None, splits=None, *, which="best", bootstrap=1000) -> dict, writes
    RUN_DIR/eval-best.json, .md and a confusion-matrix figure per split; balanced accuracy, macro F1, AUROC with a
    bootstrap interval, worst-group accuracy; for a multi-label run per-label and macro AUROC, mAP, exact match
    (:mod:`.scores`, scikit-learn)
write_eval(result) -> the eval-<checkpoint>.json and .md files of an evaluate_run result, beside its checkpoint
environment() -> the CPU, its instruction set, the threads and the library versions a result was computed with
load_run(run_dir, which="best") -> Run (model, config, checkpoint, classes, in_channels)
explain_image(run_dir, image, out, *, mask=None, target=None) -> figure of the image with its heatmap
background_fraction(heatmaps, masks) -> (B,) share of |relevance| outside the masks
save_checkpoint(state, path), load_checkpoint(path), find_checkpoint(run_dir, which)
TrainError
"""

from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .config import RESUMABLE_FIELDS, TRAIN_VARIANTS, TrainConfig
from .environment import environment
from .errors import TrainError
from .evaluate import Run, evaluate, evaluate_run, load_run, markdown_table, write_eval
from .figure import explain_image
from .metrics import COLUMNS, Meter, background_fraction, write_metrics
from .sampling import EpochSampler
from .trainer import Trainer, TrainResult, train

__all__ = ["COLUMNS", "RESUMABLE_FIELDS", "TRAIN_VARIANTS", "EpochSampler", "Meter", "Run", "TrainConfig",
           "TrainError", "TrainResult", "Trainer", "background_fraction", "environment", "evaluate",
           "evaluate_run", "explain_image", "find_checkpoint", "load_checkpoint", "load_run", "markdown_table",
           "save_checkpoint", "train", "write_eval", "write_metrics"]
