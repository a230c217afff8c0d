"""The compiled CPU kernels (``isnet_kernels._C``, via :class:`CppPrimitives`) against :class:`TorchPrimitives`.

Tolerances: float64 1e-12 and float32 1e-5 relative to TorchPrimitives at the same precision (with an absolute
floor of that times the output's largest magnitude, for sums over M that cancel); float16 and bfloat16 must be at
most twice as far from the float64 result as TorchPrimitives' own computation at that precision (the
flash-attention criterion). Sizes are odd on purpose: N not a multiple of the vector width nor of the kernels'
512-element blocks, M = 1, 3, 5, B = 1. Outputs are NaN-poisoned (``ISNET_KERNELS_POISON=1``) in every test, so an
element a kernel forgets to write shows as NaN. The numerics run on both kernel sets where the CPU has AVX2: the
AVX2 build and the baseline one (``ISNET_KERNELS_CPU=default``).

The average-pooling kernels (one pass each way) are checked against the autograd reference ops of
``isnet_kernels.ops.pool`` (float64 1e-10, float32 1e-5 relative): values, and gradients with respect to R, a and z.

Without the extension every test here shows as skipped with the reason (CI asserts that it is built before the
tests start); a built extension that fails to load fails here.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels import ops
from isnet_kernels.backends import cpp
from isnet_kernels.ops import pool
from isnet_kernels.ops.fused import FUSED_OPS, FusedReference
from isnet_kernels.ops.primitives import TorchPrimitives

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("isnet_kernels._C") is None,
    reason="the compiled extension isnet_kernels._C is not built (pip install --no-build-isolation -e . with a C++ "
           "compiler)")

TORCH = TorchPrimitives()
LOW = (torch.float16, torch.bfloat16)
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (B, M, N): a single element; one map; 5 maps over 3 blocks with a ragged tail; N just under the vector width
SHAPES = [(1, 1, 1), (2, 3, 37), (1, 5, 1031), (3, 1, 515), (2, 3, 7)]
#: The elementwise ops (those whose record lists map and activation inputs), every one covered by the tests below.
ELEMENTWISE = [op.name for op in FUSED_OPS if op.inputs]
RECORDS = {op.name: op for op in FUSED_OPS}


@pytest.fixture(scope="module")
def kernels() -> cpp.CppPrimitives:
    ok, why = cpp.available()
    assert ok, f"isnet_kernels._C is built but does not load: {why}"
    return cpp.CppPrimitives()


@pytest.fixture(autouse=True)
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs start as NaN, so unwritten elements cannot pass as stale memory."""
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")


