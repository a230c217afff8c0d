"""C1/C2 tuning: streaming moments, the cut formulas, and tune_cut on small models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import isnet_kernels as ik
from isnet_kernels.isnet.tune import CutTuner, RunningMoments, cuts_from_moments, heatmap_totals


def tiny_model(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes))


def batches(n: int = 3, B: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 3, (B,), generator=g)) for _ in range(n)]


def test_running_moments_match_whole_sample() -> None:
    data = torch.randn(37, 3, dtype=torch.float64) * 4 + 2
    moments = RunningMoments()
    for chunk in torch.split(data, [1, 10, 5, 21]):
        moments.update(chunk)
    mean, std = moments.result()
    assert mean == pytest.approx(data.mean(0).tolist(), rel=1e-12)
    assert std == pytest.approx(data.std(0, unbiased=False).tolist(), rel=1e-12)
    with pytest.raises(ValueError, match="no samples"):
        RunningMoments().result()


def test_cut_formulas() -> None:
    assert cuts_from_moments(10.0, 1.0) == (7.0, 13.0)  # mu - 3 sigma > mu / 5; mu + 3 sigma < 25 C1
    assert cuts_from_moments(10.0, 5.0) == (2.0, 25.0)  # mu / 5 wins; C2 = mu + 3 sigma = 25 < 50
    c1, c2 = cuts_from_moments(10.0, 100.0)
    assert (c1, c2) == (2.0, 50.0)  # C2 capped at 25 C1


def test_tune_cut_without_training_matches_direct_statistics() -> None:
    """epochs=0: one pass; C1/C2 from the mean and std of the per-image total |H| of the model's own maps."""
    model = tiny_model()
    isnet = ik.ISNet(model, "selective")
    data = batches()
    before = copy.deepcopy(model.state_dict())
    result = ik.tune_cut(isnet, data, epochs=0, progress=False)
    net = copy.deepcopy(isnet).train()
    with torch.no_grad():
        totals = torch.cat([net(x, y).heatmaps.abs().sum((1, 2, 3, 4)) for x, y in data]).double()
    mu, sigma = float(totals.mean()), float(totals.std(unbiased=False))
    c1, c2 = cuts_from_moments(mu, sigma)
    assert result.C1["input"] == pytest.approx(c1, rel=1e-9)
    assert result.C2["input"] == pytest.approx(c2, rel=1e-9)
    assert result.samples == 12
    # the running BatchNorm statistics of the caller's model are untouched (tune_cut works on a copy)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tune_cut_trains_a_copy_and_collects_per_map_and_per_level() -> None:
    model = tiny_model()
    isnet = ik.ISNet(model, "dual", deep_supervision=True)
    before = [p.detach().clone() for p in model.parameters()]
    data = [(x, torch.ones(x.shape[0], 1, 8, 8), y) for x, y in batches()]  # (images, masks, labels) batches
    result = ik.tune_cut(isnet, data, epochs=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert set(result.C1) == {"input", "3", "6"}  # the input and the two max-pools of the Sequential
    for level in result.C1:
        assert len(result.C1[level]) == 2 and len(result.C2[level]) == 2  # z+ map and epsilon map
        assert all(0 < a <= b for a, b in zip(result.C1[level], result.C2[level]))
    loss = ik.ISNetLoss(C1=result.C1, C2=result.C2)  # accepted as they are
    out = isnet.train()(data[0][0], data[0][2])
    assert torch.isfinite(loss(out, data[0][2], data[0][1]).total)


def test_tune_cut_training_changes_only_the_copy_and_uses_the_trained_maps() -> None:
    """With epochs=1 the statistics come from the maps of a model being trained: they differ from epochs=0's."""
    isnet = ik.ISNet(tiny_model(), "selective")
    data = batches(4)
    trained = ik.tune_cut(isnet, data, epochs=1, lr=0.5, progress=False)
    untrained = ik.tune_cut(isnet, data, epochs=0, progress=False)
    assert trained.C1["input"] != pytest.approx(untrained.C1["input"], rel=1e-3)


def test_tuner_original_variant_averages_over_maps() -> None:
    H = torch.randn(5, 4, 1, 3, 3)
    assert torch.allclose(heatmap_totals(H, per_map=False)[:, 0], H.abs().sum((2, 3, 4)).mean(1))
    tuner = CutTuner(per_map=False)
    tuner.update(torch.zeros(3, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="no positive, finite"):
        tuner.result()


def test_tune_cut_errors() -> None:
    isnet = ik.ISNet(tiny_model())
    opt = torch.optim.SGD(isnet.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="copy_model=False"):
        ik.tune_cut(isnet, batches(), optimizer=opt)
    with pytest.raises(ValueError, match="batches"):
        ik.tune_cut(isnet, [torch.rand(2, 1, 8, 8)], epochs=0, progress=False)
