"""``explain`` says so when a heatmap is identically zero although the logit it explains is not."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import isnet_kernels as ik


def _dead_model() -> nn.Module:
    """Every ReLU unit is off (negative weights and bias on a non-negative input), and the logits are the last
    layer's bias alone: nonzero logits, no relevance reaching the input."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)
        model[3].bias.copy_(torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64))
    return model


def test_zero_heatmap_with_a_nonzero_logit_warns() -> None:
    model = _dead_model()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="2 heatmap\\(s\\) are identically zero"):
        heat = ik.explain(model, x, 0, first_layer="epsilon")
    assert torch.count_nonzero(heat) == 0 and torch.count_nonzero(model(x)[:, 0]) == 2


def test_live_heatmaps_do_not_warn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    with torch.no_grad():  # every ReLU unit on: positive weights on a positive input
        model[0].weight.abs_()
        model[0].bias.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat = ik.explain(model, torch.rand(2, 1, 6, 6, dtype=torch.float64), 0, first_layer="epsilon")
    assert torch.count_nonzero(heat) > 0
