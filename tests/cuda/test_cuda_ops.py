"""The CUDA kernels (``isnet_kernels._C_cuda``, through :class:`~isnet_kernels.backends.cuda.CudaPrimitives`) on a CUDA
device: every operator against :class:`TorchPrimitives` on the same device and against the CPU kernels, the
registration (``torch.library.opcheck`` on CUDA tensors), the autograd Functions on them (gradcheck), streams,
devices and the edges of the launch (grid-stride wrap-around, unaligned buffers, empty tensors).

Tolerances as tests/cpp: float64 1e-12 and float32 1e-5 relative to TorchPrimitives at the same precision (with an
absolute floor of that times the output's largest magnitude); float16 and bfloat16 at most twice as far from the
float64 result as TorchPrimitives' own computation at that precision. Against the CPU kernels (the same per-element
functions, csrc/common/relevance_math.h) float64 agrees to 1e-13. Outputs are NaN-poisoned
(``ISNET_KERNELS_POISON=1``) in every test. Each elementwise op runs packed (16-byte accesses) and unpacked
(buffers offset by one element).

Every test is skipped, with the reason, where the cuda backend cannot run: no CUDA build of torch, the extension
not built, or no CUDA device. They run in ``make gpu-check``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels import ops
from isnet_kernels.backends import cpp, cuda
from isnet_kernels.ops import pool
from isnet_kernels.ops.fused import FUSED_OPS, FusedReference
from isnet_kernels.ops.primitives import TorchPrimitives

DEVICE = "cuda"
TORCH = TorchPrimitives()
LOW = (torch.float16, torch.bfloat16)
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (B, M, N): one element; N a multiple of every pack width (packed path); ragged N; M = 1; many maps
SHAPES = [(1, 1, 1), (2, 3, 64), (2, 3, 37), (1, 5, 1032), (3, 1, 515), (2, 7, 8)]
#: The elementwise ops (those whose record lists map and activation inputs), every one covered by the tests below.
ELEMENTWISE = [op.name for op in FUSED_OPS if op.inputs]
RECORDS = {op.name: op for op in FUSED_OPS}


@pytest.fixture(scope="module")
def prims() -> cuda.CudaPrimitives:
    ok, why = cuda.available()
    if not ok:
        pytest.skip(f"the cuda backend cannot run here: {why}")
    return cuda.CudaPrimitives()


@pytest.fixture(autouse=True)
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs start as NaN, so unwritten elements cannot pass as stale memory."""
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")


def _eps(dtype: torch.dtype) -> float:
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


def _on(x: object, device: str, unaligned: bool = False) -> object:
    """``x`` on ``device``; with ``unaligned``, a contiguous copy whose data starts one element into its storage
    (so no 16-byte access is aligned and the kernels take their unpacked path)."""
    if not isinstance(x, torch.Tensor):
        return x
    if not unaligned or not x.is_floating_point():
        return x.to(device)
    buffer = torch.empty(x.numel() + 1, dtype=x.dtype, device=device)
    out = buffer[1:].view(x.shape)
    out.copy_(x)
    return out


def _maxpool_backward_ref(G, R, z, indices, eps):
    """TorchPrimitives.maxpool_backward with ``eps * sign(z)`` in z's dtype (TorchPrimitives builds it in float32)."""
    dR, _ = TORCH.maxpool_backward(G, R, z, indices, eps)
    B, M, C, Lo = R.shape
    g = G.gather(3, indices.unsqueeze(1).expand(B, M, C, Lo))
    t = torch.where(z >= 0, z + eps, z - eps)
    sign_eps = torch.where(z >= 0, torch.full_like(z, eps), torch.full_like(z, -eps))
    return dR, (g * R).sum(1) * (sign_eps / (t * t))


def _reference(name: str) -> Callable:
    return _maxpool_backward_ref if name == "maxpool_backward" else getattr(TORCH, name)


