"""Tests for ``stabilize``: ``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1`` (docs/rules.md#the-stabiliser)."""

import pytest
import torch

from isnet_kernels.ops import stabilize


def oracle_stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Element by element, straight from the definition."""
    out = torch.empty_like(z)
    flat_in, flat_out = z.reshape(-1), out.view(-1)
    for i, v in enumerate(flat_in.tolist()):
        sign = 1.0 if v >= 0 else -1.0
        flat_out[i] = v + eps * sign
    return out


@pytest.mark.parametrize("eps", [1e-2, 0.1, 1e-9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_values_match_definition(eps, dtype):
    torch.manual_seed(0)
    z = torch.randn(3, 5, 7, dtype=dtype)
    z[0, 0, :3] = torch.tensor([0.0, -0.0, 1e-30], dtype=dtype)
    got = stabilize(z, eps)
    assert got.dtype == dtype and got.shape == z.shape
    # float32 adds in single precision; the oracle rounds once from double: at most one ulp apart
    rtol = 0.0 if dtype == torch.float64 else 2.0 ** -23
    torch.testing.assert_close(got, oracle_stab(z.double(), eps).to(dtype), rtol=rtol, atol=0)


def test_zero_gets_plus_eps_and_result_is_never_zero():
    z = torch.tensor([0.0, -0.0, 0.005, -0.005, 2.0, -2.0], dtype=torch.float64)
    got = stabilize(z, 0.01)
    expected = torch.tensor([0.01, 0.01, 0.015, -0.015, 2.01, -2.01], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
    assert (got != 0).all()
    # the magnitude only grows: |stab(z)| = |z| + eps
    torch.testing.assert_close(got.abs(), z.abs() + 0.01, rtol=0, atol=1e-15)


def test_tensor_eps_broadcasts():
    torch.manual_seed(1)
    z = torch.randn(4, 3, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    expected = torch.stack([oracle_stab(z[:, k], float(eps[k])) for k in range(3)], dim=1)
    torch.testing.assert_close(stabilize(z, eps), expected, rtol=0, atol=1e-15)


def test_gradient_is_one_away_from_zero():
    torch.manual_seed(2)
    z = torch.randn(6, 5, dtype=torch.float64)
    z = torch.where(z >= 0, z + 0.5, z - 0.5).requires_grad_()
    (g,) = torch.autograd.grad(stabilize(z, 0.1).sum(), z)
    torch.testing.assert_close(g, torch.ones_like(g), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: stabilize(t, 0.1), (z,))
