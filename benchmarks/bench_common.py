"""What the benchmarks time: the device, the backends, the models, the inputs and the heatmap methods, shared by
``test_bench_explain.py`` (timing), ``memprobe.py`` (peak memory, one fresh process per measurement),
``test_bench_training.py`` and ``test_bench_ops.py``.

Device: ``$BENCH_DEVICE`` (default ``cpu``; ``cuda`` on a GPU machine, see ``run_gpu.sh``). Backends:
``$BENCH_BACKENDS`` (comma-separated) or, by default, ``reference`` plus the device's fused backend when it can
run (``cpp`` on CPU, ``triton`` on CUDA).

Methods, all for one class per image (the logit of ``target``), float32, eval mode:

* ``explain(<backend>)``: ``isnet_kernels.explain(model, x, target, backend=<backend>)``: epsilon 1e-2
  everywhere, Z^B with bounds (0, 1) on the first layer, BatchNorm folded, relevance starts as the target logit;
  an inference call (``explain`` runs under ``torch.no_grad``). ``isnet_kernels`` (the name of earlier runs) is
  the same with the default backend (``auto``).
* ``input_gradient``: forward + ``torch.autograd.grad(logits.gather(1, t).sum(), x)``, the cheapest backward
  pass of the same model (the floor any gradient-based explainer pays).
* ``zennit``: zennit 0.5.1 with matched rules: BatchNorm merged into the preceding Conv2d
  (``SequentialMergeBatchNorm``; for the ResNet zennit's ``ResNetCanonizer``, whose block canonizers match
  torchvision's blocks and turn the residual add into a ``zennit.layer.Sum``);
  ``Epsilon(1e-2)`` on every Conv2d, Linear, max/average pool and ``Sum``; ``ZBox(0, 1, stabilizer=1e-2)`` on
  the first convolution (``isnet_kernels`` stabilises its Z^B denominator with the same eps; zennit's default
  would be 1e-6); relevance starts as ``one_hot(target) * logits`` (``grad_outputs`` of
  ``torch.autograd.grad``). The composite is registered once, outside the timed region (like
  ``isnet_kernels``' compiled program, which is cached per model).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import re
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

BATCH = 16
SIZE = 64
NUM_CLASSES = 10
EPS = 1e-2
BOUNDS = (0.0, 1.0)
THREADS = 2
DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
FUSED = {"cpu": "cpp", "cuda": "triton"}  # the device's compiled backend


def backend_available(name: str, device: torch.device = DEVICE) -> bool:
    """Whether ``isnet_kernels`` backend ``name`` can run tensors on ``device``."""
    from isnet_kernels.backends import dispatch

    try:
        dispatch.resolve(name, device)
        return True
    except Exception:
        return False


def backends(with_torch: bool = False) -> list[str]:
    """The backends to time: ``$BENCH_BACKENDS``, else reference (+ torch) + the device's fused one if it runs."""
    env = os.environ.get("BENCH_BACKENDS")
    if env:
        return [b for b in env.split(",") if b]
    names = ["reference"] + (["torch"] if with_torch else [])
    fused = FUSED.get(DEVICE.type)
    if fused and backend_available(fused):
        names.append(fused)
    return names


def explain_method(backend: str) -> str:
    return f"explain({backend})"


#: Whether zennit (the independent implementation timed beside ``explain``) is installed; the GPU machines have none.
HAVE_ZENNIT = importlib.util.find_spec("zennit") is not None
METHODS = (*[explain_method(b) for b in backends()], "input_gradient", "zennit")
#: The method the others are checked against: the plain-PyTorch reference.
REFERENCE_METHOD = explain_method("reference")


def synchronize() -> None:
    """Wait for queued device work (timings on CUDA must include it); no-op on CPU."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``fn`` followed by a device synchronisation (on CPU: ``fn`` itself)."""
    if DEVICE.type != "cuda":
        return fn

    def run() -> Tensor:
        out = fn()
        torch.cuda.synchronize(DEVICE)
        return out

    return run


def describe_device() -> str:
    """``cpu (2 threads)`` or the GPU's name."""
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name(DEVICE)
    return f"cpu, {THREADS} threads"