def assert_matches(out: object, name: str, inputs: list, dtype: torch.dtype) -> None:
    """The kernel's output(s) against TorchPrimitives' ``name`` on the same (device) ``inputs``."""
    ref = _reference(name)
    outs = _as_tuple(out)
    for i, o in enumerate(outs):
        assert o.device.type == DEVICE, f"{name}[{i}]: on {o.device}"
        assert o.dtype == dtype and o.is_contiguous(), f"{name}[{i}]: {o.dtype}, contiguous {o.is_contiguous()}"
        assert not o.isnan().any(), f"{name}[{i}]: NaN in the output (an element left unwritten?)"
    if dtype in RTOL:
        for i, (o, r) in enumerate(zip(outs, _as_tuple(ref(*inputs)), strict=True)):
            scale = max(r.abs().max().item(), 1e-300) if r.numel() else 1.0
            torch.testing.assert_close(o, r, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                                       msg=lambda m, i=i: f"{name}[{i}] ({dtype}): {m}")
        return
    as64 = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
    for i, (o, r64, rlow) in enumerate(zip(outs, _as_tuple(ref(*as64)), _as_tuple(ref(*inputs)), strict=True)):
        err = (o.double() - r64).abs().max().item()
        torch_err = (rlow.double() - r64).abs().max().item()
        assert err <= 2 * torch_err, f"{name}[{i}] ({dtype}): error {err:.3g}, TorchPrimitives' own {torch_err:.3g}"


def assert_same_as_cpu(out: object, name: str, cpu_inputs: list) -> None:
    """float64: the CUDA kernel's output(s) against the CPU kernel's on the same values (the same maths)."""
    ref = getattr(cpp.CppPrimitives(), name)(*cpu_inputs)
    for i, (o, r) in enumerate(zip(_as_tuple(out), _as_tuple(ref), strict=True)):
        scale = max(r.abs().max().item(), 1e-300) if r.numel() else 1.0
        torch.testing.assert_close(o.cpu(), r, rtol=1e-13, atol=1e-13 * scale,
                                   msg=lambda m, i=i: f"{name}[{i}] CUDA vs CPU: {m}")


def _elementwise_inputs(name: str, B: int, M: int, N: int, dtype: torch.dtype) -> list:
    """The op's tensors by its record, maps (B, M, N) and activations (B, N) with exact zeros (stab(0) = +eps),
    then eps when the op takes one."""
    op = RECORDS[name]
    tensors = [_randn(B, M, N, dtype=dtype) if kind == "m" else _z(B, N, dtype=dtype) for kind in op.inputs]
    takes_eps = "eps" in inspect.signature(getattr(FusedReference, name)).parameters
    return [*tensors, *([_eps(dtype)] if takes_eps else [])]


def _pool_inputs(B: int, M: int, C: int, H: int, W: int, dtype: torch.dtype) -> tuple[list, int]:
    """R (B, M, C, Lo), z and indices (B, C, Lo) of a 3x3 stride-2 max-pool (overlapping: indices collide)."""
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    x.view(-1)[::11] = 0.0
    z, indices = F.max_pool2d(x, 3, 2, return_indices=True)
    z, indices = z.flatten(2).to(dtype), indices.flatten(2)
    return [_randn(B, M, C, z.shape[2], dtype=dtype), z, indices], H * W


# ---- elementwise -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unaligned", [False, True], ids=["packed", "unaligned"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise(prims, name: str, shape: tuple[int, int, int], dtype: torch.dtype, unaligned: bool) -> None:
    cpu_inputs = _elementwise_inputs(name, *shape, dtype)
    inputs = [_on(x, DEVICE, unaligned) for x in cpu_inputs]
    out = getattr(prims, name)(*inputs)
    assert_matches(out, name, inputs, dtype)
    if dtype == torch.float64:
        assert_same_as_cpu(out, name, cpu_inputs)


def test_grid_stride_wraps_around(prims) -> None:
    """More groups than one launch has threads (65535 blocks x 256, unpacked), and more images than the grid's
    y extent (65535): every element written, every value right."""
    R, z = _randn(1, 1, 65535 * 256 + 1000, dtype=torch.float32), _z(1, 65535 * 256 + 1000, dtype=torch.float32)
    R, z = _on(R, DEVICE, unaligned=True), _on(z, DEVICE, unaligned=True)
    assert_matches(prims.stab_divide(R, z, 0.01), "stab_divide", [R, z, 0.01], torch.float32)
    G, a, c = (_on(_randn(*s, dtype=torch.float32), DEVICE) for s in [(70_000, 2, 3), (70_000, 3), (70_000, 2, 3)])
    assert_matches(prims.epsilon_backward_input(G, a, c), "epsilon_backward_input", [G, a, c], torch.float32)


