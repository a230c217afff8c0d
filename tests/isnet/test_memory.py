"""``ISNet(memory="low")``: the relevance pass checkpointed by segments gives the default mode's heatmaps, maps at
the supervised layers and parameter gradients (float64, every backend that runs here), keeps fewer bytes for the
backward, and is checked; the residual split without a kept sum equals the one with it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from isnet_kernels import ISNet, ISNetLoss, ops
from isnet_kernels.errors import InputError
from isnet_kernels.lrp import engine

from ..backend_params import backend_params
from ..tv_models import tiny_resnet
from .test_wrapper import DT, Tiny, _randomize

BACKENDS = backend_params(("reference", "torch", "cpp", "triton"))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(tiny_resnet(width=4, num_classes=5, small_input=True).to(DT)).train()


def _tiny(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return _randomize(Tiny(1, classes, 2).to(DT)).train()


def _step(model: nn.Module, memory: str, backend: str, variant: str = "selective", size: int = 8,
          in_ch: int = 3, **kw) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Heatmaps, maps at the supervised layers and the loss's gradients w.r.t. every parameter; the model's state
    (BatchNorm running statistics) is restored afterwards, so that two calls see the same model."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    net = ISNet(model, variant, backend=backend, memory=memory, **kw).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, in_ch, size, size, dtype=DT, generator=gen)
    labels = torch.tensor([0, 3, 1])
    masks = torch.zeros(3, 1, size, size, dtype=DT)
    masks[..., 2:6, 1:5] = 1
    out = net(x, labels)
    loss = ISNetLoss()(out, labels, masks).total
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    model.load_state_dict(state)
    return (out.heatmaps.detach(), [t.detach() for t in out.intermediate.values()],
            [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])


def _assert_same(a, b) -> None:
    (h0, i0, g0), (h1, i1, g1) = a, b
    assert h0.abs().max() > 0
    torch.testing.assert_close(h1, h0, rtol=1e-10, atol=1e-12)
    assert len(i0) == len(i1)
    for u, v in zip(i1, i0):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
    assert max(float(g.abs().max()) for g in g0) > 0
    for u, v in zip(g1, g0):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_memory_equals_default_resnet(backend: str) -> None:
    """A ResNet (residual splits, BatchNorm folded with live statistics, deep supervision of the four stages)."""
    model = _resnet()
    default = _step(model, "default", backend)
    low = _step(model, "low", backend)
    assert len(default[1]) == 4
    _assert_same(default, low)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["selective", "dual", "original"])
def test_low_memory_equals_default_variants(backend: str, variant: str) -> None:
    """Every variant on a tiny model; the original one also with map chunks (checkpoints nested in checkpoints)."""
    model = _tiny()
    kw = {"map_chunk": 2} if variant == "original" else {}
    _assert_same(_step(model, "default", backend, variant, in_ch=1, **kw),
                 _step(model, "low", backend, variant, in_ch=1, **kw))


def _saved_bytes(model: nn.Module, memory: str) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for the backward of one ISNet forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    net = ISNet(model, "selective", backend="torch", memory=memory).train()
    x = torch.rand(2, 3, 16, 16, dtype=DT)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x, torch.tensor([0, 1]))
    del out
    return sum(seen.values())


def test_low_memory_keeps_less_for_the_backward() -> None:
    model = _resnet()
    default, low = _saved_bytes(model, "default"), _saved_bytes(model, "low")
    assert low < 0.75 * default, (low, default)


def test_segments_cover_the_pass_in_order() -> None:
    order = [type("S", (), {"name": f"s{i}"})() for i in range(10)]
    saved = {f"s{i}": torch.zeros(100 if i < 2 else 1) for i in range(10)}
    parts = engine.relevance_segments(order, saved, 3)
    assert [s for part in parts for s in part] == order
    assert 1 < len(parts) <= 3 and all(parts)
    assert parts[0] == order[:1]  # the heavy steps are cut apart
    assert engine.relevance_segments(order, saved, 1) == [order]
    assert engine.auto_segments(1) == 1 and engine.auto_segments(50) == 8


def test_low_memory_without_autograd_is_one_pass() -> None:
    model = _tiny()
    x = torch.rand(3, 1, 8, 8, dtype=DT)
    with torch.no_grad():
        a = ISNet(model, memory="low").train()(x, torch.tensor([0, 1, 2])).heatmaps
        b = ISNet(model).train()(x, torch.tensor([0, 1, 2])).heatmaps
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_memory_is_checked() -> None:
    with pytest.raises(InputError) as err:
        ISNet(_tiny(), memory="tiny")
    assert err.value.params == ("memory",)
    assert "memory='low'" in repr(ISNet(_tiny(), memory="low"))


@pytest.mark.parametrize("backend", backend_params())
def test_residual_split_recomputes_the_sum(backend: str) -> None:
    """``y`` None (recomputed from ``x + f``, not kept) gives the values and gradients of the kept sum."""
    from isnet_kernels.backends import dispatch

    prims = dispatch.primitives(backend)
    gen = torch.Generator().manual_seed(3)
    R, x, f = (torch.randn(*s, dtype=DT, generator=gen) for s in ((2, 3, 4, 5, 5), (2, 4, 5, 5), (2, 4, 5, 5)))
    outs = []
    for keep in (True, False):
        Rg, xg, fg = (t.clone().requires_grad_(True) for t in (R, x, f))
        y = xg + fg if keep else None
        Rx, Rf = ops.residual_split(Rg, xg, fg, y, eps=1e-2, prims=prims)
        loss = (Rx.square() * 0.3 + Rf.sin()).sum()
        outs.append((Rx.detach(), Rf.detach(), *torch.autograd.grad(loss, (Rg, xg, fg))))
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def test_train_config_and_command_line() -> None:
    """``TrainConfig(memory=...)`` is checked and reaches the trainer's ISNet; ``isnet train --memory low`` sets it."""
    import argparse

    from isnet_kernels.cli import add_config_options
    from isnet_kernels.train import TrainConfig
    from isnet_kernels.train.errors import TrainError

    with pytest.raises(TrainError) as err:
        TrainConfig(memory="tiny")
    assert err.value.params == ("memory",)
    assert TrainConfig(memory="low").memory == "low"
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    assert parser.parse_args(["--out", "run", "--memory", "low"]).memory == "low"
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "run", "--memory", "tiny"])
