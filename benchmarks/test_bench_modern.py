"""Modern torchvision classifiers: ``explain`` vs the input gradient, and a selective ISNet step vs the plain step.

Models (torchvision 0.28.0 builders, ``weights=None``, 10 classes, randomised as in ``python/zoo.py``: parameters
that torchvision initialises to constants and BatchNorm statistics from a train-mode forward), float32,
``torch.set_num_threads(2)``, a batch of ``BATCH`` images uniform in [0, 1]:

* ``mobilenet_v2``, ``efficientnet_b0``, ``convnext_tiny`` at 64x64; ``vit_b_16`` with ``image_size=64``
  (16 patches and the class token); Swin-T once its rules are registered (``BENCH_MODERN_MODELS=...,swin_t``).

Per model, in eval mode (one pytest-benchmark group each, suite ``explain`` for ``report.py``):
``explain(<backend>)`` (epsilon 1e-2, Z^B with bounds (0, 1) on the first layer, one target per image; see
``bench_common.py``) per backend, and ``input_gradient`` (forward + gradient of the target logits w.r.t. the
input). On two models (``mobilenet_v2``, ``vit_b_16``), in train mode (suite ``training``):
``classifier_step`` (forward, cross-entropy, gradients of every parameter) and ``isnet(<backend>)``
(``isnet_kernels.ISNet(model, "selective", preset="paper", backend=...)`` forward with heatmaps, ``ISNetLoss``
with a central foreground box, gradients of every parameter). Each method is warmed up once and timed
``BENCH_ROUNDS`` rounds (default 5), one call per round.

Run (a few minutes)::

    python -m pytest benchmarks/test_bench_modern.py -q --benchmark-json=benchmarks/results/modern.json
    python benchmarks/report.py benchmarks/results/modern.json --no-plot   # -> benchmarks/results/modern.md
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import bench_common as bc
import pytest
import torch
from torch import Tensor, nn

import isnet_kernels

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
MODEL_NAMES = [m for m in os.environ.get("BENCH_MODERN_MODELS", "mobilenet_v2,efficientnet_b0,convnext_tiny,"
                                                                "vit_b_16").split(",") if m]
STEP_MODELS = [m for m in os.environ.get("BENCH_MODERN_STEP_MODELS", "mobilenet_v2,vit_b_16").split(",") if m]
EXPLAIN_METHODS = (*[bc.explain_method(b) for b in bc.backends()], "input_gradient")
STEP_METHODS = ("classifier_step", *[f"isnet({b})" for b in bc.backends()])
DESCRIPTIONS = {
    "mobilenet_v2": "MobileNet V2 (width 1.0), 64x64",
    "efficientnet_b0": "EfficientNet-B0, 64x64",
    "convnext_tiny": "ConvNeXt-Tiny, 64x64",
    "vit_b_16": "ViT-B/16, image_size 64 (16 patches + class token)",
    "swin_t": "Swin-T, 64x64",
}


def _zoo():
    """``python/zoo.py`` (its model cases and randomisation), imported once as the module ``zoo``."""
    if "zoo" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "python" / "zoo.py"
        spec = importlib.util.spec_from_file_location("zoo", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["zoo"] = module
        spec.loader.exec_module(module)
    return sys.modules["zoo"]


_MODELS: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    """The randomised model ``name`` (eval mode, float32, on ``DEVICE``), built once."""
    if name not in _MODELS:
        zoo = _zoo()
        kwargs = {"num_classes": bc.NUM_CLASSES, **({"image_size": bc.SIZE} if name.startswith("vit") else {})}
        case = zoo.Case(name, name, kwargs, bc.SIZE)
        _MODELS[name] = zoo.build(case).to(bc.DEVICE)
    return _MODELS[name]


def _group(prefix: str, name: str) -> str:
    return f"{prefix}{name} (B={bc.BATCH}, {bc.SIZE}x{bc.SIZE}, {bc.describe_device()})"


@pytest.mark.parametrize("method", EXPLAIN_METHODS)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_explain_modern(benchmark, model_name: str, method: str) -> None:
    model = _model(model_name).eval()
    x, target = bc.make_inputs()
    benchmark.group = _group("", model_name)
    benchmark.name = method
    benchmark.extra_info.update(suite="explain", model=model_name, model_description=DESCRIPTIONS[model_name],
                                method=method, batch=bc.BATCH, image_size=bc.SIZE, threads=torch.get_num_threads(),
                                device=str(bc.DEVICE))
    with contextlib.ExitStack() as stack:
        fn = bc.timed(bc.make_method(method, model_name, model, x, target, stack))
        out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    assert all(float(h.abs().sum()) > 0 for h in out), f"{method}: an all-zero map"


def _step(method: str, model: nn.Module, x: Tensor, y: Tensor):
    """A no-argument function computing one step's parameter gradients (one tensor per parameter)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if method == "classifier_step":
        def plain() -> list[Tensor]:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            return list(torch.autograd.grad(loss, params))

        return plain

    isnet = isnet_kernels.ISNet(model, "selective", preset="paper", eps=bc.EPS, bounds=bc.BOUNDS,
                                backend=method[len("isnet("):-1]).train()
    criterion = isnet_kernels.ISNetLoss()
    masks = torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device)
    lo, hi = bc.SIZE // 4, bc.SIZE - bc.SIZE // 4
    masks[..., lo:hi, lo:hi] = 1

    def step() -> list[Tensor]:
        loss = criterion(isnet(x, y), y, masks).total
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]

    return step


@pytest.mark.parametrize("method", STEP_METHODS)
@pytest.mark.parametrize("model_name", STEP_MODELS)
def test_step_modern(benchmark, model_name: str, method: str) -> None:
    model = _model(model_name).train()
    x, y = bc.make_inputs()
    benchmark.group = _group("train ", model_name)
    benchmark.name = method
    benchmark.extra_info.update(suite="training", model=model_name, model_description=DESCRIPTIONS[model_name],
                                method=method, batch=bc.BATCH, image_size=bc.SIZE, maps=1, output_rule="selective",
                                threads=torch.get_num_threads(), device=str(bc.DEVICE), mode="train")
    try:
        grads = benchmark.pedantic(bc.timed(_step(method, model, x, y)), rounds=ROUNDS, iterations=1,
                                   warmup_rounds=1)
    finally:
        model.eval()
    assert all(bool(torch.isfinite(g).all()) for g in grads)
