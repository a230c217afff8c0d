"""The heatmap loss's background score (``loss.background_score``: GWRP of ``|H| (1 - m) / s`` over the spatial axes,
a hand-written backward) against the autograd expression it replaces, ``gwrp((|H| / s * (1 - m)).flatten(-2), d)``:
the same values, the same gradient w.r.t. the heatmaps, the scale's gradient to rounding (float64 and float32,
odd shapes, ties, d = 0 / 0.9 / 1), gradcheck, and what it keeps for the backward (one value per element besides
the heatmaps, where the autograd graph keeps ``|H|`` and the sort's int64 indices)."""

from __future__ import annotations

import pytest
import torch

from isnet_kernels.isnet import loss as L


def _inputs(dtype: torch.dtype, shape=(2, 3, 4, 9, 7), ties: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if ties:
        H = H.round()  # many equal values, zeros among them
    H = H.to(dtype).requires_grad_()
    B, M, C, h, w = shape
    m = (torch.rand(B, 1, 1, h, w, generator=gen) > 0.5).to(dtype)
    s = (torch.rand(B, M, generator=gen, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    return H, m, s


def _autograd(H, m, s, d):
    return L.gwrp((H.abs() / s[..., None, None, None] * (1 - m)).flatten(-2), d)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("d", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_equals_the_autograd_expression(dtype: torch.dtype, d: float, ties: bool) -> None:
    H, m, s = _inputs(dtype, ties=ties)
    got, want = L.background_score(H, m, s, d), _autograd(H, m, s, d)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    G = torch.randn_like(got)
    dH, ds = torch.autograd.grad(got, (H, s), G)
    dH_ref, ds_ref = torch.autograd.grad(want, (H, s), G)
    torch.testing.assert_close(dH, dH_ref, rtol=0, atol=0)  # the same operations in the same order
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ds, ds_ref, **tol)  # -S / s: the same value by another sum


def test_gradcheck() -> None:
    H, m, s = _inputs(torch.float64, shape=(2, 2, 3, 5, 4), seed=1)
    assert torch.autograd.gradcheck(lambda H, s: L.background_score(H, m, s, 0.8), (H, s))


def test_keeps_one_value_per_element() -> None:
    H, m, s = _inputs(torch.float32, shape=(2, 3, 4, 16, 16))

    def kept(fn) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() != H.untyped_storage().data_ptr():  # the heatmaps: kept anyway
                sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(H, m, s, 0.9)
        return sum(sizes)

    one_value = H.numel() * H.element_size()
    assert kept(L.background_score) <= one_value * 1.2  # g, plus the mask and the (B, M, C) vectors
    assert kept(_autograd) >= 3 * one_value  # |H| and the int64 indices


def test_bad_decay_is_refused() -> None:
    H, m, s = _inputs(torch.float64)
    with pytest.raises(L.InputError, match="GWRP decay"):
        L.background_score(H, m, s, 1.5)
