"""The evaluation scores (scikit-learn): values on hand-checked predictions, groups, the bootstrap interval, and the
confusion-matrix figure."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from isnet_kernels.errors import MissingDependencyError
from isnet_kernels.train.scores import classification_scores, confusion_figure


def _probs(pred: list[int], k: int, confidence: list[float] | None = None) -> np.ndarray:
    p = np.full((len(pred), k), 0.0)
    for i, c in enumerate(pred):
        top = confidence[i] if confidence else 0.8
        p[i] = (1 - top) / (k - 1)
        p[i, c] = top
    return p


def test_scores_by_hand() -> None:
    # class 0: 4 images, 3 right; class 1: 2 images, 1 right; class 2: 2 images, both right
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 0, 2, 2]
    s = classification_scores(labels, _probs(pred, 3), ["a", "b", "c"], bootstrap=0)
    assert s["accuracy"] == pytest.approx(6 / 8)
    assert s["per_class_recall"] == pytest.approx({"a": 0.75, "b": 0.5, "c": 1.0})
    assert s["balanced_accuracy"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    f1 = [2 * 3 / (2 * 3 + 1 + 1), 2 * 1 / (2 * 1 + 1 + 1), 1.0]  # 2TP / (2TP + FP + FN)
    assert s["macro_f1"] == pytest.approx(np.mean(f1))
    assert s["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    per_class = s["per_class_auroc"]
    assert per_class["c"] == 1.0 and s["auroc"] == pytest.approx(np.mean(list(per_class.values())))
    assert s["auroc_ci"] is None and s["worst_group_accuracy"] is None and s["group_accuracy"] is None


def test_auroc_binary_and_missing_classes() -> None:
    labels = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.6, 0.4, 0.9])  # one pair ranked wrongly of four: AUROC 0.75
    s = classification_scores(labels, np.stack([1 - p1, p1], 1), ["neg", "pos"], bootstrap=0)
    assert s["auroc"] == pytest.approx(0.75) and s["per_class_auroc"] == pytest.approx({"neg": 0.75, "pos": 0.75})
    one_class = classification_scores([1, 1], np.array([[0.2, 0.8], [0.6, 0.4]]), ["neg", "pos"], bootstrap=10)
    assert one_class["auroc"] is None and one_class["auroc_ci"] is None
    assert one_class["per_class_recall"] == {"neg": None, "pos": 0.5} and one_class["balanced_accuracy"] == 0.5


def test_groups_and_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    probs = np.stack([1 - scores, scores], 1)
    groups = [f"{y}_on_{'water' if i % 4 == 0 else 'land'}" for i, y in enumerate(labels)]
    s = classification_scores(labels, probs, ["land", "water"], groups=groups, bootstrap=100, seed=1)
    pred = probs.argmax(1)
    expected = {g: float(np.mean([pred[i] == labels[i] for i in range(200) if groups[i] == g])) for g in set(groups)}
    assert s["group_accuracy"] == pytest.approx(expected)
    assert s["worst_group_accuracy"] == pytest.approx(min(expected.values()))
    assert s["average_group_accuracy"] == pytest.approx(np.mean(list(expected.values())))
    lo, hi = s["auroc_ci"]
    assert lo < s["auroc"] < hi and hi - lo < 0.2
    again = classification_scores(labels, probs, ["land", "water"], groups=groups, bootstrap=100, seed=1)
    assert again == s  # reproducible: no NaN, the same resamples


def test_confusion_figure(tmp_path) -> None:
    data = confusion_figure([[3, 1], [0, 2]], ["cat", "dog"], "test", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes() == data
    assert Image.open(io.BytesIO(data)).size[0] >= 200


def test_missing_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError, match="pip install scikit-learn"):
        classification_scores([0], np.array([[1.0, 0.0]]), ["a", "b"])


def test_multilabel_scores() -> None:
    from isnet_kernels.train.scores import multilabel_scores

    targets = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.5], [0.3, 0.7, 0.6], [0.6, 0.4, 0.7], [0.4, 0.5, 0.2]])
    s = multilabel_scores(targets, probs, ["effusion", "edema", "device"], bootstrap=0)
    # effusion: positives 0.9, 0.6 above both negatives: 1.0; edema: positives 0.7, 0.4 vs negatives 0.2, 0.5: 3/4
    assert s["per_label_auroc"] == {"effusion": 1.0, "edema": 0.75, "device": None}  # device: no negatives
    assert s["auroc"] == pytest.approx(0.875)
    # average precision, edema: ranked 0.7 (pos), 0.5 (neg), 0.4 (pos), 0.2: (1 + 2/3) / 2
    assert s["per_label_ap"]["edema"] == pytest.approx((1 + 2 / 3) / 2) and s["per_label_ap"]["effusion"] == 1.0
    assert s["map"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)
    with_ci = multilabel_scores(targets, probs, ["a", "b", "c"], bootstrap=50, seed=0)
    assert with_ci["auroc_ci"][0] <= with_ci["auroc_ci"][1]