def test_empty_and_no_maps(prims) -> None:
    V, s, z = (torch.randn(2, 0, 5, device=DEVICE), torch.randn(2, 0, 5, device=DEVICE),
               torch.randn(2, 5, device=DEVICE))
    dR, dZ = prims.epsilon_backward_stab(V, s, z, 0.1)
    assert dR.shape == (2, 0, 5) and (dZ == 0).all()
    Gx = torch.randn(3, 0, 4, device=DEVICE)
    x = torch.randn(3, 4, device=DEVICE)
    for d in prims.residual_backward(Gx, Gx, Gx, x, x, x, 0.1)[1:]:
        assert (d == 0).all()
    assert prims.stab_divide(torch.randn(0, 3, 5, device=DEVICE), torch.randn(0, 5, device=DEVICE), 0.1).shape == (
        0, 3, 5)
    U, dA = prims.epsilon_backward_input(torch.randn(2, 0, 5, device=DEVICE), z, torch.randn(2, 0, 5, device=DEVICE))
    assert U.shape == (2, 0, 5) and (dA == 0).all()


# ---- max-pool ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(1, 1, 1, 3, 3), (2, 3, 4, 9, 11), (1, 5, 2, 47, 45)],
                         ids=lambda s: "x".join(map(str, s)))
def test_maxpool(prims, size: tuple[int, ...], dtype: torch.dtype) -> None:
    (R, z, indices), length = _pool_inputs(*size, dtype)
    G = _randn(*R.shape[:3], length, dtype=dtype)
    eps = _eps(dtype)
    fwd_cpu, bwd_cpu = [R, z, indices, length, eps], [G, R, z, indices, eps]
    fwd, bwd = [_on(x, DEVICE) for x in fwd_cpu], [_on(x, DEVICE) for x in bwd_cpu]
    out = prims.maxpool_forward(*fwd)
    grads = prims.maxpool_backward(*bwd)
    assert_matches(out, "maxpool_forward", fwd, dtype)
    assert_matches(grads, "maxpool_backward", bwd, dtype)
    if dtype == torch.float64:
        assert_same_as_cpu(out, "maxpool_forward", fwd_cpu)
        assert_same_as_cpu(grads, "maxpool_backward", bwd_cpu)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_maxpool_collisions_sum(prims, dtype: torch.dtype) -> None:
    """Every window of a plane routed to one input element: the atomic scatter sums them all (in float for half)."""
    R = torch.rand(2, 3, 4, 6, dtype=torch.float64)
    z = torch.rand(2, 4, 6, dtype=torch.float64) + 1.0
    indices = torch.full((2, 4, 6), 5, dtype=torch.int64)
    out = prims.maxpool_forward(R.to(DEVICE, dtype), z.to(DEVICE, dtype), indices.to(DEVICE), 7, 0.1)
    expected = (R.to(dtype).double() * (z.to(dtype).double() / (z.to(dtype).double() + 0.1)).unsqueeze(1)).sum(3)
    tol = 1e-12 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(out[..., 5].double().cpu(), expected, rtol=tol, atol=0)
    assert (out[..., :5] == 0).all() and (out[..., 6] == 0).all()


def test_maxpool_indices_out_of_range_are_dropped(prims) -> None:
    """On the GPU an index outside [0, length) is never dereferenced: its share is dropped, the rest is right."""
    (R, z, indices), length = _pool_inputs(1, 2, 3, 7, 7, torch.float32)
    bad = indices.clone()
    bad[0, 0, 0] = length + 100
    bad[0, 1, 1] = -3
    out = prims.maxpool_forward(R.to(DEVICE), z.to(DEVICE), bad.to(DEVICE), length, 0.1)
    keep = torch.ones_like(R)
    keep[0, :, 0, 0] = 0
    keep[0, :, 1, 1] = 0
    expected = TORCH.maxpool_forward(R * keep, z, indices, length, 0.1)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)


# ---- average pooling ------------------------------------------------------------------------------------------------