@pytest.fixture(params=["best", "default"])
def isa(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kernel set: the best this CPU runs, or the baseline build (ISNET_KERNELS_CPU=default)."""
    from isnet_kernels import _C

    if request.param == "best":
        monkeypatch.delenv("ISNET_KERNELS_CPU", raising=False)
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
        return _C.CPU_CAPABILITY
    if _C.CPU_CAPABILITY == "default":
        pytest.skip("the best kernel set is the baseline one here")
    monkeypatch.setenv("ISNET_KERNELS_CPU", "default")
    return "default"


def _eps(dtype: torch.dtype) -> float:
    """1e-2, or 0.25 in half precision, where eps^2 = 1e-4 (max-pool's dz) is not representable accurately."""
    return 0.25 if dtype in LOW else 1e-2


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64).to(dtype)


def _z(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    """A pre-activation of both signs with exact zeros, where stab(0) = +eps."""
    z = torch.randn(shape, dtype=torch.float64)
    z.view(-1)[::5] = 0.0
    return z.to(dtype)


def _as_tuple(x: object) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _maxpool_backward_ref(G, R, z, indices, eps):
    """TorchPrimitives.maxpool_backward with ``eps * sign(z)`` in z's dtype: TorchPrimitives builds it with
    ``torch.where(z >= 0, eps, -eps)``, which is float32 whatever z's dtype, so its float64 dz carries eps rounded
    to float32 (a 1e-8 relative error) and its half-precision dz comes back as float32."""
    dR, _ = TORCH.maxpool_backward(G, R, z, indices, eps)
    B, M, C, Lo = R.shape
    g = G.gather(3, indices.unsqueeze(1).expand(B, M, C, Lo))
    t = torch.where(z >= 0, z + eps, z - eps)
    sign_eps = torch.where(z >= 0, torch.full_like(z, eps), torch.full_like(z, -eps))
    return dR, (g * R).sum(1) * (sign_eps / (t * t))


def _reference(name: str) -> Callable:
    return _maxpool_backward_ref if name == "maxpool_backward" else getattr(TORCH, name)


def assert_matches(out: object, name: str, inputs: list, dtype: torch.dtype) -> None:
    """The kernel's output(s) ``out`` against TorchPrimitives' ``name`` on ``inputs`` (see the module docstring)."""
    ref = _reference(name)
    outs = _as_tuple(out)
    for i, o in enumerate(outs):
        assert o.dtype == dtype, f"{name}[{i}]: dtype {o.dtype}, expected {dtype}"
        assert o.is_contiguous(), f"{name}[{i}]: not contiguous"
        assert not o.isnan().any(), f"{name}[{i}]: NaN in the output (an element left unwritten?)"
    if dtype in RTOL:
        refs = _as_tuple(ref(*inputs))
        for i, (o, r) in enumerate(zip(outs, refs, strict=True)):
            assert o.shape == r.shape, f"{name}[{i}]: shape {tuple(o.shape)}, expected {tuple(r.shape)}"
            scale = max(r.abs().max().item(), 1e-300)
            torch.testing.assert_close(o, r, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                                       msg=lambda m, i=i: f"{name}[{i}] ({dtype}): {m}")
        return
    as64 = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
    refs64, refs_low = _as_tuple(ref(*as64)), _as_tuple(ref(*inputs))
    for i, (o, r64, rlow) in enumerate(zip(outs, refs64, refs_low, strict=True)):
        assert o.shape == r64.shape, f"{name}[{i}]: shape {tuple(o.shape)}, expected {tuple(r64.shape)}"
        err = (o.double() - r64).abs().max().item()
        torch_err = (rlow.double() - r64).abs().max().item()
        assert err <= 2 * torch_err, (f"{name}[{i}] ({dtype}): max error {err:.3g} against float64, TorchPrimitives' "
                                      f"own {dtype} error {torch_err:.3g}")


def _elementwise_inputs(name: str, B: int, M: int, N: int, dtype: torch.dtype) -> list:
    """The op's tensors by its record, maps (B, M, N) and activations (B, N) with exact zeros (stab(0) = +eps),
    then eps when the op takes one."""
    op = RECORDS[name]
    tensors = [_randn(B, M, N, dtype=dtype) if kind == "m" else _z(B, N, dtype=dtype) for kind in op.inputs]
    takes_eps = "eps" in inspect.signature(getattr(FusedReference, name)).parameters
    return [*tensors, *([_eps(dtype)] if takes_eps else [])]


def _pool_inputs(B: int, M: int, C: int, H: int, W: int, dtype: torch.dtype) -> tuple[list, int]:
    """R (B, M, C, Lo), z and indices (B, C, Lo) of a 3x3 stride-2 max-pool (overlapping windows: indices collide),
    and the input plane's length H * W."""
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    x.view(-1)[::11] = 0.0  # zeros among the winners
    z, indices = F.max_pool2d(x, 3, 2, return_indices=True)
    z, indices = z.flatten(2).to(dtype), indices.flatten(2)
    R = _randn(B, M, C, z.shape[2], dtype=dtype)
    return [R, z, indices], H * W


def _has_collisions(indices: torch.Tensor) -> bool:
    plane = indices[0, 0]
    return plane.unique().numel() < plane.numel()


# ----------------------------------------------------------------------------------------------------------------
# numerics
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(kernels, isa, name: str, shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    inputs = _elementwise_inputs(name, *shape, dtype)
    assert_matches(getattr(kernels, name)(*inputs), name, inputs, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(1, 1, 1, 3, 3), (2, 3, 4, 9, 11), (1, 5, 2, 47, 45)],
                         ids=lambda s: "x".join(map(str, s)))
def test_maxpool(kernels, isa, size: tuple[int, ...], dtype: torch.dtype) -> None:
    (R, z, indices), length = _pool_inputs(*size, dtype)
    if z.shape[2] > 1:
        assert _has_collisions(indices), "the test's windows should overlap"
    eps = _eps(dtype)
    assert_matches(kernels.maxpool_forward(R, z, indices, length, eps), "maxpool_forward",
                   [R, z, indices, length, eps], dtype)
    G = _randn(*R.shape[:3], length, dtype=dtype)
    assert_matches(kernels.maxpool_backward(G, R, z, indices, eps), "maxpool_backward", [G, R, z, indices, eps],
                   dtype)


def test_maxpool_collisions_sum(kernels) -> None:
    """Every output of one plane routed to one input element: the scatter sums them all."""
    R = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    z = torch.rand(2, 4, 6, dtype=torch.float64) + 1.0
    indices = torch.full((2, 4, 6), 5, dtype=torch.int64)
    out = kernels.maxpool_forward(R, z, indices, 7, 0.1)
    expected = (R * (z / (z + 0.1)).unsqueeze(1)).sum(3)
    torch.testing.assert_close(out[..., 5], expected, rtol=1e-12, atol=0)
    assert (out[..., :5] == 0).all() and (out[..., 6] == 0).all()


def test_cpu_capability(kernels) -> None:
    from isnet_kernels import _C

    assert _C.CPU_CAPABILITY in ("avx2", "default")


def test_stab_of_zero_is_plus_eps(kernels) -> None:
    R = torch.ones(1, 2, 3, dtype=torch.float64)
    z = torch.tensor([[0.0, -0.0, 1.0]], dtype=torch.float64)
    s = kernels.stab_divide(R, z, 0.5)
    torch.testing.assert_close(s, torch.tensor([[[2.0, 2.0, 1 / 1.5]] * 2], dtype=torch.float64))


def test_map_shapes_beyond_flat(kernels) -> None:
    """Maps (B, M, *S) and activations (B, *S) of any rank, not only (B, M, N)."""
    R, z = torch.randn(2, 3, 4, 5, 7), _z(2, 4, 5, 7, dtype=torch.float32)
    torch.testing.assert_close(kernels.stab_divide(R, z, 0.1), TORCH.stab_divide(R, z, 0.1))
    G, a, c = torch.randn(2, 3, 4, 5, 7), torch.randn(2, 4, 5, 7), torch.randn(2, 3, 4, 5, 7)
    for o, r in zip(kernels.epsilon_backward_input(G, a, c), TORCH.epsilon_backward_input(G, a, c), strict=True):
        torch.testing.assert_close(o, r)


def test_epsilon_backward_input_without_c(kernels) -> None:
    G, a = torch.randn(2, 3, 10), torch.randn(2, 10)
    U, dA = kernels.epsilon_backward_input(G, a, None)
    assert dA is None
    torch.testing.assert_close(U, G * a.unsqueeze(1))


def test_non_contiguous_inputs(kernels) -> None:
    R = torch.randn(2, 9, 3).transpose(1, 2)  # (2, 3, 9), not contiguous
    z = torch.randn(9, 2).t()
    torch.testing.assert_close(kernels.stab_divide(R, z, 0.1), TORCH.stab_divide(R, z, 0.1))


def test_empty(kernels) -> None:
    dR, dZ = kernels.epsilon_backward_stab(torch.randn(2, 0, 5), torch.randn(2, 0, 5), torch.randn(2, 5), 0.1)
    assert dR.shape == (2, 0, 5) and (dZ == 0).all()
    assert kernels.stab_divide(torch.randn(0, 3, 5), torch.randn(0, 5), 0.1).shape == (0, 3, 5)
    out = kernels.maxpool_forward(torch.randn(1, 2, 3, 0), torch.randn(1, 3, 0), torch.zeros(1, 3, 0, dtype=torch.long),
                                  4, 0.1)
    assert out.shape == (1, 2, 3, 4) and (out == 0).all()


def test_threads_give_identical_results(kernels) -> None:
    """Many blocks and planes over two threads: the same bits as one thread (no reduction crosses a task)."""
    inputs = _elementwise_inputs("residual_backward", 4, 2, 20_000, torch.float32)
    (R, z, indices), length = _pool_inputs(2, 2, 64, 33, 33, torch.float32)
    G = torch.randn(*R.shape[:3], length)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append([*kernels.residual_backward(*inputs), kernels.maxpool_forward(R, z, indices, length, 0.01),
                         *kernels.maxpool_backward(G, R, z, indices, 0.01)])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*runs, strict=True):
        assert torch.equal(one, two)


# ----------------------------------------------------------------------------------------------------------------
# average pooling: one fused kernel each way, against the reference ops of ops.pool
# ----------------------------------------------------------------------------------------------------------------

AVG_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# (B, M, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    (2, 3, 4, 7, 9, 2, 2, 0, False, True, None),
    (1, 1, 3, 7, 9, 2, 2, 1, True, False, None),  # ceil_mode: a last window partly outside
    (2, 3, 2, 9, 7, 3, 1, 1, False, True, None),  # overlapping windows
    (1, 5, 3, 9, 11, 3, 2, 1, True, True, None),
    (2, 1, 2, 11, 8, 3, 3, 1, True, False, None),
    (1, 3, 2, 8, 9, 3, 2, 0, False, True, 5),  # divisor_override
    (2, 2, 3, 5, 7, 3, 3, 0, True, False, 2),
    (1, 2, 2, 9, 6, (3, 2), (2, 1), (1, 0), False, False, None),  # different along H and W
    (1, 2, 2, 31, 37, 3, 1, 1, False, False, None),  # rows longer than a vector
    (2, 3, 2, 5, 7, (5, 7), 1, 0, False, True, None),  # one window, the whole plane (global pooling)
    (1, 2, 3, 3, 3, 2, 2, 0, False, True, None),  # one window, not the whole plane
]
# (B, M, C, H, W, output size): windows that do not divide the input, global pooling, more outputs than inputs
ADAPTIVE_CASES = [
    (2, 3, 4, 7, 7, (3, 3)),
    (1, 1, 3, 5, 5, (2, 2)),
    (2, 2, 2, 7, 5, (3, 2)),
    (1, 3, 4, 7, 7, (1, 1)),
    (2, 1, 2, 9, 4, (4, 3)),
    (1, 2, 2, 3, 4, (5, 7)),
]


