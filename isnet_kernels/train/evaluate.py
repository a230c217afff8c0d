"""Evaluating a classifier or a trained run: accuracy, cross-entropy, the background-relevance fraction and the
scores papers report (balanced accuracy, macro F1, per-class recall, one-vs-rest AUROC with a bootstrap interval,
worst-group and average-group accuracy, the confusion matrix: :mod:`.scores`).

The heatmap behind the background-relevance fraction is the same for every variant, the plain classifier
included, so that runs compare: the LRP heatmap of each image's predicted class (argmax logit), logit output rule,
epsilon in the hidden layers and the run's first-layer rule and eps, the model in eval mode, computed by
:func:`isnet_kernels.explain` without recording a graph (see :mod:`.metrics`); for a multi-label model, the map of
its highest logit. A multi-label run (its data's ``labels`` column) reports the scores of
:func:`~.scores.multilabel_scores` instead of the single-label ones.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.manifest import dataset_splits as list_splits
from ..errors import UnsupportedLayerError
from ..isnet.loss import classification_loss
from ..lrp import explain, get_program
from ..models import Preprocess, build_model
from .backbone import rebuild, spec_preprocess, wrap
from .checkpoint import find_checkpoint, load_checkpoint
from .config import TrainConfig
from .data import check_classes, dataset_groups, open_split
from .environment import environment
from .errors import TrainError
from .files import write_atomic
from .metrics import Meter, background_fraction, correct
from .scores import SCORE_NAMES, classification_scores, confusion_figure, multilabel_scores

EVAL_METRICS = ("loss", "accuracy", "background_fraction")


def heatmap_support(model: nn.Module) -> str | None:
    """None when the LRP engine can explain ``model`` (so the background-relevance fraction can be computed),
    else the reason it cannot (the :class:`~isnet_kernels.UnsupportedLayerError` message)."""
    try:
        get_program(model)
    except UnsupportedLayerError as exc:
        return str(exc)
    return None


def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device | str = "cpu", eps: float = 1e-2,
             first_layer: str = "zb", bounds: tuple[float, float] = (0.0, 1.0), backend: str | None = None,
             heatmaps: bool = True, progress: bool = False, desc: str = "eval",
             outputs: dict[str, list] | None = None) -> Meter:
    """Sums of cross-entropy, correct predictions and background fractions over ``loader`` (module docstring).

    ``loader`` yields ``(images, masks, labels)``; multi-label targets (B, K) make the loss binary cross-entropy
    (summed over the labels of an image), the accuracy the exact match and the probabilities sigmoids. Returns a
    :class:`~.metrics.Meter` over :data:`EVAL_METRICS`
    (call ``.all_reduce()`` to add other processes' shares, then ``.means()``). The model is evaluated in eval
    mode and left in the mode it had. With ``heatmaps=False`` (a model the LRP engine cannot explain) the
    background fraction (no images counted) reads NaN. ``outputs``, a dict, gets the class probabilities
    (``"probs"``) and labels (``"labels"``) of every batch, on the CPU, for :func:`~.scores.classification_scores`.
    """
    from tqdm.auto import tqdm

    meter = Meter(EVAL_METRICS, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, masks, labels in tqdm(loader, desc=desc, disable=not progress, leave=False):
                x, y = images.to(device), labels.to(device)
                logits = model(x)
                n = y.shape[0]
                task = "multilabel" if y.dim() == 2 else "multiclass"
                meter.add_sum("loss", classification_loss(logits, y, task, reduction="sum"), n)
                meter.add_sum("accuracy", correct(logits, y), n)
                if outputs is not None:
                    probs = logits.float().sigmoid() if task == "multilabel" else logits.float().softmax(-1)
                    outputs.setdefault("probs", []).append(probs.cpu())
                    outputs.setdefault("labels", []).append(y.cpu())
                if heatmaps:
                    heat = explain(model, x, None, eps=eps, first_layer=first_layer, bounds=bounds, backend=backend)
                    meter.add_sum("background_fraction", background_fraction(heat, masks.to(device)).sum(), n)
    finally:
        model.train(was_training)
    return meter


def split_scores(outputs: dict[str, list], classes: Sequence[str], groups: Sequence[str | None] | None = None, *,
                 bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """:func:`~.scores.classification_scores` of what :func:`evaluate` collected in ``outputs`` (``groups`` in the
    loader's order), or for multi-label targets :func:`~.scores.multilabel_scores` (the single-label scores None;
    no group scores)."""
    if outputs.get("labels") and outputs["labels"][0].dim() == 2:
        targets, probs = torch.cat(outputs["labels"]).numpy(), torch.cat(outputs["probs"]).numpy()
        scores = multilabel_scores(targets, probs, list(classes), bootstrap=bootstrap, seed=seed)
        return {**dict.fromkeys(SCORE_NAMES), "group_accuracy": None, "average_group_accuracy": None,
                "confusion_matrix": None, **scores}
    probs = torch.cat(outputs.get("probs", [torch.zeros(0, len(classes))])).numpy()
    labels = torch.cat(outputs.get("labels", [torch.zeros(0, dtype=torch.long)])).numpy()
    return classification_scores(labels, probs, list(classes), groups=groups, bootstrap=bootstrap, seed=seed)


@dataclass
class Run:
    """A trained run loaded from its directory: the model (eval mode) and what it was trained with."""

    model: nn.Module
    config: TrainConfig
    checkpoint: dict[str, Any]
    path: Path
    classes: list[str]
    in_channels: int
    preprocess: Preprocess = Preprocess()

    @property
    def epoch(self) -> int:
        return int(self.checkpoint["epoch"])

    @property
    def task(self) -> str:
        """``"multiclass"`` or ``"multilabel"``: the task the run was trained for (runs saved before the setting
        existed: multiclass)."""
        return self.config.task or "multiclass"


def load_run(run_dir: str | os.PathLike[str], which: str = "best", device: torch.device | str = "cpu") -> Run:
    """Rebuild the model of a run directory from its checkpoint (``"best"``: ``best.pt`` if present, else
    ``last.pt``; ``"last"``; or a file name in the run directory), in eval mode on ``device``."""
    path = find_checkpoint(run_dir, which)
    state = load_checkpoint(path, map_location="cpu")
    config = TrainConfig.from_dict(state["config"])
    classes, in_channels = list(state["classes"]), int(state["in_channels"])
    if state.get("custom_model"):
        raise TrainError(f"{path} holds a model that was passed to the trainer as an object (not built from an "
                         "architecture name), so it cannot be rebuilt from the checkpoint; build the model yourself "
                         "and load_state_dict(checkpoint['model'])")
    spec = state.get("model_spec")
    if spec:  # name, constructor arguments, weights (which may shape the model) and preprocessing
        model = rebuild(spec)
    else:  # written before checkpoints kept it: a package model, inputs in [0, 1]
        model = build_model(config.arch, len(classes), in_channels, **config.model_kwargs)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    preprocess = spec_preprocess(spec) if spec else Preprocess(size=config.size)
    return Run(model, config, state, path, classes, in_channels, preprocess)


def default_eval_splits(root: str | os.PathLike[str]) -> list[str]:
    """Every split whose name starts with ``test_`` (or is ``test``)."""
    names = [s for s in list_splits(root) if s.startswith("test_") or s == "test"]
    if not names:
        raise TrainError(f"data set {root} has no test split (no split test or test_*; its splits: "
                         f"{list_splits(root)}); name the splits to evaluate with --splits")
    return names


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def multilabel_table(results: dict[str, dict[str, Any]], labels: Sequence[str]) -> str:
    """The multi-label results: per split images, exact match, mean per-label accuracy, background relevance, binary
    cross-entropy, macro AUROC with its interval and mAP; then per-label AUROC, one column per split."""
    lines = ["| split | images | exact match | label accuracy | background relevance | binary cross-entropy "
             "| macro AUROC (95% CI) | mAP |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for split, r in results.items():
        auroc, ci = r.get("auroc"), r.get("auroc_ci")
        auroc_text = "n/a" if auroc is None else f"{auroc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        mean_ap = "n/a" if r.get("map") is None else f"{r['map']:.3f}"
        lines.append(f"| {split} | {r['images']} | {_percent(r.get('exact_match'))} "
                     f"| {_percent(r.get('label_accuracy'))} | {_percent(r['background_fraction'])} | {r['loss']:.4f} "
                     f"| {auroc_text} | {mean_ap} |")
    lines += ["", "| label | " + " | ".join(f"AUROC {split}" for split in results) + " |",
              "|---|" + "---:|" * len(results)]
    for label in labels:
        cells = [(r.get("per_label_auroc") or {}).get(label) for r in results.values()]
        lines.append(f"| {label} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: dict[str, dict[str, Any]], labels: Sequence[str] | None = None) -> str:
    """The results table of :func:`evaluate_run`: :func:`multilabel_table` for multi-label results (with
    ``labels``), else the single-label table below."""
    if labels is not None and any("per_label_auroc" in r for r in results.values()):
        return multilabel_table(results, labels)
    return _multiclass_table(results)


def _multiclass_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per split: images, accuracy, background-relevance fraction, cross-entropy and, where computed,
    balanced accuracy, macro F1, AUROC with its interval, worst-group and average-group accuracy."""
    lines = ["| split | images | accuracy | background relevance | cross-entropy | balanced accuracy | macro F1 "
             "| AUROC (95% CI) | worst group | average group |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for split, r in results.items():
        auroc = r.get("auroc")
        ci = r.get("auroc_ci")
        auroc_text = "n/a" if auroc is None else f"{auroc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        lines.append(f"| {split} | {r['images']} | {_percent(r['accuracy'])} | {_percent(r['background_fraction'])} "
                     f"| {r['loss']:.4f} | {_percent(r.get('balanced_accuracy'))} | {_percent(r.get('macro_f1'))} "
                     f"| {auroc_text} | {_percent(r.get('worst_group_accuracy'))} "
                     f"| {_percent(r.get('average_group_accuracy'))} |")
    return "\n".join(lines) + "\n"


def eval_paths(checkpoint: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where the evaluation of ``checkpoint`` is written: ``eval-<stem>.json`` and ``eval-<stem>.md`` beside it
    (``RUN_DIR/eval-best.json`` for ``best.pt``): one pair per checkpoint, so evaluating ``last.pt`` never
    replaces the results of ``best.pt``."""
    path = Path(checkpoint)
    return path.with_name(f"eval-{path.stem}.json"), path.with_name(f"eval-{path.stem}.md")


def evaluate_run(run_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
                 splits: Sequence[str] | None = None, *, which: str = "best", batch_size: int | None = None,
                 device: str = "cpu", progress: bool = False, write: bool = True, bootstrap: int = 1000,
                 mask_convention: Any = None) -> dict[str, Any]:
    """Accuracy, background-relevance fraction, cross-entropy and the scores of :mod:`.scores` of a run's model on
    each split (``bootstrap`` resamples for the AUROC interval, 0: none; the masks read with the run's convention
    unless ``mask_convention`` is given).

    ``data`` defaults to the run's training data (found from any working directory), ``splits`` to every
    ``test_*`` split; ``which`` names a checkpoint of the run (:func:`~.checkpoint.find_checkpoint`; one of
    another run is an error). With ``write``, the result goes to :func:`write_eval`'s files beside the
    checkpoint (``RUN_DIR/eval-best.json`` and ``eval-best.md``). Returns ``{"run", "checkpoint",
    "checkpoint_path", "epoch", "variant", "arch", "data", "heatmap", "splits": {split: {images, accuracy,
    background_fraction, loss, balanced_accuracy, macro_f1, per_class_recall, auroc, auroc_ci, per_class_auroc,
    group_accuracy, worst_group_accuracy, average_group_accuracy, confusion_matrix}}, "classes", "task",
    "environment"}``. A multi-label run (``task`` ``"multilabel"``, recorded in its checkpoint) reports per split
    the exact match (as ``accuracy`` and ``exact_match``), per-label and mean label accuracy, the binary
    cross-entropy, per-label and macro AUROC with its interval, per-label average precision and mAP
    (:func:`~.scores.multilabel_scores`); data of the other task is an error.
    """
    run = load_run(run_dir, which, device)
    cfg = run.config
    root = str(data) if data else cfg.data
    recorded = (run.checkpoint.get("data") or {}).get("root")
    if not data and not Path(root).exists() and recorded and Path(recorded).exists():
        root = recorded  # a relative --data of a run trained from another folder
    names = list(splits) if splits else default_eval_splits(root)
    note = heatmap_support(run.model)
    results: dict[str, dict[str, float]] = {}
    for split in names:
        dataset = open_split(root, split, size=run.preprocess.size, channels=run.in_channels, flag="--splits",
                             mask_convention=mask_convention or cfg.mask_convention, classes=run.classes,
                             task=run.task, task_source=f"the run's task (it was trained with --task {run.task})")
        check_classes(run.classes, dataset.classes, f"split {split!r} of {root}")
        loader = torch.utils.data.DataLoader(wrap(dataset, run.preprocess), batch_size=batch_size or cfg.batch_size,
                                             shuffle=False)
        outputs: dict[str, list] = {}
        meter = evaluate(run.model, loader, device=device, eps=cfg.eps, first_layer=cfg.first_layer,
                         bounds=run.preprocess.bounds(run.in_channels), backend=cfg.backend, heatmaps=note is None,
                         progress=progress, desc=split, outputs=outputs)
        means = meter.means()
        if math.isnan(means["background_fraction"]):
            means["background_fraction"] = None  # not computed: the model has layers without relevance rules
        scores = split_scores(outputs, run.classes, dataset_groups(dataset), bootstrap=bootstrap, seed=cfg.seed)
        results[split] = {"images": len(dataset), **means, **scores}
    out = {"run": str(Path(run_dir)), "checkpoint": run.path.name, "checkpoint_path": str(run.path.resolve()),
           "epoch": run.epoch, "variant": cfg.variant, "arch": cfg.arch, "data": root,
           "heatmap": "LRP of the predicted class: logit rule, epsilon, first layer " + cfg.first_layer
           if note is None else f"none: {note}",
           "splits": results, "classes": list(run.classes), "task": run.task, "environment": environment()}
    if write:
        write_eval(out)
    return out


def write_eval(result: dict[str, Any]) -> tuple[Path, Path]:
    """Write an :func:`evaluate_run` result to :func:`eval_paths` of its checkpoint (the JSON, and the table as
    markdown), atomically; returns the two paths. A failed write (a read-only run directory, a full disk) is a
    :class:`~.errors.TrainError` naming the cause."""
    json_path, md_path = eval_paths(result["checkpoint_path"])
    write_atomic(json_path, json.dumps(result, indent=2) + "\n", what="evaluation results")
    labels = result.get("classes") if result.get("task") == "multilabel" else None
    write_atomic(md_path, markdown_table(result["splits"], labels), what="evaluation table")
    for split, r in result["splits"].items():
        if r.get("confusion_matrix") is not None and result.get("classes"):
            figure = confusion_figure(r["confusion_matrix"], result["classes"], f"{result['run']}: {split}")
            write_atomic(confusion_path(json_path, split), figure, what="confusion-matrix figure")
    return json_path, md_path


def confusion_path(eval_json: str | os.PathLike[str], split: str) -> Path:
    """Where :func:`write_eval` puts the confusion matrix of ``split``: ``eval-<stem>-confusion-<split>.png``."""
    path = Path(eval_json)
    return path.with_name(f"{path.stem}-confusion-{split}.png")
