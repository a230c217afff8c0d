"""Whole LRP graphs on every available backend against the reference backend, and backend dispatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import isnet_kernels as ik
from isnet_kernels.backends import dispatch

from ..backend_params import FUNCTION_BACKENDS, backend_cases, backend_params
from ..lrp.models import EveryLayer
from ..tv_models import tiny_densenet, tiny_resnet

BACKENDS = backend_params()


def _models():
    torch.manual_seed(0)
    return {
        "every": (EveryLayer(), (3, 3, 9, 9)),
        "resnet": (tiny_resnet(width=4, num_classes=5, small_input=True), (2, 3, 16, 16)),
        "densenet": (tiny_densenet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                                   num_classes=4, small_input=True), (2, 3, 16, 16)),
    }


PAIRS = [(b, n) for b in FUNCTION_BACKENDS for n in ("every", "resnet", "densenet") if b != "triton" or n == "every"]
CASES = backend_cases(PAIRS)


@pytest.mark.parametrize("backend,name", CASES)  # interpreted Triton is slow: its graph test uses the small model
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_backend_matches_reference(backend, name, train):
    _compare_with_reference(backend, name, train, "detached")


@pytest.mark.parametrize("backend,name", backend_cases(p for p in PAIRS if p[1] != "densenet"))
def test_backend_matches_reference_live_batch_stats(backend, name):
    _compare_with_reference(backend, name, True, "live")


def _compare_with_reference(backend: str, name: str, train: bool, batch_stats: str) -> None:
    model, shape = _models()[name]
    model = model.double().train(train)
    x = torch.rand(*shape, dtype=torch.double)
    targets = torch.tensor([[0, 1]] * shape[0])
    grads = {}
    maps = {}
    for which in ("reference", backend):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.zero_grad()
        torch.manual_seed(1)
        _, heat = ik.LRP(model, backend=which, batch_stats=batch_stats)(x, targets, output="selective")
        (heat * torch.linspace(-1, 1, heat.numel(), dtype=heat.dtype).view_as(heat)).sum().backward()
        maps[which] = heat.detach()
        grads[which] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.load_state_dict(state)  # train mode updates running statistics: start both from the same state
    torch.testing.assert_close(maps[backend], maps["reference"], rtol=1e-10, atol=1e-12)
    assert grads[backend].keys() == grads["reference"].keys()
    for n, g in grads["reference"].items():
        torch.testing.assert_close(grads[backend][n], g, rtol=1e-8, atol=1e-10, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_explain_float32_matches_reference(backend):
    model, shape = _models()["every" if backend == "triton" else "resnet"]
    model.eval()
    x = torch.rand(*shape)
    ref = ik.explain(model, x, backend="reference")
    out = ik.explain(model, x, backend=backend)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.resolve(None, torch.device("cpu")) == "torch"
    assert dispatch.resolve("reference", torch.device("cpu")) == "reference"  # an explicit choice wins
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="ISNET_KERNELS_BACKEND"):
        dispatch.resolve(None, torch.device("cpu"))


def test_auto_picks_cpp_on_cpu_when_built(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    expected = "cpp" if dispatch.cpp_status()[0] else "reference"
    assert dispatch.resolve("auto", torch.device("cpu")) == expected
    monkeypatch.setattr(dispatch, "cpp_status", lambda: (False, "not built"))
    assert dispatch.resolve("auto", torch.device("cpu")) == "reference"


def test_unavailable_backend_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(dispatch, "cpp_status", lambda: (False, "the extension is not built"))
    with pytest.raises(ik.BackendUnavailableError, match="not built"):
        dispatch.resolve("cpp", torch.device("cpu"))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ik.BackendUnavailableError, match="'cpp' is not available"):
        ik.explain(model, torch.rand(1, 3, 2, 2), backend="cpp")
    with pytest.raises(ValueError, match="backend must be one of"):
        ik.LRP(model, backend="metal")
    with pytest.raises(ik.BackendUnavailableError, match="'cuda'"):  # not built here, or CPU tensors
        ik.explain(model, torch.rand(1, 3, 2, 2), backend="cuda")
