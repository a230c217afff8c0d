"""Triton kernels against the plain-PyTorch primitives and reference ops.

Run on CPU tensors under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it before triton is imported), or on a
CUDA device when the interpreter is off. Tolerances: float64 1e-10 and float32 1e-5 relative to the reference
at the same precision; float16 must be at most twice as far from the float64 result as PyTorch's own float16
computation is (the flash-attention criterion). Every test runs with ``ISNET_KERNELS_POISON=1``, so an output
element a kernel forgets to write shows as NaN.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from isnet_kernels.ops import reference_conv_epsilon, reference_linear_epsilon  # noqa: E402
from isnet_kernels.ops.primitives import Geometry, TorchPrimitives  # noqa: E402
from isnet_kernels.triton import TritonPrimitives, available  # noqa: E402

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
DTYPES = [torch.float64, torch.float32, torch.float16]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
EPS = 1e-2


def _eps(dtype: torch.dtype) -> float:
    """The stabiliser for a dtype: 1e-2, or 0.25 in float16 so that R / eps^2 terms at z = 0 stay finite."""
    return 0.25 if dtype == torch.float16 else EPS

TORCH = TorchPrimitives()
TRITON = TritonPrimitives()


@pytest.fixture(autouse=True)
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs start as NaN, so unwritten elements cannot pass as stale zeros."""
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")


def _as_tuple(x: object) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def assert_matches(out: object, fn: Callable[..., object], inputs: list, dtype: torch.dtype, name: str) -> None:
    """Compare the kernel's output(s) ``out`` (computed from ``inputs`` in ``dtype``) with ``fn`` on the same inputs.

    float64 / float32: elementwise ``rtol`` with an absolute floor of ``rtol * max|ref|``. float16: the max error
    against ``fn`` in float64 (on the same float16-rounded inputs) is at most twice that of ``fn`` in float16.
    """
    outs = _as_tuple(out)
    for i, o in enumerate(outs):
        if o is None:
            continue
        assert o.dtype == dtype, f"{name}[{i}]: dtype {o.dtype}, expected {dtype}"
        assert not o.isnan().any(), f"{name}[{i}]: NaN in the output (an element left unwritten?)"
        assert o.isfinite().all(), f"{name}[{i}]: overflow in the output (the test's inputs are too large)"
    if dtype in RTOL:
        refs = _as_tuple(fn(*inputs))
        for i, (o, r) in enumerate(zip(outs, refs, strict=True)):
            if o is None or r is None:
                assert o is None and r is None, f"{name}[{i}]: one of kernel / reference is None"
                continue
            assert o.shape == r.shape, f"{name}[{i}]: shape {tuple(o.shape)}, expected {tuple(r.shape)}"
            scale = max(r.abs().max().item(), 1e-30)
            torch.testing.assert_close(o, r, rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                                       msg=lambda m, i=i: f"{name}[{i}] ({dtype}): {m}")
        return
    refs64 = _as_tuple(fn(*[x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                             for x in inputs]))
    refs_low = _as_tuple(fn(*inputs))
    for i, (o, r64, rlow) in enumerate(zip(outs, refs64, refs_low, strict=True)):
        if o is None:
            continue
        assert o.shape == r64.shape, f"{name}[{i}]: shape {tuple(o.shape)}, expected {tuple(r64.shape)}"
        err = (o.double() - r64).abs().max().item()
        torch_err = (rlow.double() - r64).abs().max().item()
        assert err <= 2 * torch_err + 1e-12, (f"{name}[{i}] ({dtype}): max error {err:.3g} against float64, PyTorch's "
                                              f"own {dtype} error {torch_err:.3g}")