AVG_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# (B, M, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    (2, 3, 4, 7, 9, 2, 2, 0, False, True, None),
    (1, 1, 3, 7, 9, 2, 2, 1, True, False, None),
    (2, 3, 2, 9, 7, 3, 1, 1, False, True, None),
    (1, 3, 2, 8, 9, 3, 2, 0, False, True, 5),
    (1, 2, 2, 9, 6, (3, 2), (2, 1), (1, 0), False, False, None),
    (2, 3, 2, 5, 7, (5, 7), 1, 0, False, True, None),
]
ADAPTIVE_CASES = [(2, 3, 4, 7, 7, (3, 3)), (2, 2, 2, 7, 5, (3, 2)), (1, 3, 4, 7, 7, (1, 1)), (1, 2, 2, 3, 4, (5, 7))]


def _pair(x: int | tuple[int, int]) -> list[int]:
    return [x, x] if isinstance(x, int) else list(x)


def _avg_inputs(B: int, M: int, C: int, H: int, W: int, pool_fn: Callable, dtype: torch.dtype) -> list:
    a = torch.randn(B, C, H, W, dtype=torch.float64)
    z = pool_fn(a)
    z.view(-1)[::7] = 0.0
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    G = torch.randn(B, M, C, H, W, dtype=torch.float64)
    return [x.to(DEVICE, dtype) for x in (R, a, z, G)]


def _avg_outputs(R, a, z, G, windows: tuple | None, eps: float, compute_da: bool = True) -> tuple:
    if windows is None:
        out = torch.ops.isnet_kernels.adaptive_avgpool_forward(R, a, z, eps)
        return (out, *torch.ops.isnet_kernels.adaptive_avgpool_backward(G, R, a, z, eps, compute_da))
    out = torch.ops.isnet_kernels.avgpool_forward(R, a, z, *windows, eps)
    return (out, *torch.ops.isnet_kernels.avgpool_backward(G, R, a, z, *windows, eps, compute_da))


def _avg_reference(R, a, z, G, ref: Callable) -> tuple:
    R, a, z = (x.detach().clone().requires_grad_() for x in (R, a, z))
    out = ref(R, a, z)
    return (out.detach(), *torch.autograd.grad(out, (R, z, a), G))


def _assert_avg(outs: tuple, R, a, z, G, ref: Callable, dtype: torch.dtype, what: str) -> None:
    names = ("R_in", "dR", "dz", "da")
    for name, o in zip(names, outs, strict=True):
        assert o.device.type == DEVICE and o.dtype == dtype and not o.isnan().any(), f"{what} {name}"
    if dtype in AVG_RTOL:
        for name, o, r in zip(names, outs, _avg_reference(R, a, z, G, ref), strict=True):
            scale = max(r.abs().max().item(), 1e-300)
            torch.testing.assert_close(o, r, rtol=AVG_RTOL[dtype], atol=AVG_RTOL[dtype] * scale,
                                       msg=lambda m, n=name: f"{what} {n} ({dtype}): {m}")
        return
    refs64 = _avg_reference(R.double(), a.double(), z.double(), G.double(), ref)
    for name, o, r64, rlow in zip(names, outs, refs64, _avg_reference(R, a, z, G, ref), strict=True):
        err, torch_err = (o.double() - r64).abs().max().item(), (rlow.double() - r64).abs().max().item()
        assert err <= 2 * torch_err + 1e-6 * r64.abs().max().item(), f"{what} {name} ({dtype}): {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", AVG_CASES, ids=lambda c: "-".join(str(x).replace(" ", "") for x in c))
def test_avgpool(prims, case: tuple, dtype: torch.dtype) -> None:
    k, s, p, ceil_mode, count_include_pad, divisor = case[5:]
    windows, eps = (_pair(k), _pair(s), _pair(p), ceil_mode, count_include_pad, divisor), _eps(dtype)
    R, a, z, G = _avg_inputs(*case[:5], lambda x: F.avg_pool2d(x, *windows), dtype)
    _assert_avg(_avg_outputs(R, a, z, G, windows, eps), R, a, z, G,
                lambda R, a, z: pool.reference_avgpool(R, a, z, *windows, eps=eps), dtype, f"avgpool {case}")
    if dtype == torch.float64:  # against the CPU kernels
        cpu = _avg_outputs(*(x.cpu() for x in (R, a, z, G)), windows, eps)
        for o, r in zip(_avg_outputs(R, a, z, G, windows, eps), cpu, strict=True):
            torch.testing.assert_close(o.cpu(), r, rtol=1e-12, atol=1e-12 * max(r.abs().max().item(), 1e-300))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=lambda c: "-".join(str(x).replace(" ", "") for x in c))
