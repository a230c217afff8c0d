"""Residual-add split and concatenation split (docs/rules.md#residual-add, docs/rules.md#concatenation)."""

import pytest
import torch

from isnet_kernels.ops import reference_concat_split, reference_residual_split


def oracle_residual(R, x, f, y, eps):
    """Element by element: R_x = x / stab(y) * R, R_f = f / stab(y) * R, with a and y broadcast over maps."""
    B, M = R.shape[:2]
    Rf, xf, ff, yf = R.reshape(B, M, -1), x.reshape(B, -1), f.reshape(B, -1), y.reshape(B, -1)
    Rx_out, Rf_out = torch.zeros_like(Rf), torch.zeros_like(Rf)
    for b in range(B):
        for i in range(xf.shape[1]):
            yv = float(yf[b, i])
            t = yv + eps if yv >= 0 else yv - eps
            for m in range(M):
                Rx_out[b, m, i] = float(xf[b, i]) / t * float(Rf[b, m, i])
                Rf_out[b, m, i] = float(ff[b, i]) / t * float(Rf[b, m, i])
    return Rx_out.view_as(R), Rf_out.view_as(R)


SHAPES = {"conv": (2, 3, 5), "linear": (7,)}


@pytest.mark.parametrize("B,M", [(1, 1), (3, 3), (1, 3), (3, 1)])
@pytest.mark.parametrize("shape", SHAPES)
def test_residual_split_matches_formula(shape, B, M):
    torch.manual_seed(0)
    x = torch.randn(B, *SHAPES[shape], dtype=torch.float64)
    f = torch.randn(B, *SHAPES[shape], dtype=torch.float64)
    f.view(-1)[::4] = -x.view(-1)[::4]  # exact zeros in y: sign(0) = +1
    y = x + f
    assert (y == 0).any()
    R = torch.randn(B, M, *SHAPES[shape], dtype=torch.float64)
    Rx, Rf = reference_residual_split(R, x, f, y, eps=1e-2)
    assert Rx.shape == Rf.shape == R.shape
    ex, ef = oracle_residual(R, x, f, y, 1e-2)
    torch.testing.assert_close(Rx, ex, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Rf, ef, rtol=1e-12, atol=1e-12)
    # the two parts add up to R * y / stab(y)
    t = torch.where(y >= 0, y + 1e-2, y - 1e-2)
    torch.testing.assert_close(Rx + Rf, R * (y / t).unsqueeze(1), rtol=1e-12, atol=1e-12)


def test_residual_split_conserves_as_eps_vanishes():
    torch.manual_seed(1)
    x, f = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    R = torch.randn(2, 3, 3, 4, 5, dtype=torch.float64)
    Rx, Rf = reference_residual_split(R, x, f, x + f, eps=1e-12)
    torch.testing.assert_close(Rx + Rf, R, rtol=1e-6, atol=1e-6)


def test_residual_split_float32():
    torch.manual_seed(2)
    x, f = torch.randn(3, 2, 5, 7), torch.randn(3, 2, 5, 7)
    y, R = x + f, torch.randn(3, 3, 2, 5, 7)
    Rx, Rf = reference_residual_split(R, x, f, y)
    assert Rx.dtype == Rf.dtype == torch.float32
    ex, ef = oracle_residual(R.double(), x.double(), f.double(), y.double(), 1e-2)
    for got, exp in ((Rx, ex), (Rf, ef)):
        torch.testing.assert_close(got.double(), exp, rtol=1e-5, atol=1e-6 * exp.abs().max().item())


def test_residual_split_gradcheck():
    torch.manual_seed(3)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    f = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    y = x + f
    y = torch.where(y >= 0, y + 0.5, y - 0.5)  # independent input, away from 0
    R = torch.randn(2, 3, 2, 3, 3, dtype=torch.float64)
    args = tuple(t.clone().requires_grad_() for t in (R, x, f, y))
    assert torch.autograd.gradcheck(lambda *t: reference_residual_split(*t, eps=0.1), args)


# ------------------------------------------------------------------------------------------------- concat


@pytest.mark.parametrize("dim", [1, -3, 2, -2, 3, -1])
@pytest.mark.parametrize("M", [1, 3])
def test_concat_split_inverts_cat(dim, M):
    torch.manual_seed(4)
    B = 2
    pos = dim if dim > 0 else dim + 4  # the axis of the (B, C, H, W) activations
    sizes = {1: [2, 3, 1], 2: [1, 4, 2], 3: [3, 3]}[pos]
    parts = []
    for n in sizes:
        shape = [B, 2, 5, 6]
        shape[pos] = n
        parts.append(torch.randn(*shape, dtype=torch.float64))
    cat = torch.cat(parts, dim)
    R = torch.randn(B, M, *cat.shape[1:], dtype=torch.float64)
    got = reference_concat_split(R, sizes, dim)
    assert len(got) == len(sizes)
    axis = pos + 1  # the same axis of R, which has the map axis after the batch
    start = 0
    for piece, part, n in zip(got, parts, sizes, strict=True):
        assert piece.shape == (B, M, *part.shape[1:])
        torch.testing.assert_close(piece, R.narrow(axis, start, n), rtol=0, atol=0)
        start += n
    torch.testing.assert_close(torch.cat(got, axis), R, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1, -1])
def test_concat_split_linear_features(dim):
    torch.manual_seed(5)
    R = torch.randn(3, 2, 9, dtype=torch.float64)
    a, b, c = reference_concat_split(R, [4, 1, 4], dim)
    assert a.shape == (3, 2, 4) and b.shape == (3, 2, 1) and c.shape == (3, 2, 4)
    torch.testing.assert_close(b[..., 0], R[..., 4], rtol=0, atol=0)
    torch.testing.assert_close(c, R[..., 5:], rtol=0, atol=0)


def test_concat_split_does_not_touch_the_map_axis():
    """dim 1 of the activations is axis 2 of R: splitting M (axis 1) instead would give the wrong parts."""
    R = torch.arange(2 * 3 * 3, dtype=torch.float64).view(2, 3, 3)
    first, second = reference_concat_split(R, [1, 2], 1)
    assert first.shape == (2, 3, 1) and second.shape == (2, 3, 2)
    torch.testing.assert_close(first[:, :, 0], R[:, :, 0], rtol=0, atol=0)
