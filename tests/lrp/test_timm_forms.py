"""The forms timm models write that the engine explains without timm itself: optional ``forward`` arguments bound
to their defaults (``VisionTransformer.forward(x, attn_mask=None, is_causal=False)``), ``x.device`` read inside the
model (EfficientFormer's and LeViT's attention-bias cache), sums over axes (ResNeSt) and their refusals, and
LeViT's BatchNorm over tokens with the batch axis merged, in train mode."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn

import isnet_kernels as ik
from isnet_kernels.errors import UnsupportedLayerError

from .test_modern_rules import TokenBatchNorm

DT = torch.float64


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, dtype=DT)
        self.fc = nn.Linear(4 * 5 * 4, 3, dtype=DT)


class Optional(Body):
    """``forward(x, mask=None, causal=False, scale=2.0)``: a model traced with its defaults."""

    def forward(self, x, mask: torch.Tensor | None = None, causal: bool = False, scale: float = 2.0):
        y = self.conv(x)
        if mask is not None or causal:
            y = y * 0.0
        return self.fc((y * scale).flatten(1))


class Plain(Body):
    def forward(self, x):
        return self.fc((self.conv(x) * 2.0).flatten(1))


class TwoInputs(Body):
    def forward(self, x, other):
        return self.fc((self.conv(x) + other).flatten(1))


def test_optional_arguments_are_bound_to_their_defaults():
    x = torch.rand(2, 3, 5, 4, dtype=DT)
    got = ik.explain(Optional().eval(), x, eps=1e-3, first_layer="epsilon")
    expected = ik.explain(Plain().eval(), x, eps=1e-3, first_layer="epsilon")
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_a_second_input_without_default_is_refused():
    with pytest.raises(UnsupportedLayerError, match="takes 2 inputs"):
        ik.explain(TwoInputs().eval(), torch.rand(2, 3, 5, 4, dtype=DT))


class DeviceCache(Body):
    """A bias read from a cache keyed by ``str(x.device)`` in eval mode (timm's ``get_attention_biases``), made on
    ``x.device`` with ``x.dtype``."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-0.5, 0.5, 4 * 5 * 4, dtype=DT).view(1, 4, 5, 4))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 1.0
        ones = torch.ones(1, device=x.device, dtype=x.dtype)
        return self.fc((self.conv(x) * ones + self.cache[key]).flatten(1))


def test_device_read_inside_the_model_and_no_proxy_left_behind():
    model = DeviceCache().eval()
    x = torch.rand(2, 3, 5, 4, dtype=DT)
    heat = ik.explain(model, x, eps=1e-3, first_layer="epsilon")
    assert bool(torch.isfinite(heat).all()) and heat.abs().sum() > 0
    assert not any(isinstance(v, fx.Proxy) for v in model.cache.values()), "tracing left a proxy in the cache"
    copy.deepcopy(model)(x)  # the model still runs and copies as before


@pytest.mark.parametrize("op, why", [(lambda y: y.sum(), "all axes"), (lambda y: y.sum(0), "batch axis"),
                                     (lambda y: torch.sum(y, (0, 1)), "batch axis")])
def test_sums_over_the_batch_axis_are_refused(op, why):
    class SumAll(Body):
        def forward(self, x):
            return self.fc(op(self.conv(x)).reshape(1, -1).expand(x.shape[0], -1)[:, :80])

    with pytest.raises(UnsupportedLayerError, match=why) as info:
        ik.explain(SumAll().eval(), torch.rand(2, 3, 5, 4, dtype=DT))
    assert "sum" in str(info.value)


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.op = TokenBatchNorm()
        self.op.bn.momentum = 0.1
        self.fc = nn.Linear(4 * 5 * 4, 3)

    def forward(self, x):
        return self.fc(self.op(self.conv(x)).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_token_batchnorm_in_train_mode_is_the_models_own(dtype):
    """Rewritten as ``bn(x.transpose(1, 2)).transpose(1, 2)``, LeViT's token BatchNorm normalises with the same
    batch statistics and updates the running statistics as the model's own forward; the heatmap and its gradient
    are finite."""
    model = TokenNet().to(dtype).train()
    reference = copy.deepcopy(model)
    x = torch.rand(3, 3, 5, 4, dtype=dtype, requires_grad=True)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    logits, maps = ik.LRP(model, first_layer="epsilon")(x, torch.tensor([[0], [1], [2]]))
    torch.testing.assert_close(logits, reference(x), **tol)
    torch.testing.assert_close(model.op.bn.running_mean, reference.op.bn.running_mean, **tol)
    torch.testing.assert_close(model.op.bn.running_var, reference.op.bn.running_var, **tol)
    maps.square().sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
    assert bool(torch.isfinite(model.op.bn.weight.grad).all())
