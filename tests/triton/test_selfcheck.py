"""The first-call self-check of the triton backend: a kernel that disagrees with the torch primitive warns and
falls back under ``auto``, and raises when the backend is asked for by name; a verified case is not checked again."""

from __future__ import annotations

import warnings

import pytest
import torch

from isnet_kernels.backends import dispatch
from isnet_kernels.backends.triton import TritonPrimitives, available, elementwise, selfcheck
from isnet_kernels.errors import BackendUnavailableError
from isnet_kernels.ops import fused
from isnet_kernels.ops.primitives import Geometry

from .helpers import EPS

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)


def _broken(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the stab_divide launcher return twice the right values; the list counts its calls."""
    calls = []
    right = elementwise.stab_divide

    def wrong(R, z, eps):
        calls.append(1)
        return 2 * right(R, z, eps)

    monkeypatch.setattr(elementwise, "stab_divide", wrong)
    return calls


def _inputs(B: int = 2, M: int = 3, N: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(B, M, N), torch.randn(B, N)


def test_auto_warns_and_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _broken(monkeypatch)
    prims = TritonPrimitives(fallback=True)
    R, z = _inputs()
    expected = R / (z + EPS * torch.where(z >= 0, 1.0, -1.0)).unsqueeze(1)
    with pytest.warns(selfcheck.KernelSelfCheckWarning, match=r"stab_divide.*\(2, 3, 37\).*error"):
        out = prims.stab_divide(R, z, EPS)
    torch.testing.assert_close(out, expected)
    assert len(calls) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(prims.stab_divide(R, z, EPS), expected)
    assert len(calls) == 1  # the broken kernel no longer runs for this case


def test_named_triton_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _broken(monkeypatch)
    with pytest.raises(selfcheck.KernelSelfCheckError, match="stab_divide") as info:
        TritonPrimitives(fallback=False).stab_divide(*_inputs(), EPS)
    assert isinstance(info.value, BackendUnavailableError)


def test_verified_case_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    prims = TritonPrimitives()
    checks = []
    right = fused.FusedReference.stab_divide
    monkeypatch.setattr(fused.FusedReference, "stab_divide", lambda self, *a: checks.append(1) or right(self, *a))
    R, z = _inputs()
    first = prims.stab_divide(R, z, EPS)
    again = prims.stab_divide(R + 1, z, EPS)  # same shapes: the same specialisation, already verified
    assert len(checks) == 1 and not torch.equal(first, again)
    prims.stab_divide(*_inputs(N=41), EPS)  # a new signature is checked once
    assert len(checks) == 2


def test_fused_conv_primitives_pass_the_check() -> None:
    """The fused convolution kernels agree with their composed references (the check raises otherwise)."""
    prims = TritonPrimitives()
    geom = Geometry(stride=(2, 2), padding=(1, 1))
    for Ci in (3, 8):  # the CUDA-core and the tl.dot forms
        a, weight = torch.randn(2, Ci, 9, 9), torch.randn(8, Ci, 3, 3)
        z = torch.nn.functional.conv2d(a, weight, None, 2, 1)
        R = torch.randn(2, 2, *z.shape[1:])
        prims.conv_epsilon_forward(R, a, z, weight, (9, 9), geom, EPS, True)
        prims.zbox_forward(R, a, -a, z, weight.clamp(min=0), weight.clamp(max=0), (9, 9), geom, EPS, True)
        prims.conv_epsilon_backward(torch.randn(2, 2, Ci, 9, 9), weight, R, z, geom, EPS)
    assert sum(prims.self_check.verdicts.values()) == len(prims.self_check.verdicts) == 6


def test_resolve_distinguishes_auto_from_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "triton_status", lambda: (True, ""))
    assert dispatch.resolve("auto", torch.device("cuda")) == dispatch.AUTO_TRITON
    assert dispatch.resolve("triton", torch.device("cuda")) == "triton"
    assert dispatch.primitives(dispatch.AUTO_TRITON).fallback is True
    assert dispatch.primitives("triton").fallback is False


def test_disagreement_ignores_overflow_in_the_reference() -> None:
    out = torch.tensor([1.0, 65504.0], dtype=torch.float16)
    ref = torch.tensor([1.0, 1e6])  # inf in float16: left out
    assert selfcheck.disagreement(out, ref) == 0.0
    assert selfcheck.disagreement(out, torch.tensor([2.0, 1e6])) == pytest.approx(0.5)
    assert selfcheck.disagreement((out, None), (ref, torch.zeros(1))) == float("inf")