def _z(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A pre-activation with exact zeros (sign(0) = +1) and both signs."""
    z = torch.randn(shape, dtype=torch.float64)
    z.view(-1)[::7] = 0.0
    return z.to(DEVICE, dtype)


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64).to(DEVICE, dtype)


# (B, M, N): one element, one map, a row of two column blocks under the interpreter's 256-wide blocks
SHAPES = [(2, 3, 37), (1, 1, 1), (3, 1, 300), (2, 4, 257)]


# ----------------------------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------------------------


def test_available_under_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert available() == (True, "")


def test_unavailable_without_cuda_or_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, why = available()
    assert not ok and "TRITON_INTERPRET" in why and "CUDA" in why


def test_name_and_inheritance() -> None:
    assert TRITON.name == "triton" and isinstance(TRITON, TorchPrimitives)


# ----------------------------------------------------------------------------------------------------------------
# elementwise kernels
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_stab_divide(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    inputs = [_randn(B, M, N, dtype=dtype), _z((B, N), dtype), _eps(dtype)]
    assert_matches(TRITON.stab_divide(*inputs), TORCH.stab_divide, inputs, dtype, "stab_divide")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mul_activation(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    inputs = [_randn(B, M, N, dtype=dtype), _randn(B, N, dtype=dtype)]
    assert_matches(TRITON.mul_activation(*inputs), TORCH.mul_activation, inputs, dtype, "mul_activation")


@pytest.mark.parametrize("with_c", [True, False], ids=["c", "no_c"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_epsilon_backward_input(shape: tuple[int, int, int], dtype: torch.dtype, with_c: bool) -> None:
    B, M, N = shape
    c = _randn(B, M, N, dtype=dtype) if with_c else None
    inputs = [_randn(B, M, N, dtype=dtype), _randn(B, N, dtype=dtype), c]
    U, dA = TRITON.epsilon_backward_input(*inputs)
    assert (dA is None) == (not with_c)
    assert_matches((U, dA), TORCH.epsilon_backward_input, inputs, dtype, "epsilon_backward_input")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_epsilon_backward_stab(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    inputs = [_randn(B, M, N, dtype=dtype), _randn(B, M, N, dtype=dtype), _z((B, N), dtype), _eps(dtype)]
    assert_matches(TRITON.epsilon_backward_stab(*inputs), TORCH.epsilon_backward_stab, inputs, dtype,
                   "epsilon_backward_stab")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_residual_forward(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    x, f = _randn(B, N, dtype=dtype), _randn(B, N, dtype=dtype)
    y = x + f
    y.view(-1)[::5] = 0.0
    inputs = [_randn(B, M, N, dtype=dtype), x, f, y, _eps(dtype)]
    assert_matches(TRITON.residual_forward(*inputs), TORCH.residual_forward, inputs, dtype, "residual_forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_residual_backward(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    x, f = _randn(B, N, dtype=dtype), _randn(B, N, dtype=dtype)
    y = x + f
    y.view(-1)[::5] = 0.0
    inputs = [_randn(B, M, N, dtype=dtype), _randn(B, M, N, dtype=dtype), _randn(B, M, N, dtype=dtype), x, f, y,
              _eps(dtype)]
    assert_matches(TRITON.residual_backward(*inputs), TORCH.residual_backward, inputs, dtype, "residual_backward")


def test_eps_is_exact_in_float64() -> None:
    """A float32-rounded eps would be off by ~2e-10 relative where |z| is small; the kernels rebuild it exactly."""
    R = torch.ones(1, 1, 3, dtype=torch.float64, device=DEVICE)
    z = torch.tensor([[0.0, -0.0, 1e-12]], dtype=torch.float64, device=DEVICE)
    s = TRITON.stab_divide(R, z, 0.1)
    torch.testing.assert_close(s, TORCH.stab_divide(R, z, 0.1), rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# max-pool scatter / gather
# ----------------------------------------------------------------------------------------------------------------


def _pool_inputs(B: int, M: int, C: int, H: int, W: int, dtype: torch.dtype) -> tuple:
    """Pool output and indices of a kernel-3 stride-2 max-pool: overlapping windows, so winners collide."""
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    x[:, :, 2, 2] = 10.0  # one pixel wins all four windows around it
    z, idx = F.max_pool2d(x, 3, 2, return_indices=True)
    Lo = z.shape[-1] * z.shape[-2]
    assert ((idx == 2 * W + 2).flatten(2).sum(-1) == 4).all(), "no collision in the test's indices"
    R = torch.randn(B, M, C, Lo, dtype=torch.float64)
    z = z.flatten(2).clone()
    z.view(-1)[::4] = 0.0  # sign(0) = +1 on winners too
    return R.to(DEVICE, dtype), z.to(DEVICE, dtype), idx.flatten(2).to(DEVICE), H * W


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 4, 7, 9), (1, 1, 2, 9, 9), (1, 2, 8, 9, 8)], ids=str)
def test_maxpool_forward(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    R, z, idx, length = _pool_inputs(*shape, dtype=dtype)
    inputs = [R, z, idx, length, _eps(dtype)]
    assert_matches(TRITON.maxpool_forward(*inputs), TORCH.maxpool_forward, inputs, dtype, "maxpool_forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 4, 7, 9), (1, 1, 2, 9, 9), (1, 2, 8, 9, 8)], ids=str)
def test_maxpool_backward(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    R, z, idx, length = _pool_inputs(*shape, dtype=dtype)
    G = _randn(*R.shape[:3], length, dtype=dtype)
    inputs = [G, R, z, idx, _eps(dtype)]
    assert_matches(TRITON.maxpool_backward(*inputs), TORCH.maxpool_backward, inputs, dtype, "maxpool_backward")


# ----------------------------------------------------------------------------------------------------------------
# fused conv-epsilon forward
# ----------------------------------------------------------------------------------------------------------------

# (B, M, Ci, Co, H, W, kernel, stride, padding, dilation, groups): odd sizes everywhere
CONV_CASES = {
    "3x3": (2, 3, 8, 8, 7, 9, 3, 1, 1, 1, 1),  # tl.dot path (8 channels, padded to 16)
    "3x3_blocks": (1, 1, 20, 18, 5, 5, 3, 1, 1, 1, 1),  # several input-channel and output-channel blocks
    "3x3_fma_k_blocks": (1, 1, 3, 20, 5, 5, 3, 1, 1, 1, 1),  # CUDA-core path, several output-channel blocks
    "stride2_outpad": (1, 3, 8, 8, 8, 9, 3, 2, 1, 1, 1),  # H: output_padding 1, W: 0
    "stride2_outpad_fma": (1, 1, 3, 5, 8, 8, 3, 2, 1, 1, 1),  # output_padding 1 in both, CUDA-core path
    "dilation2": (1, 3, 8, 8, 9, 9, 3, 1, 2, 2, 1),
    "dilation2_stride2_fma": (1, 1, 4, 6, 9, 8, 3, 2, 1, 2, 1),
    "groups2": (1, 3, 8, 8, 9, 7, 3, 1, 1, 1, 2),
    "depthwise": (2, 1, 4, 4, 7, 9, 3, 1, 1, 1, 4),
    "depthwise_mult2_stride2": (1, 3, 4, 8, 9, 7, 3, 2, 1, 1, 4),
    "1x1": (1, 3, 8, 8, 9, 9, 1, 1, 0, 1, 1),
    "1x1_stride2": (1, 1, 6, 3, 9, 8, 1, 2, 0, 1, 1),
    "7x7": (1, 1, 8, 8, 9, 9, 7, 1, 3, 1, 1),
    "7x7_stride2_fma": (1, 1, 3, 4, 9, 9, 7, 2, 3, 1, 1),
    "batch1_m1": (1, 1, 8, 8, 5, 7, 3, 1, 1, 1, 1),
}


def _conv_inputs(case: tuple[int, ...], dtype: torch.dtype) -> tuple:
    B, M, Ci, Co, H, W, k, stride, pad, dil, groups = case
    a = torch.randn(B, Ci, H, W, dtype=torch.float64)
    weight = torch.randn(Co, Ci // groups, k, k, dtype=torch.float64) / (Ci // groups * k * k) ** 0.5
    z = F.conv2d(a, weight, None, stride, pad, dil, groups)
    z.view(-1)[::9] = 0.0
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    geom = Geometry(stride=(stride, stride), padding=(pad, pad), dilation=(dil, dil), groups=groups)
    return R.to(DEVICE, dtype), a.to(DEVICE, dtype), z.to(DEVICE, dtype), weight.to(DEVICE, dtype), geom


def _reference_with_c(geom: Geometry, keep_c: bool) -> Callable[..., tuple]:
    """``(R_in, c or None)`` from the reference op; ``c`` from the reference with ``a = 1``."""
    def fn(R: torch.Tensor, a: torch.Tensor, z: torch.Tensor, weight: torch.Tensor) -> tuple:
        args = (geom.stride, geom.padding, geom.dilation, geom.groups, EPS)
        R_in = reference_conv_epsilon(R, a, z, weight, *args)
        c = reference_conv_epsilon(R, torch.ones_like(a), z, weight, *args) if keep_c else None
        return R_in, c
    return fn


@pytest.mark.parametrize("case", list(CONV_CASES), ids=str)
def test_conv_epsilon_forward_float64(case: str) -> None:
    keep_c = list(CONV_CASES).index(case) % 2 == 0
    R, a, z, weight, geom = _conv_inputs(CONV_CASES[case], torch.float64)
    out = TRITON.conv_epsilon_forward(R, a, z, weight, a.shape[-2:], geom, EPS, keep_c)
    assert (out[1] is None) == (not keep_c)
    assert_matches(out, _reference_with_c(geom, keep_c), [R, a, z, weight], torch.float64, f"conv[{case}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", ["3x3", "stride2_outpad", "depthwise", "groups2", "7x7_stride2_fma"], ids=str)
def test_conv_epsilon_forward_low_precision(case: str, dtype: torch.dtype) -> None:
    R, a, z, weight, geom = _conv_inputs(CONV_CASES[case], dtype)
    out = TRITON.conv_epsilon_forward(R, a, z, weight, a.shape[-2:], geom, EPS, True)
    assert_matches(out, _reference_with_c(geom, True), [R, a, z, weight], dtype, f"conv[{case}]")


def test_conv_epsilon_forward_rejects_wrong_input_size() -> None:
    R, a, z, weight, geom = _conv_inputs(CONV_CASES["stride2_outpad"], torch.float64)
    with pytest.raises(ValueError):
        TRITON.conv_epsilon_forward(R, a[..., :-2, :], z, weight, (a.shape[-2] - 2, a.shape[-1]), geom, EPS, False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("keep_c", [True, False])
def test_linear_epsilon_forward(dtype: torch.dtype, keep_c: bool) -> None:
    B, M, K, Fin = 2, 3, 5, 7
    a, weight = _randn(B, Fin, dtype=dtype), _randn(K, Fin, dtype=dtype)
    z = a @ weight.t()
    R = _randn(B, M, K, dtype=dtype)
    R_in, c = TRITON.conv_epsilon_forward(R, a, z, weight, (Fin,), Geometry(linear=True), EPS, keep_c)
    ref = reference_linear_epsilon(R, a, z, weight, EPS)
    torch.testing.assert_close(R_in, ref, rtol=RTOL[dtype], atol=RTOL[dtype] * ref.abs().max().item())
    if keep_c:
        c_ref = reference_linear_epsilon(R, torch.ones_like(a), z, weight, EPS)
        torch.testing.assert_close(c, c_ref, rtol=RTOL[dtype], atol=RTOL[dtype] * c_ref.abs().max().item())
    else:
        assert c is None


def test_epsilon_rule_forward_and_backward_on_triton_primitives() -> None:
    """The conv epsilon op's autograd Function on the triton primitives, against autograd through the reference."""
    from isnet_kernels.ops.conv import epsilon

    R, a, z, weight, geom = _conv_inputs((1, 2, 8, 8, 7, 5, 3, 2, 1, 1, 1), torch.float64)
    leaves = [t.clone().requires_grad_() for t in (R, a, z, weight)]
    out = epsilon(*leaves, geom, EPS, TRITON)
    G = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, G)
    ref_leaves = [t.clone().requires_grad_() for t in (R, a, z, weight)]
    ref = epsilon(*ref_leaves, geom, EPS, None)
    ref_grads = torch.autograd.grad(ref, ref_leaves, G)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
    for name, g, r in zip(["R", "a", "z", "weight"], grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * r.abs().max().item(),
                                   msg=lambda m, n=name: f"d{n}: {m}")
