"""Multi-label ISNet (docs/isnet.md#multi-label-classification): which maps are explained, against a plain-PyTorch
reference of each image's positive labels; the loss against a loop over the images with the single-label loss and
``torch.nn.BCEWithLogitsLoss``; images with no positive label; bad targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import isnet_kernels as ik
from isnet_kernels.errors import InputError, TargetError
from isnet_kernels.isnet.loss import heatmap_loss
from isnet_kernels.isnet.wrapper import multilabel_targets

DT = torch.float64


class Net(nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-AvgPool-Linear: one max-pool for deep supervision."""

    def __init__(self, k: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc(torch.flatten(self.pool2(self.relu2(self.conv2(x))), 1))


TARGETS = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=DT)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().to(DT)
    x = torch.rand(4, 1, 8, 8, dtype=DT)
    masks = torch.zeros(4, 1, 8, 8, dtype=DT)
    masks[:, :, 2:6, 1:7] = 1
    return model, x, masks


def test_targets_are_the_positive_labels() -> None:
    targets, weights = multilabel_targets(TARGETS, 4, 4, torch.device("cpu"))
    assert targets.shape == weights.shape == (4, 3)  # M = the most positives of an image
    for b in range(4):
        positives = [int(k) for k in torch.nonzero(TARGETS[b]).flatten()]
        kept = [int(t) for t, w in zip(targets[b], weights[b]) if w]
        assert kept == positives
    none = multilabel_targets(torch.zeros(2, 3), 2, 3, torch.device("cpu"))
    assert none[0].shape == (2, 1) and not none[1].any()


@pytest.mark.parametrize("heatmap", ["lrp", "gradinput"])
def test_each_positive_label_explained_with_the_logit_rule(heatmap: str) -> None:
    """Map m of image b is the map of logit targets[b, m] that the original variant (the logit rule for every
    class) computes in the same forward: the multi-label selective ISNet explains exactly the positive labels."""
    model, x, _ = _setup()
    multi = ik.ISNet(model, "selective", task="multilabel", heatmap=heatmap, deep_supervision=False).train()
    every = ik.ISNet(model, "original", heatmap=heatmap, deep_supervision=False).train()
    out = multi(x, TARGETS)
    ref = every(x).heatmaps  # (B, K, C, H, W): one map per class
    assert out.weights is not None and out.weights.shape == out.targets.shape
    for b in range(4):
        for m in range(out.targets.shape[1]):
            if out.weights[b, m]:
                torch.testing.assert_close(out.heatmaps[b, m], ref[b, out.targets[b, m]], rtol=1e-10, atol=1e-12)
    # not the selective (softmax-contrastive) rule of a single-label ISNet
    single = ik.ISNet(model, "selective", deep_supervision=False).train()(x, torch.tensor([0, 0, 1, 0]))
    assert not torch.allclose(single.heatmaps[0, 0], out.heatmaps[0, 0])


def test_gradinput_maps_are_the_input_gradient_of_the_positive_logits() -> None:
    """Grad x Input of a positive label, from plain autograd: x * d z_c / d x."""
    model, x, _ = _setup(1)
    out = ik.ISNet(model, "selective", task="multilabel", heatmap="gradinput", deep_supervision=False).train()(
        x, TARGETS)
    for b, c in [(0, 0), (0, 2), (2, 1), (3, 2)]:
        xb = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.train()(xb)[b, c], xb)
        m = int((out.targets[b] == c).nonzero()[0])
        torch.testing.assert_close(out.heatmaps[b, m], (x * grad)[b], rtol=1e-9, atol=1e-12)


def _reference_loss(out, targets, masks, P=0.7, **kw):
    """Plain PyTorch: BCEWithLogitsLoss summed over the labels and averaged over the images, and per image the
    single-label heatmap loss of its positive maps alone, averaged over the images that have one; deep-supervision
    levels combined by their mean (d_loss = 1)."""
    bce = nn.BCEWithLogitsLoss(reduction="sum")(out.logits, targets) / targets.shape[0]  # summed over labels
    levels = []
    for maps in [out.heatmaps, *out.intermediate.values()]:
        per_image = []
        for b in range(targets.shape[0]):
            keep = out.weights[b].nonzero().flatten()
            if len(keep):
                per_image.append(heatmap_loss(maps[b:b + 1, keep], masks[b:b + 1], **kw).heatmap)
        levels.append(torch.stack(per_image).mean())
    heat = torch.stack(levels).mean()
    return (1 - P) * bce + P * heat, bce, heat