def _avg_case_id(case: tuple) -> str:
    return "-".join(str(x).replace(" ", "") for x in case)


def _avg_inputs(B: int, M: int, C: int, H: int, W: int, pool_fn: Callable, dtype: torch.dtype,
                margin: float = 0.0) -> list[torch.Tensor]:
    """R, a, z (the pool of a, in a's dtype, with an exact zero) and G for one pooling."""
    a = torch.randn(B, C, H, W, dtype=torch.float64)
    z = pool_fn(a)
    z = z + margin * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    z.view(-1)[::7] = 0.0  # stab(0) = +eps
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    G = torch.randn(B, M, C, H, W, dtype=torch.float64)
    return [x.to(dtype) for x in (R, a, z, G)]


def _avg_reference(R, a, z, G, ref: Callable) -> tuple[torch.Tensor, ...]:
    """R_in = ref(R, a, z) and, for the incoming gradient G, its gradients with respect to R, z and a."""
    R, a, z = (x.detach().clone().requires_grad_() for x in (R, a, z))
    out = ref(R, a, z)
    dR, dz, da = torch.autograd.grad(out, (R, z, a), G)
    return out.detach(), dR, dz, da


def _assert_avg_matches(outs: tuple, R, a, z, G, ref: Callable, dtype: torch.dtype, what: str) -> None:
    """The kernels' (R_in, dR, dz, da) against the reference's: relative tolerance in float64 and float32; in half
    precision at most twice the reference's own error at that precision, both against float64."""
    names = ("R_in", "dR", "dz", "da")
    for name, o in zip(names, outs, strict=True):
        assert o.dtype == dtype and o.is_contiguous(), f"{what} {name}: {o.dtype}, contiguous {o.is_contiguous()}"
        assert not o.isnan().any(), f"{what} {name}: NaN in the output (an element left unwritten?)"
    if dtype in AVG_RTOL:
        for name, o, r in zip(names, outs, _avg_reference(R, a, z, G, ref), strict=True):
            scale = max(r.abs().max().item(), 1e-300)
            torch.testing.assert_close(o, r, rtol=AVG_RTOL[dtype], atol=AVG_RTOL[dtype] * scale,
                                       msg=lambda m, n=name: f"{what} {n} ({dtype}): {m}")
        return
    refs64 = _avg_reference(R.double(), a.double(), z.double(), G.double(), ref)
    refs_low = _avg_reference(R, a, z, G, ref)
    for name, o, r64, rlow in zip(names, outs, refs64, refs_low, strict=True):
        err = (o.double() - r64).abs().max().item()
        torch_err = (rlow.double() - r64).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * r64.abs().max().item(), (
            f"{what} {name} ({dtype}): max error {err:.3g} against float64, the reference's own {torch_err:.3g}")


