"""ISNet training moves relevance off a background shortcut, for every variant.

A toy task: 16x16 grayscale images of two classes. The foreground (the central 8x8 square, which is the mask) holds
the class's texture (horizontal or vertical stripes of random contrast); the background holds faint noise and a
bright 3x3 block in a corner that depends on the label: a shortcut a plain classifier may use. A tiny CNN is
trained for 60 SGD steps (lr 0.02, momentum 0.9, gradient-norm clip 1) with the ISNet loss (P = 0.7, the other
loss settings at their defaults) and, for comparison, with cross-entropy only, from the same initial weights on
the same batches. The background-relevance fraction, the share of |heatmap| outside the mask on held-out images
(each variant's own maps, eval mode), must fall clearly under ISNet training, and end well below that of the
plainly trained classifier.

Tuned over seeds 0-7: from initial fractions of 0.38-0.60, ISNet training took them to 0.04-0.34 of their initial
values, cross-entropy training to 0.64-1.0.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from isnet_kernels import ISNet, ISNetLoss

SEED = 0
K, SIZE, LO, HI = 2, 16, 4, 12  # classes, image side, foreground square [LO, HI)
CORNERS = ((0, 0), (0, SIZE - 3))  # the shortcut block's position per class
STEPS, BATCH, LR, P = 60, 32, 0.02, 0.7


def _toy(n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Images (n, 1, 16, 16) in [0, 1], foreground masks (n, 1, 16, 16), labels (n,)."""
    labels = torch.randint(0, K, (n,), generator=g)
    x = 0.15 * torch.rand(n, 1, SIZE, SIZE, generator=g)
    i = torch.arange(HI - LO)
    stripes = torch.stack([((i.view(-1, 1) // 2) % 2).expand(HI - LO, HI - LO),  # class 0: horizontal
                           ((i.view(1, -1) // 2) % 2).expand(HI - LO, HI - LO)]).float()  # class 1: vertical
    contrast = 0.5 + 0.4 * torch.rand(n, 1, 1, generator=g)
    x[:, 0, LO:HI, LO:HI] += stripes[labels] * contrast
    for k, (r, c) in enumerate(CORNERS):
        x[labels == k, :, r:r + 3, c:c + 3] = 1.0
    masks = torch.zeros(n, 1, SIZE, SIZE)
    masks[:, :, LO:HI, LO:HI] = 1
    return x.clamp(0, 1), masks, labels


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(SEED)
    return {"train": _toy(256, g), "test": _toy(64, g)}


def _model() -> nn.Module:
    """conv-ReLU-maxpool twice, conv-ReLU, global average pooling, linear: 8, 16, 16 channels, no BatchNorm.

    Without BatchNorm the heatmap loss's gradient w.r.t. the weights is the exact derivative. With BatchNorm in
    train mode the rules detach the batch statistics (docs/rules.md#batch_stats), and on this task the logit-rule
    variants
    (original, stochastic) on :class:`~isnet_kernels.models.SmallCNN` then failed to lower the fraction for some
    seeds (selective and dual did), so the test would hinge on the seed.
    """
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, K))


@pytest.fixture(scope="module")
def initial() -> nn.Module:
    torch.manual_seed(SEED)
    return _model()


def _train(isnet: ISNet, P: float, data) -> None:
    x, masks, labels = data["train"]
    g = torch.Generator().manual_seed(SEED + 1)  # the same batches for every run
    loss_fn = ISNetLoss(P=P)
    opt = torch.optim.SGD(isnet.model.parameters(), lr=LR, momentum=0.9)
    isnet.train()
    for _ in range(STEPS):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
        out = isnet(x[idx], labels[idx], heatmaps=P > 0)
        loss = loss_fn(out, labels[idx], masks[idx]).total
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(isnet.model.parameters(), 1.0)
        opt.step()
    isnet.eval()


def _background_fraction(isnet: ISNet, data) -> float:
    """Share of |heatmap| (all maps, all images) outside the masks, held-out images, eval mode."""
    x, masks, labels = data["test"]
    isnet.eval()
    with torch.no_grad():
        h = isnet(x, labels, heatmaps=True).heatmaps.abs().sum(2)  # (B, M, H, W)
    return float((h * (1 - masks)).sum() / h.sum())


@pytest.fixture(scope="module")
def plain(initial, data) -> nn.Module:
    """The classifier trained with cross-entropy only (the same start, steps and batches)."""
    model = copy.deepcopy(initial)
    _train(ISNet(model, "selective"), 0.0, data)
    return model


@pytest.mark.parametrize("variant", ["original", "selective", "stochastic", "dual"])
def test_isnet_moves_relevance_off_the_shortcut(variant, data, initial, plain):
    def wrap(model: nn.Module) -> ISNet:
        return ISNet(model, variant, generator=torch.Generator().manual_seed(SEED))

    before = _background_fraction(wrap(copy.deepcopy(initial)), data)
    isnet = wrap(copy.deepcopy(initial))
    _train(isnet, P, data)
    after = _background_fraction(isnet, data)
    baseline = _background_fraction(wrap(plain), data)
    assert 0.2 < before < 0.8, before  # the untrained model spreads relevance over the whole image
    assert after < 0.6 * before, f"{variant}: background fraction {before:.3f} -> {after:.3f}"
    assert after < 0.6 * baseline, f"{variant}: ISNet {after:.3f} vs cross-entropy only {baseline:.3f}"
    assert baseline > 0.5 * before, f"{variant}: cross-entropy alone took relevance off the background"