def test_adaptive_avgpool(prims, case: tuple, dtype: torch.dtype) -> None:
    eps = _eps(dtype)
    R, a, z, G = _avg_inputs(*case[:5], lambda x: F.adaptive_avg_pool2d(x, case[5]), dtype)
    _assert_avg(_avg_outputs(R, a, z, G, None, eps), R, a, z, G,
                lambda R, a, z: pool.reference_adaptive_avgpool(R, a, z, eps), dtype, f"adaptive {case}")


def test_avgpool_without_da_and_no_maps(prims) -> None:
    windows = ([3, 3], [2, 2], [1, 1], True, False, None)
    R, a, z, G = _avg_inputs(2, 3, 2, 9, 7, lambda x: F.avg_pool2d(x, *windows), torch.float64)
    full = _avg_outputs(R, a, z, G, windows, 0.1)
    part = _avg_outputs(R, a, z, G, windows, 0.1, compute_da=False)
    torch.testing.assert_close(part[:3], full[:3], rtol=0, atol=0)
    assert part[3].shape == (0,)
    R, a, z, G = _avg_inputs(2, 0, 3, 6, 6, lambda x: F.avg_pool2d(x, 2, 2), torch.float32)
    out, dR, dz, da = _avg_outputs(R, a, z, G, ([2, 2], [2, 2], [0, 0], False, True, None), 0.1)
    assert out.shape == (2, 0, 3, 6, 6) and dR.shape == (2, 0, 3, 3, 3) and (dz == 0).all() and (da == 0).all()


# ---- registration, autograd, streams, devices, errors ----------------------------------------------------------------


def _opcheck_inputs(name: str, dtype: torch.dtype) -> list:
    if "avgpool" in name:
        windows = ([3, 3], [2, 2], [1, 1], True, False, None)
        adaptive = name.startswith("adaptive")
        pool_fn = (lambda x: F.adaptive_avg_pool2d(x, (3, 2))) if adaptive else (lambda x: F.avg_pool2d(x, *windows))
        R, a, z, G = _avg_inputs(2, 3, 2, 7, 5, pool_fn, dtype)
        args = [] if adaptive else list(windows)
        return [R, a, z, *args, 0.1] if name.endswith("forward") else [G, R, a, z, *args, 0.1, True]
    if name.startswith("maxpool"):
        (R, z, indices), length = _pool_inputs(2, 3, 2, 7, 5, dtype)
        inputs = [R, z, indices, length, 0.1] if name == "maxpool_forward" else [
            _randn(*R.shape[:3], length, dtype=dtype), R, z, indices, 0.1]
        return [_on(x, DEVICE) for x in inputs]
    return [_on(x, DEVICE) for x in _elementwise_inputs(name, 2, 3, 8, dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", cuda.OPS)
def test_opcheck(prims, name: str, dtype: torch.dtype) -> None:
    torch.library.opcheck(getattr(torch.ops.isnet_kernels, name).default, _opcheck_inputs(name, dtype))


def _away(t: torch.Tensor) -> torch.Tensor:
    return t + 0.3 * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


# Each case: inputs, and the op on them as a function of the primitives (None: the autograd reference).
def _maxpool_case():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=DEVICE)
    z, idx = F.max_pool2d(x, 3, 2, return_indices=True)
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64, device=DEVICE)
    return (lambda p: lambda R, z: ops.maxpool(R, z, idx, (7, 6), 0.1, p)), [R, _away(z)]


def _avgpool_case():
    a = torch.rand(2, 3, 7, 5, dtype=torch.float64, device=DEVICE) + 0.1
    z = _away(F.avg_pool2d(a, 3, 2, 1))
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64, device=DEVICE)
    return (lambda p: lambda R, a, z: ops.avgpool(R, a, z, (3, 3), (2, 2), (1, 1), eps=0.1, prims=p)), [R, a, z]


