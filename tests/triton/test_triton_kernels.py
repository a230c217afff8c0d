"""Triton elementwise and max-pool kernels against the plain-PyTorch primitives.

Run on CPU tensors under ``TRITON_INTERPRET=1`` (tests/conftest.py sets it before triton is imported), or on a
CUDA device when the interpreter is off. Tolerances are those of :func:`tests.triton.helpers.assert_matches`;
every test runs with ``ISNET_KERNELS_POISON=1`` (tests/triton/conftest.py), so an output element a kernel
forgets to write shows as NaN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels.backends.triton import available
from isnet_kernels.ops.primitives import TorchPrimitives

from .helpers import DEVICE, DTYPES, TORCH, TRITON, assert_matches, randn, stab_eps, z_like

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


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
    inputs = [randn(B, M, N, dtype=dtype), z_like((B, N), dtype), stab_eps(dtype)]
    assert_matches(TRITON.stab_divide(*inputs), TORCH.stab_divide, inputs, dtype, "stab_divide")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mul_activation(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    inputs = [randn(B, M, N, dtype=dtype), randn(B, N, dtype=dtype)]
    assert_matches(TRITON.mul_activation(*inputs), TORCH.mul_activation, inputs, dtype, "mul_activation")


@pytest.mark.parametrize("with_c", [True, False], ids=["c", "no_c"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_epsilon_backward_input(shape: tuple[int, int, int], dtype: torch.dtype, with_c: bool) -> None:
    B, M, N = shape
    c = randn(B, M, N, dtype=dtype) if with_c else None
    inputs = [randn(B, M, N, dtype=dtype), randn(B, N, dtype=dtype), c]
    U, dA = TRITON.epsilon_backward_input(*inputs)
    assert (dA is None) == (not with_c)
    assert_matches((U, dA), TORCH.epsilon_backward_input, inputs, dtype, "epsilon_backward_input")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_epsilon_backward_stab(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    inputs = [randn(B, M, N, dtype=dtype), randn(B, M, N, dtype=dtype), z_like((B, N), dtype), stab_eps(dtype)]
    assert_matches(TRITON.epsilon_backward_stab(*inputs), TORCH.epsilon_backward_stab, inputs, dtype,
                   "epsilon_backward_stab")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_residual_forward(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    x, f = randn(B, N, dtype=dtype), randn(B, N, dtype=dtype)
    y = x + f
    y.view(-1)[::5] = 0.0
    inputs = [randn(B, M, N, dtype=dtype), x, f, y, stab_eps(dtype)]
    assert_matches(TRITON.residual_forward(*inputs), TORCH.residual_forward, inputs, dtype, "residual_forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_residual_backward(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    B, M, N = shape
    x, f = randn(B, N, dtype=dtype), randn(B, N, dtype=dtype)
    y = x + f
    y.view(-1)[::5] = 0.0
    inputs = [randn(B, M, N, dtype=dtype), randn(B, M, N, dtype=dtype), randn(B, M, N, dtype=dtype), x, f, y,
              stab_eps(dtype)]
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
    inputs = [R, z, idx, length, stab_eps(dtype)]
    assert_matches(TRITON.maxpool_forward(*inputs), TORCH.maxpool_forward, inputs, dtype, "maxpool_forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 4, 7, 9), (1, 1, 2, 9, 9), (1, 2, 8, 9, 8)], ids=str)
def test_maxpool_backward(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    R, z, idx, length = _pool_inputs(*shape, dtype=dtype)
    G = randn(*R.shape[:3], length, dtype=dtype)
    inputs = [G, R, z, idx, stab_eps(dtype)]
    assert_matches(TRITON.maxpool_backward(*inputs), TORCH.maxpool_backward, inputs, dtype, "maxpool_backward")