def import_torchvision() -> types.ModuleType:
    """Import torchvision and its classification models (zennit imports torchvision at import time; the
    environments the benchmarks run in install the torchvision built for their torch)."""
    import torchvision
    import torchvision.models  # noqa: F401

    return torchvision


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: how to build it and what zennit needs to know about it."""

    name: str
    build: Callable[[], nn.Module]
    first_layer: str  # module name of the input-reading convolution (Z^B / ZBox)
    description: str


def _resnet18() -> nn.Module:
    return import_torchvision().models.resnet18(num_classes=NUM_CLASSES)


def _vgg11_bn() -> nn.Module:
    """torchvision's VGG-11 with BatchNorm (``features`` as ``vgg11_bn`` builds them) with a 1x1 average pool and
    512 hidden units in the classifier instead of 7x7 and 4096 (sized for 64x64 images), initialised as torchvision
    initialises a VGG."""
    tv = import_torchvision()
    with torch.device("meta"):  # the 4096-wide classifier it is built with is replaced below
        model = tv.models.VGG(nn.Sequential(), num_classes=NUM_CLASSES, init_weights=False)
    model.features = tv.models.vgg.make_layers(tv.models.vgg.cfgs["A"], batch_norm=True)
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.classifier = nn.Sequential(nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512),
                                     nn.ReLU(True), nn.Dropout(), nn.Linear(512, NUM_CLASSES))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec("resnet18", _resnet18, "conv1",
                          "torchvision's ResNet-18 (7x7 stem + max-pool), 10 classes"),
    "vgg11_bn": ModelSpec("vgg11_bn", _vgg11_bn, "features.0",
                          "torchvision's VGG-11 with BatchNorm (1x1 pool, hidden 512), 10 classes"),
}


def make_model(name: str) -> nn.Module:
    """The model ``name`` with a fixed random initialisation, in eval mode, float32, on ``DEVICE``."""
    torch.manual_seed(0)
    return MODELS[name].build().float().eval().to(DEVICE)


def make_inputs() -> tuple[Tensor, Tensor]:
    """A fixed batch on ``DEVICE``: images (BATCH, 3, SIZE, SIZE) uniform in [0, 1] (the Z^B box) and targets
    (BATCH,)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    target = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    return x.to(DEVICE), target.to(DEVICE)


def _resnet_canonizer():
    """zennit's ``ResNetCanonizer`` (BatchNorm merge, residual add -> ``zennit.layer.Sum`` in torchvision's
    blocks)."""
    from zennit.torchvision import ResNetCanonizer

    return ResNetCanonizer()


def _zennit_composite(first_layer: str, resnet: bool):
    import_torchvision()
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.core import Composite
    from zennit.layer import Sum
    from zennit.rules import Epsilon, ZBox

    epsilon_types = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, Sum)

    def module_map(ctx, name, module):
        if name == first_layer:
            return ZBox(low=BOUNDS[0], high=BOUNDS[1], stabilizer=EPS)  # isnet_kernels stabilises Z^B with eps too
        if isinstance(module, epsilon_types):
            return Epsilon(epsilon=EPS)
        return None  # ReLU, Dropout, merged BatchNorm, containers: relevance passes as the gradient

    canonizers = [_resnet_canonizer()] if resnet else [SequentialMergeBatchNorm()]
    return Composite(module_map=module_map, canonizers=canonizers)


def make_method(method: str, model_name: str, model: nn.Module, x: Tensor, target: Tensor,
                stack: contextlib.ExitStack) -> Callable[[], Tensor]:
    """A no-argument function computing the (B, C, H, W) heatmap (or input gradient) of ``method``.

    Set-up that is not part of a call (zennit's canonizers and hooks) is entered on ``stack``; close it after
    timing. zennit works on a deep copy, since its canonizers edit the model in place. The function does not
    synchronise the device: wrap it in :func:`timed` to time it.
    """
    import isnet_kernels

    match = re.fullmatch(r"explain\((\w+)\)", method)
    if method == "isnet_kernels" or match:
        backend = match.group(1) if match else None

        def run() -> Tensor:
            return isnet_kernels.explain(model, x, target, eps=EPS, first_layer="zb", bounds=BOUNDS, backend=backend)

        return run

    idx = target.view(-1, 1)
    if method == "input_gradient":
        xg = x.detach().clone().requires_grad_(True)

        def run() -> Tensor:
            logits = model(xg)
            (grad,) = torch.autograd.grad(logits.gather(1, idx).sum(), xg)
            return grad

        return run

    if method == "zennit":
        zmodel = copy.deepcopy(model)
        composite = _zennit_composite(MODELS[model_name].first_layer, resnet=model_name.startswith("resnet"))
        modified = stack.enter_context(composite.context(zmodel))
        xz = x.detach().clone().requires_grad_(True)

        def run() -> Tensor:
            out = modified(xz)
            grad_out = torch.zeros_like(out).scatter_(1, idx, out.gather(1, idx)).detach()
            (relevance,) = torch.autograd.grad(out, xz, grad_outputs=grad_out)
            return relevance

        return run

    raise ValueError(f"unknown method {method!r}; valid: {METHODS} (or explain(<backend>), isnet_kernels)")


def rel_err(ours: Tensor, ref: Tensor) -> float:
    """``max |ours - ref| / max |ref|``."""
    ours, ref = ours.detach(), ref.detach()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
