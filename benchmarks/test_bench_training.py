"""The training path on whole models: one ISNet-style step per backend vs one plain classifier step.

Per model (one pytest-benchmark group each), train mode (BatchNorm on batch statistics, dropout on), float32,
a batch of ``BATCH`` 64x64 images in [0, 1] with one label per image, ``torch.set_num_threads(2)``:

* ``classifier_step``: ``logits = model(x)``, ``loss = cross_entropy(logits, y)``, ``torch.autograd.grad(loss,
  params)``: the cost a plain training step pays (without the optimiser update, which is the same for both);
* ``isnet(<backend>)``: ``logits, maps = LRP(model, backend=<backend>)(x, y.view(-1, 1), output="selective")``
  (the forward and the relevance pass, M = 1 map per image, differentiable), ``loss = cross_entropy(logits, y) +
  heatmap_loss(maps)``, and ``torch.autograd.grad(loss, params)``: the gradient w.r.t. every parameter, through
  the relevance pass and the forward (the cost model of docs/kernels.md#cost-model: about (3 + 3M)F against 3F).

``heatmap_loss`` is an ISNet-like background-attention loss: the share of each heatmap's absolute relevance
that falls outside a fixed central foreground box (the inner half of the image), averaged over the batch. It is a
few elementwise passes over input-sized tensors, negligible against the rest.

``params`` are all parameters of the model (requiring grad). ``isnet(reference)`` runs the plain-PyTorch ops under
autograd; ``isnet(cpp)`` the hand-written backwards on the compiled CPU kernels (``isnet(triton)`` with
``BENCH_DEVICE=cuda``). After timing, the fused backend's gradients are compared with the reference's.

Environment: ``BENCH_TRAIN_ROUNDS`` (default 7), ``BENCH_MODELS``, ``BENCH_DEVICE``, ``BENCH_BACKENDS``.
"""

from __future__ import annotations

import os

import bench_common as bc
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import isnet_kernels

ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", "7"))
MODEL_NAMES = [m for m in os.environ.get("BENCH_MODELS", ",".join(bc.MODELS)).split(",") if m]
METHODS = ("classifier_step", *[f"isnet({b})" for b in bc.backends()])

_MODELS: dict[str, nn.Module] = {}
_GRADS: dict[str, list[Tensor]] = {}


def _model(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = bc.make_model(name).train()
    return _MODELS[name]


def background_mask(size: int) -> Tensor:
    """1 outside the central box of half the image's side, 0 inside: (1, 1, size, size) on ``DEVICE``."""
    mask = torch.ones(1, 1, size, size, device=bc.DEVICE)
    lo, hi = size // 4, size - size // 4
    mask[..., lo:hi, lo:hi] = 0
    return mask


def heatmap_loss(maps: Tensor, mask: Tensor) -> Tensor:
    """Mean over images and maps of ``sum |H| * background / sum |H|``; ``maps`` is (B, M, C, H, W)."""
    heat = maps.abs().sum(2)  # (B, M, H, W)
    background = (heat * mask[0]).flatten(2).sum(-1)
    return (background / (heat.flatten(2).sum(-1) + 1e-6)).mean()


def make_step(method: str, model: nn.Module, x: Tensor, y: Tensor):
    """A no-argument function making one step's gradients (a list, one entry per parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if method == "classifier_step":
        def step() -> list[Tensor]:
            loss = F.cross_entropy(model(x), y)
            return list(torch.autograd.grad(loss, params))

        return step

    backend = method[len("isnet("):-1]
    lrp = isnet_kernels.LRP(model, eps=bc.EPS, first_layer="zb", bounds=bc.BOUNDS, backend=backend)
    mask = background_mask(x.shape[-1])
    targets = y.view(-1, 1)

    def step() -> list[Tensor]:
        logits, maps = lrp(x, targets, output="selective")
        loss = F.cross_entropy(logits, y) + heatmap_loss(maps, mask)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]

    return step


def _seeded(fn):
    """``fn`` with a fixed RNG state (the same dropout masks), for comparing backends."""
    def run():
        torch.manual_seed(123)
        return fn()

    return run


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_training_step(benchmark, model_name: str, method: str) -> None:
    model = _model(model_name)
    x, y = bc.make_inputs()
    benchmark.group = f"train {model_name} (B={bc.BATCH}, {bc.SIZE}x{bc.SIZE}, {bc.describe_device()})"
    benchmark.name = method
    benchmark.extra_info.update(suite="training", model=model_name, model_description=bc.MODELS[model_name].description,
                                method=method, batch=bc.BATCH, image_size=bc.SIZE, maps=1, output_rule="selective",
                                threads=torch.get_num_threads(), device=str(bc.DEVICE), mode="train")

    step = bc.timed(make_step(method, model, x, y))
    grads = benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert all(bool(torch.isfinite(g).all()) for g in grads)

    if method.startswith("isnet("):
        mine = _seeded(step)()
        if method == "isnet(reference)":
            _GRADS[model_name] = mine
        elif model_name in _GRADS:
            ref = _GRADS[model_name]
            num = max(float((a - b).abs().max()) for a, b in zip(mine, ref))
            den = max(float(b.abs().max()) for b in ref)
            err = num / max(den, 1e-30)
            benchmark.extra_info["grad_rel_err_vs_reference"] = err
            assert err < 1e-2, f"{method} parameter gradients differ from the reference's: {err:.2e}"