@pytest.mark.parametrize("mass", [0.0, 0.5])
def test_loss_against_a_loop_over_images(mass: float) -> None:
    model, x, masks = _setup(2)
    isnet = ik.ISNet(model, "selective", task="multilabel", deep_supervision=True).train()
    out = isnet(x, TARGETS)
    assert out.intermediate  # deep supervision: the levels use the same weights
    loss = ik.ISNetLoss(task="multilabel", mass=mass, C1=0.5, C2=4.0)(out, TARGETS, masks)
    total, bce, heat = _reference_loss(out, TARGETS, masks, mass=mass, C1=0.5, C2=4.0)
    torch.testing.assert_close(loss.classification, bce)
    torch.testing.assert_close(loss.heatmap, heat)
    torch.testing.assert_close(loss.total, total)
    # the gradient too
    g = torch.autograd.grad(loss.total, list(model.parameters()), retain_graph=True)
    g_ref = torch.autograd.grad(total, list(model.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_an_image_without_positive_labels_adds_no_heatmap_loss() -> None:
    """Image 1 has no label: its maps get no gradient from the heatmap loss, and the heatmap loss is that of the
    other images alone."""
    model, x, masks = _setup(3)
    isnet = ik.ISNet(model, "selective", task="multilabel", deep_supervision=False).train()
    out = isnet(x, TARGETS)
    heat = out.heatmaps
    heat.retain_grad()
    loss = ik.ISNetLoss(task="multilabel", P=1.0)(out, TARGETS, masks)
    loss.total.backward()
    assert heat.grad[1].abs().max() == 0 and heat.grad[0].abs().max() > 0
    assert heat.grad[2, 1:].abs().max() == 0  # image 2's padding maps
    keep = [0, 2, 3]
    sub = ik.ISNetOutput(out.logits[keep], out.heatmaps[keep], out.targets[keep], {}, out.weights[keep])
    alone = ik.ISNetLoss(task="multilabel", P=1.0)(sub, TARGETS[keep], masks[keep])
    torch.testing.assert_close(loss.heatmap, alone.heatmap)
    # a batch with no positive label at all: only the classification loss
    none = torch.zeros(4, 4, dtype=DT)
    out = isnet(x, none)
    loss = ik.ISNetLoss(task="multilabel")(out, none, masks)
    assert loss.heatmap == 0
    torch.testing.assert_close(loss.total, 0.3 * nn.BCEWithLogitsLoss(reduction="sum")(out.logits, none) / 4)


def test_other_variants_choose_maps_without_the_labels() -> None:
    model, x, masks = _setup(4)
    out = ik.ISNet(model, "original", task="multilabel", deep_supervision=False).train()(x, TARGETS)
    assert out.heatmaps.shape[1] == 4 and out.weights is None  # every class, every map counted (the authors')
    loss = ik.ISNetLoss(task="multilabel")(out, TARGETS, masks)
    assert torch.isfinite(loss.total)
    highest = ik.ISNet(model, "selective", task="multilabel", select="highest", deep_supervision=False).train()
    out = highest(x)
    assert out.targets.flatten().tolist() == out.logits.argmax(1).tolist() and out.weights is None


def test_bad_targets() -> None:
    model, x, masks = _setup()
    isnet = ik.ISNet(model, "selective", task="multilabel", deep_supervision=False).train()
    with pytest.raises(TargetError, match="must be 0 or 1"):
        isnet(x, TARGETS * 2)
    with pytest.raises(InputError, match=r"shape \(B, K\) = \(4, 4\)"):
        isnet(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(InputError, match="targets"):
        isnet(x)
    out = isnet(x, TARGETS)
    with pytest.raises(TargetError, match="must be 0 or 1"):
        ik.ISNetLoss(task="multilabel")(out, TARGETS - 0.5, masks)
    with pytest.raises(InputError, match="task must be one of"):
        ik.ISNetLoss(task="multi")
    with pytest.raises(InputError, match="task must be one of"):
        ik.ISNet(model, task="multi")