def _residual_case():
    x, f = (torch.randn(2, 3, 4, 5, dtype=torch.float64, device=DEVICE) for _ in range(2))
    R = torch.randn(2, 2, 3, 4, 5, dtype=torch.float64, device=DEVICE)
    return (lambda p: lambda R, x, f, y: ops.residual_split(R, x, f, y, 0.1, p)), [R, x, f, _away(x + f)]


def _conv_case():
    geom = ops.Geometry(False, (2, 2), (1, 1), (1, 1), 1)
    a = torch.rand(2, 3, 7, 6, dtype=torch.float64, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=DEVICE)
    z = _away(F.conv2d(a, w, None, 2, 1))
    R = torch.randn(2, 2, *z.shape[1:], dtype=torch.float64, device=DEVICE)
    return (lambda p: lambda R, a, z, w: ops.epsilon(R, a, z, w, geom, 0.1, p)), [R, a, z, w]


FUNCTIONS = {"maxpool": _maxpool_case, "avgpool": _avgpool_case, "residual": _residual_case, "conv_epsilon": _conv_case}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_functions_on_cuda_kernels(prims, name: str) -> None:
    """The autograd Functions with hand-written backwards on the CUDA kernels (cuDNN for the convolution): the
    reference's values, and gradcheck of the backward (float64)."""
    op, inputs = FUNCTIONS[name]()
    fn = op(prims)
    for o, r in zip(_as_tuple(fn(*inputs)), _as_tuple(op(None)(*inputs)), strict=True):
        assert o.device.type == DEVICE
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(fn, [t.detach().clone().requires_grad_() for t in inputs])


def test_side_stream(prims) -> None:
    """Kernels run on the current stream: issued on a side stream after a producer on that stream, the result is
    right once the stream has finished."""
    stream = torch.cuda.Stream()
    R0, z0 = _randn(4, 3, 4096, dtype=torch.float32), _z(4, 4096, dtype=torch.float32)
    with torch.cuda.stream(stream):
        R, z = R0.to(DEVICE, non_blocking=True) * 2.0, z0.to(DEVICE, non_blocking=True)
        s = prims.stab_divide(R, z, 0.01)
    stream.synchronize()
    torch.testing.assert_close(s.cpu(), TORCH.stab_divide(R0 * 2.0, z0, 0.01), rtol=1e-5, atol=1e-6)


def test_device_guard(prims) -> None:
    """Tensors on a device other than the current one: the kernels run there (a device guard)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    R, z = _randn(2, 3, 100, dtype=torch.float32), _z(2, 100, dtype=torch.float32)
    with torch.cuda.device(0):
        s = prims.stab_divide(R.to("cuda:1"), z.to("cuda:1"), 0.01)
    assert s.device == torch.device("cuda:1")
    torch.testing.assert_close(s.cpu(), TORCH.stab_divide(R, z, 0.01), rtol=1e-5, atol=1e-6)


def test_errors(prims) -> None:
    R = torch.randn(2, 3, 5, device=DEVICE)
    with pytest.raises(RuntimeError, match="stab_divide: z must be a CUDA tensor, got cpu"):
        torch.ops.isnet_kernels.stab_divide(R, torch.randn(2, 5), 0.1)
    with pytest.raises(RuntimeError, match=r"stab_divide: z must have shape \(B, \*S\) = \[2, 5\]"):
        prims.stab_divide(R, torch.randn(2, 6, device=DEVICE), 0.1)
    with pytest.raises(RuntimeError, match="mul_activation: a must have dtype Float"):
        prims.mul_activation(R, torch.randn(2, 5, device=DEVICE, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="stab_divide: R must be contiguous"):
        torch.ops.isnet_kernels.stab_divide(torch.randn(2, 5, 3, device=DEVICE).transpose(1, 2),
                                            torch.randn(2, 5, device=DEVICE), 0.1)
    (Rp, z, indices), length = _pool_inputs(1, 2, 3, 7, 7, torch.float32)
    with pytest.raises(RuntimeError, match="maxpool_forward: indices must be a contiguous int64 CUDA tensor"):
        prims.maxpool_forward(Rp.to(DEVICE), z.to(DEVICE), indices, length, 0.1)


def test_backend_name_and_availability(prims) -> None:
    assert prims.name == "cuda" and cuda.available() == (True, "") and cuda.built() == (True, "")
