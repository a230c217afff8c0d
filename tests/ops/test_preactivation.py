"""The epsilon op given its pre-activation by its parts (``ops.Preactivation``: ``z = x0 * scale + shift``) against
the same op given ``z`` built outside it: the same heatmap and the same gradients of every input (float64 and
float32, conv and linear, odd shapes, every backend running the hand-written Function), gradcheck, and what it keeps
for the backward (``x0`` itself, no tensor of ``z``'s size of its own)."""

from __future__ import annotations

import pytest
import torch

from isnet_kernels import ops
from isnet_kernels.backends import dispatch

from ..backend_params import backend_params

CASES = {
    "conv_bn": dict(linear=False, scale=True, shift=True),
    "conv_bias": dict(linear=False, scale=False, shift=True),
    "linear_bias": dict(linear=True, scale=False, shift=True),
    "linear_scaled": dict(linear=True, scale=True, shift=True),
}


def _inputs(case: dict, dtype: torch.dtype, seed: int = 0) -> tuple[dict, ops.Geometry]:
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

    B, M, Ci, Co = 2, 3, 5, 7
    if case["linear"]:
        geom = ops.Geometry(linear=True)
        a, w, x0_shape, view = r(B, Ci), r(Co, Ci), (B, Co), (Co,)
    else:
        geom = ops.Geometry(False, (2, 1), (1, 2), (1, 1), 1)
        a, w = r(B, Ci, 9, 6), r(Co, Ci, 3, 3)
        with torch.no_grad():
            x0_shape = torch.nn.functional.conv2d(a, w, None, (2, 1), (1, 2)).shape
        view = (Co, 1, 1)
    x0 = r(*x0_shape)
    R = r(B, M, *x0_shape[1:])
    scale = r(Co).view(view) if case["scale"] else None
    shift = r(Co).view(view) if case["shift"] else None
    return dict(R=R, a=a, x0=x0, w=w, scale=scale, shift=shift), geom


def _leaves(t: dict) -> list[torch.Tensor]:
    return [v for v in t.values() if v is not None]


def _run(t: dict, geom: ops.Geometry, prims, parts: bool) -> list[torch.Tensor]:
    pre = ops.Preactivation(t["x0"], t["scale"], t["shift"])
    out = ops.epsilon(t["R"], t["a"], pre if parts else pre.value(), t["w"], geom, 1e-2, prims)
    leaves = _leaves(t)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out).cos(), allow_unused=True)
    return [out.detach(), *grads]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", backend_params())
def test_parts_equal_a_prebuilt_z(backend: str, name: str, dtype: torch.dtype) -> None:
    prims = dispatch.primitives(backend)
    t, geom = _inputs(CASES[name], dtype)
    got, want = _run(t, geom, prims, True), _run(t, geom, prims, False)
    ref = _run(t, geom, None, False)  # plain autograd
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for g, w, r in zip(got, want, ref):
        assert g is not None and w is not None
        torch.testing.assert_close(g, w, rtol=0, atol=0)  # the same operations: the same values
        torch.testing.assert_close(g, r, **tol)


@pytest.mark.parametrize("name", list(CASES))
def test_parts_gradcheck(name: str) -> None:
    prims = dispatch.primitives("torch")
    t, geom = _inputs(CASES[name], torch.float64, seed=3)
    keys = [k for k, v in t.items() if v is not None]

    def f(*values: torch.Tensor) -> torch.Tensor:
        d = dict(zip(keys, values))
        d.setdefault("scale", None)
        d.setdefault("shift", None)
        pre = ops.Preactivation(d["x0"], d["scale"], d["shift"])
        return ops.epsilon(d["R"], d["a"], pre, d["w"], geom, 1e-2, prims)

    assert torch.autograd.gradcheck(f, tuple(t[k] for k in keys))


@pytest.mark.parametrize("backend", backend_params())
def test_parts_keep_x0_not_z(backend: str) -> None:
    """Given the parts, the op keeps ``x0`` (the caller's tensor) and no activation-sized tensor of ``z``'s shape
    of its own; given a prebuilt ``z`` it keeps that ``z``."""
    prims = dispatch.primitives(backend)
    t, geom = _inputs(CASES["conv_bn"], torch.float64)

    def saved(parts: bool) -> list[torch.Tensor]:
        kept: list[torch.Tensor] = []
        pre = ops.Preactivation(t["x0"], t["scale"], t["shift"])
        z = pre if parts else pre.value()
        with torch.autograd.graph.saved_tensors_hooks(lambda x: kept.append(x) or x, lambda x: x):
            ops.epsilon(t["R"], t["a"], z, t["w"], geom, 1e-2, prims)
        return [k for k in kept if k.shape == t["x0"].shape]

    storage = t["x0"].untyped_storage().data_ptr()
    with_parts = saved(True)
    assert with_parts and all(k.untyped_storage().data_ptr() == storage for k in with_parts)
    assert any(k.untyped_storage().data_ptr() != storage for k in saved(False))
