"""The classification metrics papers on background bias report, computed with scikit-learn from the predictions.

:func:`classification_scores`, from each image's label and class probabilities (softmax of the logits):

- ``accuracy``, ``balanced_accuracy`` (the mean per-class recall), ``macro_f1``, ``per_class_recall`` (None for a
  class with no images in the split): :mod:`sklearn.metrics`;
- ``auroc``: one-vs-rest AUROC per class (``roc_auc_score`` of "is class k" against the probability of k), their
  unweighted mean over the classes that have images of both kinds in the split (scikit-learn's
  ``multi_class="ovr", average="macro"``, which also covers splits missing a class); ``auroc_ci``: the percentile
  bootstrap interval (``bootstrap`` resamples of the images with replacement, drawn by ``seed``, ``confidence``
  95%); ``per_class_auroc``;
- with groups (a manifest's ``group`` column, Waterbirds' place-and-label groups): ``group_accuracy`` per group,
  ``worst_group_accuracy`` (the lowest) and ``average_group_accuracy`` (their unweighted mean);
- ``confusion_matrix``: rows the true class, columns the predicted one (:func:`confusion_figure` draws it).

:func:`multilabel_scores`, from each image's 0/1 targets and per-label probabilities (sigmoid of the logits):
``per_label_auroc`` and ``per_label_ap`` (average precision), their means ``auroc`` (macro) and ``map`` over the
labels with positives and negatives, and the bootstrap interval of the macro AUROC; ``exact_match`` (scikit-learn's
``accuracy_score`` of the indicator matrices: the share of images whose every label is predicted right, a label
predicted present where its probability exceeds 0.5), ``per_label_accuracy`` and ``label_accuracy`` (their mean,
1 - the Hamming loss).

Values that cannot be computed (AUROC of a split with one class) are None, never NaN, so results compare with
``==`` and serialise to JSON.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["SCORE_NAMES", "classification_scores", "confusion_figure", "multilabel_scores", "sklearn_metrics"]

#: The scalar scores of :func:`classification_scores` (per-epoch columns ``val_<name>`` of the trainer).
SCORE_NAMES = ("balanced_accuracy", "macro_f1", "auroc", "worst_group_accuracy", "map")


def sklearn_metrics() -> Any:
    """``sklearn.metrics``, or a :class:`~isnet_kernels.MissingDependencyError` saying what to install."""
    try:
        from sklearn import metrics
    except ImportError as exc:
        raise MissingDependencyError(f"the evaluation metrics need scikit-learn ({exc}); pip install scikit-learn") \
            from None
    return metrics


def _none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _ovr_auroc(metrics: Any, labels: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """One-vs-rest AUROC per class; None for a class without positives or without negatives. One scikit-learn call
    over the classes that have both (a bootstrap resample of a small split often lacks some)."""
    k_all = probs.shape[1]
    onehot = labels[:, None] == np.arange(k_all)[None, :]
    counts = onehot.sum(axis=0)
    both = np.flatnonzero((counts > 0) & (counts < len(labels)))
    out: list[float | None] = [None] * k_all
    if len(both) == 1:
        out[both[0]] = float(metrics.roc_auc_score(onehot[:, both[0]], probs[:, both[0]]))
    elif len(both) > 1:  # an indicator matrix: per column, the binary AUROC of that class against the rest
        for k, v in zip(both, metrics.roc_auc_score(onehot[:, both], probs[:, both], average=None)):
            out[k] = float(v)
    return out


def _balanced(metrics: Any, y: np.ndarray, pred: np.ndarray) -> float | None:
    """scikit-learn's balanced accuracy: the mean recall over the classes with images (a predicted class that has
    none is left out, with the warning scikit-learn gives for it silenced)."""
    if not len(y):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _none(metrics.balanced_accuracy_score(y, pred))


def _macro(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def classification_scores(labels: Sequence[int] | np.ndarray, probs: np.ndarray, classes: Sequence[str], *,
                          groups: Sequence[str | None] | None = None, bootstrap: int = 1000, seed: int = 0,
                          confidence: float = 0.95) -> dict[str, Any]:
    """The scores of the module docstring for ``labels`` (N,) and ``probs`` (N, K); ``groups`` per image (None:
    no group scores); ``bootstrap=0`` skips the AUROC interval."""
    metrics = sklearn_metrics()
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    ks = list(range(k))
    recall = metrics.recall_score(y, pred, labels=ks, average=None, zero_division=0) if len(y) else np.zeros(k)
    present = np.bincount(y, minlength=k)[:k] > 0 if len(y) else np.zeros(k, dtype=bool)
    per_class_auroc = _ovr_auroc(metrics, y, p) if len(y) else [None] * k
    out: dict[str, Any] = {
        "accuracy": _none(metrics.accuracy_score(y, pred)) if len(y) else None,
        "balanced_accuracy": _balanced(metrics, y, pred),
        "macro_f1": _none(metrics.f1_score(y, pred, labels=ks, average="macro", zero_division=0)) if len(y) else None,
        "per_class_recall": {c: (float(r) if present[i] else None) for i, (c, r) in enumerate(zip(classes, recall))},
        "auroc": _macro(per_class_auroc),
        "auroc_ci": None,
        "per_class_auroc": dict(zip(classes, per_class_auroc)),
        "confusion_matrix": metrics.confusion_matrix(y, pred, labels=ks).tolist() if len(y) else [[0] * k] * k,
        "map": None,  # multi-label only
    }
    if bootstrap and out["auroc"] is not None:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(int(bootstrap)):
            idx = rng.integers(0, len(y), len(y))
            value = _macro(_ovr_auroc(metrics, y[idx], p[idx]))
            if value is not None:
                draws.append(value)
        if draws:
            alpha = (1 - confidence) / 2
            lo, hi = np.quantile(draws, [alpha, 1 - alpha])
            out["auroc_ci"] = [float(lo), float(hi)]
    if groups is not None and any(g is not None for g in groups):
        g = np.asarray([str(v) if v is not None else "" for v in groups])
        accuracy = {name: float(metrics.accuracy_score(y[g == name], pred[g == name]))
                    for name in sorted(set(g.tolist()) - {""})}
        out["group_accuracy"] = accuracy
        out["worst_group_accuracy"] = min(accuracy.values())
        out["average_group_accuracy"] = float(np.mean(list(accuracy.values())))
    else:
        out["group_accuracy"] = None
        out["worst_group_accuracy"] = None
        out["average_group_accuracy"] = None
    return out


def _per_label(metrics: Any, targets: np.ndarray, probs: np.ndarray, score: str) -> list[float | None]:
    """``roc_auc_score`` or ``average_precision_score`` per label; None for a label without both kinds."""
    fn = metrics.roc_auc_score if score == "auroc" else metrics.average_precision_score
    out: list[float | None] = []
    for k in range(targets.shape[1]):
        column = targets[:, k]
        out.append(None if column.all() or not column.any() else float(fn(column, probs[:, k])))
    return out


def multilabel_scores(targets: np.ndarray, probs: np.ndarray, labels: Sequence[str], *, bootstrap: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Per-label and macro AUROC, per-label average precision and mAP (module docstring) of ``targets`` (N, K) in
    {0, 1} and ``probs`` (N, K); ``bootstrap=0`` skips the AUROC interval."""
    metrics = sklearn_metrics()
    t = np.asarray(targets).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    auroc = _per_label(metrics, t, p, "auroc")
    ap = _per_label(metrics, t, p, "ap")
    pred = p > 0.5
    per_label_accuracy = [float(metrics.accuracy_score(t[:, k], pred[:, k])) for k in range(t.shape[1])] \
        if len(t) else [None] * t.shape[1]
    out: dict[str, Any] = {"per_label_auroc": dict(zip(labels, auroc)), "auroc": _macro(auroc), "auroc_ci": None,
                           "per_label_ap": dict(zip(labels, ap)), "map": _macro(ap),
                           "exact_match": float(metrics.accuracy_score(t, pred)) if len(t) else None,
                           "per_label_accuracy": dict(zip(labels, per_label_accuracy)),
                           "label_accuracy": _macro(per_label_accuracy)}
    if bootstrap and out["auroc"] is not None:
        rng = np.random.default_rng(seed)
        draws = [v for v in (_macro(_per_label(metrics, t[idx], p[idx], "auroc"))
                             for idx in (rng.integers(0, len(t), len(t)) for _ in range(int(bootstrap))))
                 if v is not None]
        if draws:
            alpha = (1 - confidence) / 2
            out["auroc_ci"] = [float(v) for v in np.quantile(draws, [alpha, 1 - alpha])]
    return out


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "",
                     path: str | os.PathLike[str] | None = None, dpi: int = 100) -> bytes:
    """A PNG of the confusion matrix (rows true class, columns predicted; each cell its count, shaded by the share
    of its row); written to ``path`` when given, returned as bytes. matplotlib's Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(matrix, dtype=np.float64)
    k = len(classes)
    side = min(max(3.0, 0.45 * k + 1.5), 20.0)
    fig = Figure(figsize=(side, side), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ticks = list(range(k))
    labels = [str(c)[:18] for c in classes] if k <= 40 else [""] * k
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
