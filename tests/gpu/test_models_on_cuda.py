"""Whole models on CUDA tensors, every backend that runs there (``reference``, ``torch``, ``triton``, ``cuda``): part
of ``make gpu-check``. Skipped, with the reason, without a CUDA device.

- ``explain`` of torchvision's ResNet-18 (with the package's ``small_input`` stem) and of a narrow torchvision
  DenseNet on CUDA in float32 against the ``reference`` backend on the CPU in float64: normwise error
  ``max |a - b| / max |b|`` within 1e-4 (float32 accumulation over a few hundred terms per output, TF32 off).
- the same in float64 on CUDA: within 1e-9 (the backends' float64 kernels against plain autograd).
- one selective ISNet training step (heatmaps, :class:`~isnet_kernels.ISNetLoss`, backward) on CUDA, float64: the
  loss and every parameter gradient against the same step on the CPU with the ``reference`` backend, within 1e-8.
- ``explain`` on CUDA with ``backend="auto"`` runs and agrees with the named backends (the choice auto makes is
  reported by ``python -m isnet_kernels.info``).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import isnet_kernels as ik
from isnet_kernels.backends import dispatch
from isnet_kernels.models import build_model

from ..tv_models import tiny_densenet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA device and compiled kernels (TRITON_INTERPRET unset or 0)")

BACKENDS = ("reference", "torch", "triton", "cuda")


def _usable(backend: str) -> None:
    """Skip the calling test, with the reason, when ``backend`` cannot run CUDA tensors here."""
    ok, why = dispatch.backend_status()[backend]
    if not ok:
        pytest.skip(f"backend {backend!r} is not available: {why}")


def _error(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return float((out.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "resnet18":
        return build_model("resnet18", 10, small_input=True).eval()
    return tiny_densenet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10,
                         small_input=True).eval()


@pytest.fixture(autouse=True)
def ieee_fp32():
    """TF32 off: float32 results are compared with float64 at float32's precision."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["resnet18", "densenet"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)], ids=["fp32", "fp64"])
def test_explain_on_cuda_matches_cpu_reference(backend: str, name: str, dtype: torch.dtype, tol: float) -> None:
    _usable(backend)
    model = _model(name).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    ref = ik.explain(model, x, backend="reference")
    gpu = copy.deepcopy(model).to("cuda", dtype)
    out = ik.explain(gpu, x.to("cuda", dtype), backend=backend)
    assert out.is_cuda and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert _error(out, ref) < tol, f"{backend} {name} {dtype}: normwise error {_error(out, ref):.2e}"


def test_auto_backend_on_cuda_agrees() -> None:
    model = _model("resnet18")
    x = torch.rand(2, 3, 32, 32)
    ref = ik.explain(model.double(), x.double(), backend="reference")
    out = ik.explain(model.float().cuda(), x.cuda())
    assert _error(out, ref) < 1e-4


def _isnet_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                backend: str) -> tuple[float, dict[str, torch.Tensor]]:
    isnet = ik.ISNet(model, variant="selective", backend=backend).train()
    criterion = ik.ISNetLoss()
    out = criterion(isnet(x, labels), labels, masks)
    out.total.backward()
    grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return float(out.total), grads


@pytest.mark.parametrize("backend", BACKENDS)
def test_isnet_step_on_cuda_matches_cpu_reference(backend: str) -> None:
    _usable(backend)
    model = _model("resnet18").double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 3, 7, 9])
    masks = torch.zeros(4, 1, 32, 32, dtype=torch.float64)
    masks[:, :, 8:24, 8:24] = 1
    ref_loss, ref_grads = _isnet_step(copy.deepcopy(model), x, labels, masks, "reference")
    loss, grads = _isnet_step(copy.deepcopy(model).cuda(), x.cuda(), labels.cuda(), masks.cuda(), backend)
    assert abs(loss - ref_loss) <= 1e-8 * max(1.0, abs(ref_loss))
    assert grads.keys() == ref_grads.keys()
    for n, g in ref_grads.items():
        assert _error(grads[n], g) < 1e-8, f"{backend}: gradient of {n}: normwise error {_error(grads[n], g):.2e}"
