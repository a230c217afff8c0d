"""Per-op timings: each relevance op of docs/kernels.md on every backend, at ResNet-18 (64x64, batch 16, M = 1) shapes.

For each op (one shape each, below) and each backend (``reference``: the plain-PyTorch op under autograd;
``torch``: the autograd Function with the hand-written backward on plain-PyTorch primitives; ``cpp``: the same
Function on the compiled kernels, when built; ``triton`` instead of ``cpp`` under ``BENCH_DEVICE=cuda``), two
passes are timed:

* ``forward``: the relevance step alone, ``R_in = op(R, ...)``, under ``torch.no_grad()`` (as in ``explain``);
* ``fwd+bwd``: with every floating input requiring grad (R, a, z, weight, as the op has them), the op, a scalar
  loss ``<R_in, G>`` with a fixed random ``G`` (so the backward's incoming gradient is a dense, fixed tensor), and
  ``torch.autograd.grad`` of it w.r.t. all those inputs (the ISNet training use of the op).

pytest-benchmark group = op and pass, benchmark name = backend, so each table row of ``report.py`` compares the
backends. float32, ``torch.set_num_threads(2)`` (conftest.py). Each benchmark: two warm-up calls, a timed call
to choose ``iterations`` so that a round lasts >= ``BENCH_OP_ROUND_MS`` (default 20 ms), then ``BENCH_OP_ROUNDS``
rounds (default 25); the statistics are per call. The backends of one group run one after the other (load from
other processes then hits them alike, more or less). Environment: ``BENCH_DEVICE``, ``BENCH_OP_BACKENDS``
(default reference,torch + cpp or triton), ``BENCH_OPS`` (comma-separated subset of the op keys below).

Shapes (ResNet-18, torchvision layout, at 64x64, batch 16, one map per image):

* ``conv3x3``: epsilon through a 3x3 conv 64->64, stride 1, at 16x16 (layer1);
* ``conv3x3_s2``: epsilon through a 3x3 conv 128->256, stride 2, 8x8 -> 4x4 (layer3's first conv);
* ``zbox7x7``: Z^B through the 7x7 stride-2 stem conv 3->64, 64x64 -> 32x32, bounds (0, 1);
* ``maxpool``: winner-take-all through the 3x3 stride-2 max-pool on 64 channels, 32x32 -> 16x16;
* ``residual``: the residual split of a 64-channel 16x16 sum (layer1);
* ``adaptive_avgpool``: epsilon through the global average pool, 512 channels, 2x2 -> 1x1.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import bench_common as bc
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from isnet_kernels import ops
from isnet_kernels.backends import dispatch
from isnet_kernels.ops import Geometry

B, M = bc.BATCH, 1
EPS = bc.EPS
ROUNDS = int(os.environ.get("BENCH_OP_ROUNDS", "25"))
ROUND_S = float(os.environ.get("BENCH_OP_ROUND_MS", "20")) / 1e3
PASSES = ("forward", "fwd+bwd")


def _op_backends() -> list[str]:
    env = os.environ.get("BENCH_OP_BACKENDS")
    if env:
        return [b for b in env.split(",") if b]
    return bc.backends(with_torch=True)


BACKENDS = _op_backends()


@dataclass
class Case:
    """One op at one shape: its inputs (``leaves`` get gradients in fwd+bwd), and the call on a backend."""

    key: str
    title: str
    leaves: dict[str, Tensor]  # floating inputs: the ones the fwd+bwd pass differentiates w.r.t.
    call: Callable[[dict[str, Tensor], object], Tensor | tuple[Tensor, ...]]


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _dev(*tensors: Tensor) -> list[Tensor]:
    return [t.to(bc.DEVICE) for t in tensors]


def _conv_case(key: str, title: str, ci: int, co: int, size: int, stride: int) -> Case:
    g = _gen()
    a = torch.randn(B, ci, size, size, generator=g).relu()  # a post-ReLU activation
    w = torch.randn(co, ci, 3, 3, generator=g) * math.sqrt(2.0 / (ci * 9))
    z = F.conv2d(a, w, None, stride, 1)
    R = torch.randn(B, M, *z.shape[1:], generator=g)
    a, w, z, R = _dev(a, w, z, R)
    geom = Geometry(stride=(stride, stride), padding=(1, 1))

    def call(t: dict[str, Tensor], prims: object) -> Tensor:
        return ops.epsilon(t["R"], t["a"], t["z"], t["weight"], geom, EPS, prims)

    return Case(key, title, {"R": R, "a": a, "z": z, "weight": w}, call)


def _zbox_case() -> Case:
    g = _gen()
    a = torch.rand(B, 3, 64, 64, generator=g)
    w = torch.randn(64, 3, 7, 7, generator=g) * math.sqrt(2.0 / (3 * 49))
    z = F.conv2d(a, w, None, 2, 3)
    R = torch.randn(B, M, *z.shape[1:], generator=g)
    a, w, z, R = _dev(a, w, z, R)
    low, high = (torch.tensor(v, device=bc.DEVICE) for v in bc.BOUNDS)
    geom = Geometry(stride=(2, 2), padding=(3, 3))

    def call(t: dict[str, Tensor], prims: object) -> Tensor:
        return ops.zbox(t["R"], t["a"], t["z"], t["weight"], None, low, high, geom, EPS, prims)

    return Case("zbox7x7", "Z^B 7x7/2 3->64, 64x64->32x32", {"R": R, "a": a, "z": z, "weight": w}, call)


def _maxpool_case() -> Case:
    g = _gen()
    a = torch.randn(B, 64, 32, 32, generator=g).relu()
    z, idx = F.max_pool2d(a, 3, 2, 1, return_indices=True)
    R = torch.randn(B, M, *z.shape[1:], generator=g)
    z, idx, R = _dev(z, idx, R)

    def call(t: dict[str, Tensor], prims: object) -> Tensor:
        return ops.maxpool(t["R"], t["z"], idx, (32, 32), EPS, prims)

    return Case("maxpool", "max-pool 3x3/2 64ch, 32x32->16x16", {"R": R, "z": z}, call)


def _residual_case() -> Case:
    g = _gen()
    x = torch.randn(B, 64, 16, 16, generator=g).relu()
    f = torch.randn(B, 64, 16, 16, generator=g)
    R = torch.randn(B, M, 64, 16, 16, generator=g)
    x, f, R = _dev(x, f, R)
    y = x + f

    def call(t: dict[str, Tensor], prims: object) -> tuple[Tensor, Tensor]:
        return ops.residual_split(t["R"], t["x"], t["f"], t["y"], EPS, prims)

    return Case("residual", "residual split 64ch 16x16", {"R": R, "x": x, "f": f, "y": y}, call)


def _adaptive_case() -> Case:
    g = _gen()
    a = torch.randn(B, 512, 2, 2, generator=g).relu()
    z = F.adaptive_avg_pool2d(a, 1)
    R = torch.randn(B, M, 512, 1, 1, generator=g)
    a, z, R = _dev(a, z, R)

    def call(t: dict[str, Tensor], prims: object) -> Tensor:
        return ops.adaptive_avgpool(t["R"], t["a"], t["z"], EPS, prims)

    return Case("adaptive_avgpool", "adaptive avg-pool 512ch, 2x2->1x1", {"R": R, "a": a, "z": z}, call)


CASES: dict[str, Callable[[], Case]] = {
    "conv3x3": lambda: _conv_case("conv3x3", "epsilon conv 3x3 64->64, 16x16", 64, 64, 16, 1),
    "conv3x3_s2": lambda: _conv_case("conv3x3_s2", "epsilon conv 3x3/2 128->256, 8x8->4x4", 128, 256, 8, 2),
    "zbox7x7": _zbox_case,
    "maxpool": _maxpool_case,
    "residual": _residual_case,
    "adaptive_avgpool": _adaptive_case,
}
OP_KEYS = [k for k in os.environ.get("BENCH_OPS", ",".join(CASES)).split(",") if k]
_BUILT: dict[str, Case] = {}


def _case(key: str) -> Case:
    if key not in _BUILT:
        _BUILT[key] = CASES[key]()
    return _BUILT[key]


def _outputs(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def make_runner(case: Case, prims: object, pass_: str) -> Callable[[], object]:
    """The timed function of one op, backend and pass (device work synchronised on CUDA)."""
    if pass_ == "forward":
        inputs = {k: v.detach() for k, v in case.leaves.items()}

        def forward() -> object:
            with torch.no_grad():
                return case.call(inputs, prims)

        return bc.timed(forward)

    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in case.leaves.items()}
    with torch.no_grad():
        shapes = [o.shape for o in _outputs(case.call(leaves, prims))]
    g = _gen()
    grads_out = [torch.randn(s, generator=g).to(bc.DEVICE) for s in shapes]
    order = list(leaves.values())

    def fwd_bwd() -> tuple[Tensor, ...]:
        outs = _outputs(case.call(leaves, prims))
        loss = sum((o * go).sum() for o, go in zip(outs, grads_out))
        return torch.autograd.grad(loss, order)

    return bc.timed(fwd_bwd)


def _check(case: Case, runner: Callable[[], object], backend: str, pass_: str) -> float | None:
    """Largest relative difference of this backend's result from the reference backend's (None for reference)."""
    if backend == "reference":
        return None
    ref = make_runner(case, None, pass_)()
    out = runner()
    ref_t, out_t = _outputs(ref), _outputs(out)
    return max(bc.rel_err(o, r) for o, r in zip(out_t, ref_t))


@pytest.mark.parametrize("backend", BACKENDS)  # the fastest-varying: a group's backends run back to back
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("key", OP_KEYS)
def test_op(benchmark, key: str, backend: str, pass_: str) -> None:
    if not bc.backend_available(backend):
        pytest.skip(f"backend {backend!r} cannot run on {bc.DEVICE}: {dispatch.backend_status().get(backend)}")
    case = _case(key)
    prims = dispatch.primitives(dispatch.resolve(backend, bc.DEVICE))
    runner = make_runner(case, prims, pass_)

    benchmark.group = f"{key} | {pass_}"
    benchmark.name = backend
    benchmark.extra_info.update(suite="ops", op=key, title=case.title, backend=backend, pass_=pass_,
                                batch=B, maps=M, device=str(bc.DEVICE), threads=torch.get_num_threads(),
                                shapes={k: list(v.shape) for k, v in case.leaves.items()})

    runner()
    runner()  # warm-up (oneDNN primitive creation, allocator)
    start = time.perf_counter()
    runner()
    once = time.perf_counter() - start
    iterations = max(1, math.ceil(ROUND_S / max(once, 1e-6)))
    benchmark.pedantic(runner, rounds=ROUNDS, iterations=iterations, warmup_rounds=1)

    err = _check(case, runner, backend, pass_)
    if err is not None:
        benchmark.extra_info["rel_err_vs_reference"] = err
        assert err < 1e-3, f"{key} {pass_} on {backend} differs from the reference: {err:.2e}"
