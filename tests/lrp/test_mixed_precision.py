"""Mixed precision: ``explain``, ``LRP`` and ISNet training under ``torch.autocast`` (bf16 on the CPU) and on bf16
models. The forward runs as autocast makes it; the relevance pass runs in float32 (half-precision activations and
weights are upcast as they are read), so heatmaps are float32. Every backend's error against the float64 result
is at most twice the plain-PyTorch reference's under the same autocast (the flash-attention criterion)."""

from __future__ import annotations

import copy

import pytest
import torch

import isnet_kernels as ik

from ..backend_params import backend_params
from ..tv_models import tiny_resnet

BACKENDS = backend_params(("torch", "cpp"))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_resnet(width=4, num_classes=6, small_input=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # running statistics of a trained network, not the identity
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return float((value.double() - exact).abs().max() / exact.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_explain_under_bf16_autocast(backend: str) -> None:
    model = _model().eval()
    x = torch.rand(2, 3, 16, 16)
    exact = ik.explain(copy.deepcopy(model).double(), x.double(), 1, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = ik.explain(model, x, 1, backend="reference")
        heat = ik.explain(model, x, 1, backend=backend)
    assert heat.dtype == torch.float32 and ref.dtype == torch.float32
    assert 0 < _error(ref, exact) < 0.5  # bf16 is coarse, but the heatmap is the same one
    assert _error(heat, exact) <= 2 * _error(ref, exact) + 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_model(backend: str) -> None:
    model = _model().eval()
    x = torch.rand(2, 3, 16, 16)
    exact = ik.explain(copy.deepcopy(model).double(), x.double(), 1, backend="reference")
    low = copy.deepcopy(model).bfloat16()
    ref = ik.explain(low, x.bfloat16(), 1, backend="reference")
    heat = ik.explain(low, x.bfloat16(), 1, backend=backend)
    assert heat.dtype == torch.float32
    assert _error(heat, exact) <= 2 * _error(ref, exact) + 1e-6 and _error(ref, exact) < 0.5


@pytest.mark.parametrize("backend", BACKENDS)
def test_isnet_loss_gradients_under_bf16_autocast(backend: str) -> None:
    x = torch.rand(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    masks = torch.zeros(4, 1, 16, 16)
    masks[..., 4:12, 4:12] = 1
    criterion = ik.ISNetLoss()

    def grads(model: torch.nn.Module, backend: str, autocast: bool, dtype: torch.dtype) -> torch.Tensor:
        isnet = ik.ISNet(model, "selective", backend=backend).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = isnet(x.to(dtype), labels)
            loss = criterion(out, labels, masks)
        assert out.heatmaps.dtype == (torch.float32 if autocast else dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss.total, params)])

    base = _model()
    exact = grads(copy.deepcopy(base).double(), "reference", False, torch.float64)
    ref = grads(copy.deepcopy(base), "reference", True, torch.float32)
    got = grads(copy.deepcopy(base), backend, True, torch.float32)
    assert torch.isfinite(got).all()
    assert _error(got, exact) <= 2 * _error(ref, exact) + 1e-6