def _avg_op_outputs(R, a, z, G, windows: tuple | None, eps: float, compute_da: bool = True) -> tuple:
    if windows is None:
        out = torch.ops.isnet_kernels.adaptive_avgpool_forward(R, a, z, eps)
        return (out, *torch.ops.isnet_kernels.adaptive_avgpool_backward(G, R, a, z, eps, compute_da))
    out = torch.ops.isnet_kernels.avgpool_forward(R, a, z, *windows, eps)
    return (out, *torch.ops.isnet_kernels.avgpool_backward(G, R, a, z, *windows, eps, compute_da))


def _pair(x: int | tuple[int, int]) -> list[int]:
    return [x, x] if isinstance(x, int) else list(x)


def _avg_windows(case: tuple) -> tuple:
    k, s, p, ceil_mode, count_include_pad, divisor = case[5:]
    return (_pair(k), _pair(s), _pair(p), ceil_mode, count_include_pad, divisor)


def _avg_ref(windows: tuple, eps: float) -> Callable:
    return lambda R, a, z: pool.reference_avgpool(R, a, z, *windows, eps=eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", AVG_CASES, ids=_avg_case_id)
def test_avgpool(kernels, isa, case: tuple, dtype: torch.dtype) -> None:
    windows, eps = _avg_windows(case), _eps(dtype)
    R, a, z, G = _avg_inputs(*case[:5], lambda x: F.avg_pool2d(x, *windows), dtype)
    _assert_avg_matches(_avg_op_outputs(R, a, z, G, windows, eps), R, a, z, G, _avg_ref(windows, eps), dtype,
                        f"avgpool {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=_avg_case_id)
def test_adaptive_avgpool(kernels, isa, case: tuple, dtype: torch.dtype) -> None:
    eps = _eps(dtype)
    R, a, z, G = _avg_inputs(*case[:5], lambda x: F.adaptive_avg_pool2d(x, case[5]), dtype)
    _assert_avg_matches(_avg_op_outputs(R, a, z, G, None, eps), R, a, z, G,
                        lambda R, a, z: pool.reference_adaptive_avgpool(R, a, z, eps), dtype, f"adaptive {case}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_avgpool_all_options(kernels, dtype: torch.dtype) -> None:
    """Every combination of kernel 2 and 3, stride 1 to 3, padding 0 and 1, ceil_mode, count_include_pad and
    divisor_override on odd and even planes, B = 1 and M = 3."""
    eps = 0.1
    for H, W in [(7, 9), (6, 5)]:
        for k in (2, 3):
            for stride in (1, 2, 3):
                for padding in (0, 1):
                    for ceil_mode in (False, True):
                        for count_include_pad in (False, True):
                            for divisor in (None, 3):
                                windows = ([k, k], [stride, stride], [padding, padding], ceil_mode,
                                           count_include_pad, divisor)
                                R, a, z, G = _avg_inputs(1, 3, 2, H, W, lambda x, w=windows: F.avg_pool2d(x, *w),
                                                         dtype)
                                _assert_avg_matches(_avg_op_outputs(R, a, z, G, windows, eps), R, a, z, G,
                                                    _avg_ref(windows, eps), dtype, f"avgpool {(H, W, *windows)}")


def test_avgpool_without_da(kernels) -> None:
    """compute_da=False: dR and dz as with it, and an empty da."""
    windows = ([3, 3], [2, 2], [1, 1], True, False, None)
    R, a, z, G = _avg_inputs(2, 3, 2, 9, 7, lambda x: F.avg_pool2d(x, *windows), torch.float64)
    full = _avg_op_outputs(R, a, z, G, windows, 0.1)
    part = _avg_op_outputs(R, a, z, G, windows, 0.1, compute_da=False)
    torch.testing.assert_close(part[:3], full[:3], rtol=0, atol=0)
    assert part[3].shape == (0,)
    for size in [(4, 3), (1, 1)]:
        R, a, z, G = _avg_inputs(2, 3, 2, 9, 7, lambda x, s=size: F.adaptive_avg_pool2d(x, s), torch.float64)
        full = _avg_op_outputs(R, a, z, G, None, 0.1)
        part = _avg_op_outputs(R, a, z, G, None, 0.1, compute_da=False)
        torch.testing.assert_close(part[:3], full[:3], rtol=0, atol=0)
        assert part[3].shape == (0,)


def test_avgpool_no_maps(kernels) -> None:
    """M = 0: no relevance, and dz, da zero (sums over no maps)."""
    windows = ([2, 2], [2, 2], [0, 0], False, True, None)
    R, a, z, G = _avg_inputs(2, 0, 3, 6, 6, lambda x: F.avg_pool2d(x, *windows), torch.float32)
    out, dR, dz, da = _avg_op_outputs(R, a, z, G, windows, 0.1)
    assert out.shape == (2, 0, 3, 6, 6) and dR.shape == (2, 0, 3, 3, 3)
    assert (dz == 0).all() and (da == 0).all()


def test_avgpool_threads_give_identical_results(kernels) -> None:
    """Many planes over two threads: the same bits as one thread (no sum crosses a task)."""
    windows = ([3, 3], [2, 2], [1, 1], False, True, None)
    cases = [(windows, _avg_inputs(3, 2, 64, 17, 15, lambda x: F.avg_pool2d(x, *windows), torch.float32)),
             (None, _avg_inputs(3, 2, 64, 7, 7, lambda x: F.adaptive_avg_pool2d(x, 1), torch.float32))]
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append([o for w, inputs in cases for o in _avg_op_outputs(*inputs, w, 0.01)])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*runs, strict=True):
        assert torch.equal(one, two)


# The autograd Function on the cpp kernels: ops.avgpool / adaptive_avgpool / mean with CppPrimitives.

POOL_FUNCTIONS = {
    "avg": (lambda a: F.avg_pool2d(a, 3, 2, 1),
            lambda R, a, z, p: ops.avgpool(R, a, z, (3, 3), (2, 2), (1, 1), eps=0.1, prims=p)),
    "avg_ceil_nopad_divisor": (
        lambda a: F.avg_pool2d(a, 2, 2, 1, True, False, 3),
        lambda R, a, z, p: ops.avgpool(R, a, z, (2,), (), (1,), True, False, 3, eps=0.1, prims=p)),
    "adaptive": (lambda a: F.adaptive_avg_pool2d(a, (3, 2)),
                 lambda R, a, z, p: ops.adaptive_avgpool(R, a, z, eps=0.1, prims=p)),
    "global": (lambda a: F.adaptive_avg_pool2d(a, 1), lambda R, a, z, p: ops.adaptive_avgpool(R, a, z, 0.1, p)),
    "mean": (lambda a: a.mean((2, 3)), lambda R, a, z, p: ops.mean(R, a, z, (2, 3), 0.1, p)),
    "mean_keepdim": (lambda a: a.mean((2, 3), keepdim=True), lambda R, a, z, p: ops.mean(R, a, z, (3, 2), 0.1, p)),
    "mean_channels": (lambda a: a.mean((1, 2, 3)), lambda R, a, z, p: ops.mean(R, a, z, (1, 2, 3), 0.1, p)),
    "mean_height": (lambda a: a.mean(2), lambda R, a, z, p: ops.mean(R, a, z, (2,), 0.1, p)),  # not fused
}


@pytest.mark.parametrize("name", list(POOL_FUNCTIONS))
def test_pool_function_gradcheck(kernels, name: str) -> None:
    """The cpp-backed Function: values of the reference, gradcheck of its backward (float64), the fused path used
    where it applies, and no gradient for an input that does not need one."""
    pool_fn, fn = POOL_FUNCTIONS[name]
    a = torch.rand(2, 3, 7, 5, dtype=torch.float64) + 0.1
    z = pool_fn(a)
    z = z + 0.3 * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64)
    torch.testing.assert_close(fn(R, a, z, kernels), fn(R, a, z, None), rtol=1e-10, atol=1e-12)
    inputs = [t.clone().requires_grad_() for t in (R, a, z)]
    expected = "LinearPoolFunctionBackward" if name == "mean_height" else "AvgPoolFunctionBackward"
    assert expected in _graph_nodes(fn(*inputs, kernels))
    assert torch.autograd.gradcheck(lambda R, a, z: fn(R, a, z, kernels), inputs)
    frozen = [inputs[0], inputs[1].detach(), inputs[2]]
    grads = torch.autograd.grad(fn(*frozen, kernels).sum(), [frozen[0], frozen[2]])
    ref = torch.autograd.grad(fn(*frozen, None).sum(), [frozen[0], frozen[2]])
    torch.testing.assert_close(grads, ref, rtol=1e-10, atol=1e-12)


def _graph_nodes(out: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind ``out``."""
    names, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo.extend(next_fn for next_fn, _ in node.next_functions)
    return names


# ----------------------------------------------------------------------------------------------------------------
# registration: schemas, fake kernels, torch.compile
# ----------------------------------------------------------------------------------------------------------------


def _opcheck_inputs(name: str, dtype: torch.dtype) -> list:
    if "avgpool" in name:
        windows = ([3, 3], [2, 2], [1, 1], True, False, None)
        adaptive = name.startswith("adaptive")
        pool_fn = (lambda x: F.adaptive_avg_pool2d(x, (3, 2))) if adaptive else (lambda x: F.avg_pool2d(x, *windows))
        R, a, z, G = _avg_inputs(2, 3, 2, 7, 5, pool_fn, dtype)
        args = [] if adaptive else list(windows)
        if name.endswith("forward"):
            return [R, a, z, *args, 0.1]
        return [G, R, a, z, *args, 0.1, True]
    if name.startswith("maxpool"):
        (R, z, indices), length = _pool_inputs(2, 3, 2, 7, 5, dtype)
        if name == "maxpool_forward":
            return [R, z, indices, length, 0.1]
        return [_randn(*R.shape[:3], length, dtype=dtype), R, z, indices, 0.1]
    return _elementwise_inputs(name, 2, 3, 5, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", cpp.OPS)
def test_opcheck(kernels, name: str, dtype: torch.dtype) -> None:
    torch.library.opcheck(getattr(torch.ops.isnet_kernels, name).default, _opcheck_inputs(name, dtype))


def test_compiles_without_graph_breaks(kernels) -> None:
    def f(R, z, a):
        return kernels.mul_activation(kernels.stab_divide(R, z, 0.1) * 2, a)

    R, z, a = torch.randn(2, 3, 10), torch.randn(2, 10), torch.randn(2, 10)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(R, z, a), f(R, z, a))


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------


def test_wrong_activation_shape(kernels) -> None:
    with pytest.raises(RuntimeError, match=r"stab_divide: z must have shape \(B, \*S\) = \[2, 5\].*got \[2, 6\]"):
        kernels.stab_divide(torch.randn(2, 3, 5), torch.randn(2, 6), 0.1)


def test_wrong_map_shape(kernels) -> None:
    with pytest.raises(RuntimeError, match="epsilon_backward_stab: s must have the shape of V"):
        kernels.epsilon_backward_stab(torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.randn(2, 5), 0.1)
    with pytest.raises(RuntimeError, match=r"stab_divide: R must have shape \(B, M, \*S\)"):
        torch.ops.isnet_kernels.stab_divide(torch.randn(5), torch.randn(5), 0.1)


def test_wrong_dtype(kernels) -> None:
    with pytest.raises(RuntimeError, match="mul_activation: a must have dtype Float .*got Double"):
        kernels.mul_activation(torch.randn(2, 3, 5), torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="mul_activation: c must be float, double, half or bfloat16"):
        kernels.mul_activation(torch.ones(2, 3, 5, dtype=torch.int32), torch.ones(2, 5, dtype=torch.int32))


def test_not_contiguous_raw_op(kernels) -> None:
    with pytest.raises(RuntimeError, match="stab_divide: R must be contiguous"):
        torch.ops.isnet_kernels.stab_divide(torch.randn(2, 5, 3).transpose(1, 2), torch.randn(2, 5), 0.1)


def test_maxpool_errors(kernels) -> None:
    (R, z, indices), length = _pool_inputs(1, 2, 3, 7, 7, torch.float32)
    with pytest.raises(RuntimeError, match="maxpool_forward: indices must be a contiguous int64"):
        kernels.maxpool_forward(R, z, indices.int(), length, 0.1)
    with pytest.raises(RuntimeError, match=r"maxpool_forward: indices must lie in \[0, length = 10\)"):
        kernels.maxpool_forward(R, z, indices, 10, 0.1)
    with pytest.raises(RuntimeError, match=r"maxpool_backward: z must have shape \(B, C, Lo\)"):
        kernels.maxpool_backward(torch.randn(1, 2, 3, length), R, z[:, :2], indices[:, :2], 0.1)
    with pytest.raises(RuntimeError, match=r"maxpool_backward: G must have shape \(B, M, C, length\)"):
        kernels.maxpool_backward(torch.randn(1, 1, 3, length), R, z, indices, 0.1)


def test_avgpool_errors(kernels) -> None:
    windows = ([3, 3], [2, 2], [1, 1], False, True, None)
    R, a, z, G = _avg_inputs(1, 2, 3, 8, 8, lambda x: F.avg_pool2d(x, *windows), torch.float32)
    with pytest.raises(RuntimeError, match=r"avgpool_forward: z must have avg_pool2d's output size \[5, 5\]"):
        torch.ops.isnet_kernels.avgpool_forward(R, a, z, [3, 3], [2, 2], [1, 1], True, True, None, 0.1)
    with pytest.raises(RuntimeError, match="avgpool_forward: expected kernel_size > 0, stride > 0 and 0 <= padding"):
        torch.ops.isnet_kernels.avgpool_forward(R, a, z, [3, 3], [2, 2], [2, 2], False, True, None, 0.1)
    with pytest.raises(RuntimeError, match="avgpool_forward: divisor_override must be non-zero"):
        torch.ops.isnet_kernels.avgpool_forward(R, a, z, *windows[:5], 0, 0.1)
    with pytest.raises(RuntimeError, match=r"avgpool_backward: G must have shape \(B, M, C, H, W\)"):
        torch.ops.isnet_kernels.avgpool_backward(G[:, :1], R, a, z, *windows, 0.1, True)
    with pytest.raises(RuntimeError, match=r"adaptive_avgpool_forward: z must have shape \(B, C, Ho, Wo\)"):
        torch.ops.isnet_kernels.adaptive_avgpool_forward(R, a, z[:, :2], 0.1)
    with pytest.raises(RuntimeError, match="adaptive_avgpool_forward: a must have dtype Float"):
        torch.ops.isnet_kernels.adaptive_avgpool_forward(R, a.double(), z, 0.1)


def test_unavailable_reason_says_how_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_extension(name, globals=None, locals=None, fromlist=(), level=0):
        if fromlist and "_C" in fromlist and globals and globals.get("__name__") == "isnet_kernels.backends.cpp":
            raise ModuleNotFoundError("No module named 'isnet_kernels._C'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_extension)
    ok, why = cpp._load()
    assert not ok
    assert "isnet_kernels._C is not built" in why and "pip install --no-build-isolation -e ." in why
