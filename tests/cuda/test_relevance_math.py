"""The per-element maths shared by the CPU and the CUDA kernels (``csrc/common/relevance_math.h``), pinned down
through the CPU kernels, which are compiled from it: what runs here is the arithmetic the GPU runs.

Each test feeds values whose results are exact in binary floating point (or derived independently, in closed
form) and checks one function's edge cases: sign(0) = +1 for +0 and -0, eps = 0, NaN, sums over M in float for
half precision, colliding max-pool winners, a winner of zero, conservation of relevance. One more test checks that
the header is what both backends use: every function it defines is called by the CPU loop nests and by the CUDA
kernels, and neither defines a stabiliser of its own.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NOT_BUILT = importlib.util.find_spec("isnet_kernels._C") is None
needs_cpp = pytest.mark.skipif(NOT_BUILT, reason="the compiled extension isnet_kernels._C is not built "
                               "(pip install --no-build-isolation -e . with a C++ compiler)")
ops = torch.ops.isnet_kernels
F64 = torch.float64


@pytest.fixture(autouse=True)
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs start as NaN, so unwritten elements cannot pass as stale memory."""
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")


@pytest.fixture(autouse=True)
def extension() -> None:
    if NOT_BUILT:
        return
    from isnet_kernels.backends import cpp

    ok, why = cpp.available()
    assert ok, f"isnet_kernels._C is built but does not load: {why}"


def _t(values, dtype=F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# ---- the stabiliser and the epsilon division --------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_stab_sign_of_zero_is_plus(dtype: torch.dtype) -> None:
    """t = z + eps sign(z) with sign(+0) = sign(-0) = +1: s = R / t exactly for values representable in every
    dtype (eps = 0.5, R = 1)."""
    z = _t([[0.0, -0.0, 2.0, -2.0, 0.5, -0.5]], dtype)
    s = ops.stab_divide(torch.ones(1, 1, 6, dtype=dtype), z, 0.5)
    assert torch.equal(s, _t([[[2.0, 2.0, 0.4, -0.4, 1.0, -1.0]]], F64).to(dtype))


@needs_cpp
def test_eps_zero_divides_by_z_itself() -> None:
    """eps = 0: t = z, so s = R / z, including IEEE's R / 0 = inf (sign of R) and 0 / 0 = NaN."""
    z = _t([[3.0, -4.0, 0.0, 0.0]])
    R = _t([[[1.5, 2.0, 1.0, 0.0]]])
    s = ops.stab_divide(R, z, 0.0)
    assert torch.equal(s[..., :3], _t([[[0.5, -0.5, math.inf]]]))
    assert s[..., 3].isnan().all()


@needs_cpp
def test_nan_pre_activation_stays_nan() -> None:
    """A NaN z fails z >= 0 (its sign term is -eps) and t stays NaN: the relevance is NaN, never a number."""
    s = ops.stab_divide(torch.ones(1, 2, 2, dtype=F64), _t([[math.nan, 1.0]]), 0.1)
    assert s[..., 0].isnan().all() and torch.equal(s[..., 1], torch.full((1, 2), 1 / 1.1, dtype=F64))


@needs_cpp
def test_relevance_input_is_the_product() -> None:
    """mul_activation: R_in = a * c for every map, exact for representable products."""
    c = _t([[[1.5, -2.0, 0.25]], [[4.0, 0.5, -1.0]]]).view(2, 1, 3).repeat(1, 3, 1)
    a = _t([[2.0, 3.0, -4.0], [0.5, -8.0, 2.0]])
    assert torch.equal(ops.mul_activation(c, a), c * a.unsqueeze(1))


# ---- the epsilon backward's epilogues ---------------------------------------------------------------------------


@needs_cpp
def test_epsilon_input_step_sums_maps_in_float_for_half() -> None:
    """dA = sum_M G c accumulates in float for half inputs: 2048 + 1 + 1 is 2050 (exact in half), where a half
    accumulator would round 2048 + 1 back to 2048 twice. U = G a is the per-map product."""
    G = torch.ones(1, 3, 1, dtype=torch.float16)
    c = _t([[[2048.0], [1.0], [1.0]]], torch.float16)
    a = _t([[3.0]], torch.float16)
    U, dA = ops.epsilon_backward_input(G, a, c)
    assert dA.item() == 2050.0
    assert torch.equal(U, torch.full((1, 3, 1), 3.0, dtype=torch.float16))


@needs_cpp
def test_epsilon_stab_step_signs_and_no_maps() -> None:
    """dR = V / t and dZ = -sum_M V s / t; with no maps dZ is zero (a sum over nothing)."""
    V = _t([[[1.0, 3.0]], [[-2.0, 1.0]]]).view(1, 2, 2)
    s = _t([[[1.0, 0.5]], [[0.25, 2.0]]]).view(1, 2, 2)
    z = _t([[1.5, -0.5]])  # eps 0.5: t = 2, -1
    dR, dZ = ops.epsilon_backward_stab(V, s, z, 0.5)
    assert torch.equal(dR, _t([[[0.5, -3.0], [-1.0, -1.0]]]))
    assert torch.equal(dZ, _t([[-(0.5 * 1.0 + -1.0 * 0.25), -(-3.0 * 0.5 + -1.0 * 2.0)]]))
    dR0, dZ0 = ops.epsilon_backward_stab(torch.ones(1, 0, 2, dtype=F64), torch.ones(1, 0, 2, dtype=F64), z, 0.5)
    assert dR0.shape == (1, 0, 2) and torch.equal(dZ0, torch.zeros(1, 2, dtype=F64))


# ---- the residual split ------------------------------------------------------------------------------------------


@needs_cpp
def test_residual_shares_conserve_with_eps_zero() -> None:
    """R_x = x R / y, R_f = f R / y: with eps = 0 and y = x + f, R_x + R_f = R, here exactly (x = 1.5, f = 0.5)."""
    R = _t([[[4.0, -2.0]], [[1.0, 8.0]]]).view(1, 2, 2)
    x, f = _t([[1.5, -3.0]]), _t([[0.5, 1.0]])
    Rx, Rf = ops.residual_forward(R, x, f, x + f, 0.0)
    assert torch.equal(Rx, R * _t([[0.75, 1.5]]).unsqueeze(1))
    assert torch.equal(Rf, R * _t([[0.25, -0.5]]).unsqueeze(1))
    assert torch.equal(Rx + Rf, R)


@needs_cpp
def test_residual_backward_step_closed_form() -> None:
    """One element, two maps: dR = (Gx x + Gf f) / t; dx = sum Gx R / t; df = sum Gf R / t; dy = -sum dR R / t,
    with y = 0 stabilised to t = +eps."""
    eps = 0.5
    Gx, Gf = _t([[[1.0], [2.0]]]), _t([[[0.5], [-1.0]]])
    R, x, f, y = _t([[[2.0], [-1.0]]]), _t([[3.0]]), _t([[-3.0]]), _t([[0.0]])
    dR, dx, df, dy = ops.residual_backward(Gx, Gf, R, x, f, y, eps)
    t = eps
    q = [(1.0 * 3.0 + 0.5 * -3.0) / t, (2.0 * 3.0 + -1.0 * -3.0) / t]
    assert torch.equal(dR, _t([[[q[0]], [q[1]]]]))
    assert torch.equal(dx, _t([[(1.0 * 2.0 + 2.0 * -1.0) / t]]))
    assert torch.equal(df, _t([[(0.5 * 2.0 + -1.0 * -1.0) / t]]))
    assert torch.equal(dy, _t([[-(q[0] * 2.0 / t + q[1] * -1.0 / t)]]))


# ---- max-pool: the winner's share ------------------------------------------------------------------------------


@needs_cpp
def test_winner_share_collisions_and_eps_zero() -> None:
    """eps = 0: each winner takes its window's whole relevance (z / t = 1); windows sharing a winner add up;
    a winner of zero activation takes nothing (0 / eps), for +0 and -0."""
    R = _t([[[[1.0, 2.0, 4.0, 8.0]]]])
    z = _t([[[3.0, -5.0, 7.0, 1.0]]])
    indices = torch.tensor([[[1, 1, 4, 1]]])
    out = ops.maxpool_forward(R, z, indices, 6, 0.0)
    assert torch.equal(out, _t([[[[0.0, 11.0, 0.0, 0.0, 4.0, 0.0]]]]))
    zero = ops.maxpool_forward(R, _t([[[0.0, -0.0, 1.0, 1.0]]]), torch.tensor([[[0, 2, 3, 3]]]), 4, 0.5)
    assert torch.equal(zero, _t([[[[0.0, 0.0, 0.0, (4.0 + 8.0) / 1.5]]]]))


@needs_cpp
def test_winner_dz_factor() -> None:
    """dz = sum_M g R eps sign(z) / t^2: at z = 0 that is g R / eps; at z = -1 and eps = 0.5, -0.5 g R / 2.25;
    dR = g z / t. g is G at the winner."""
    R = _t([[[[2.0, 3.0]], [[1.0, -1.0]]]])  # (B, M, C, Lo) = (1, 2, 1, 2)
    z = _t([[[0.0, -1.0]]])
    indices = torch.tensor([[[2, 0]]])
    G = _t([[[[5.0, 0.0, 4.0]], [[-1.0, 0.0, 2.0]]]])  # (1, 2, 1, length 3)
    dR, dz = ops.maxpool_backward(G, R, z, indices, 0.5)
    g = [[4.0, 5.0], [2.0, -1.0]]  # per map: G at winners 2 and 0
    assert torch.equal(dR, _t([[[[g[0][0] * 0.0, g[0][1] * (-1.0 / -1.5)]], [[g[1][0] * 0.0, g[1][1] * (-1 / -1.5)]]]]))
    sums = [g[0][0] * 2.0 + g[1][0] * 1.0, g[0][1] * 3.0 + g[1][1] * -1.0]
    torch.testing.assert_close(dz, _t([[[sums[0] / 0.5, sums[1] * -0.5 / 2.25]]]), rtol=1e-15, atol=0)


# ---- average pooling ---------------------------------------------------------------------------------------------


@needs_cpp
@pytest.mark.parametrize("adaptive", [False, True], ids=["avg_pool2d", "adaptive"])
def test_avgpool_share_conserves_with_eps_zero(adaptive: bool) -> None:
    """eps = 0 and z the pool of a: each window hands on exactly its relevance, sum_inputs R_in = sum_windows R
    (windows 2 x 2 stride 2 without overlap, or adaptive 5 -> 2 with overlap)."""
    a = torch.rand(2, 3, 6, 5, dtype=F64) + 0.5
    if adaptive:
        z = F.adaptive_avg_pool2d(a, 2)
        R = torch.randn(2, 4, 3, 2, 2, dtype=F64)
        out = ops.adaptive_avgpool_forward(R, a, z, 0.0)
    else:
        z = F.avg_pool2d(a, 2, 2)
        R = torch.randn(2, 4, *z.shape[1:], dtype=F64)
        out = ops.avgpool_forward(R, a, z, [2, 2], [2, 2], [0, 0], False, True, None, 0.0)
    torch.testing.assert_close(out.sum((3, 4)), R.sum((3, 4)), rtol=1e-13, atol=1e-13)


@needs_cpp
def test_avgpool_backward_step_closed_form() -> None:
    """A global pool of a 1 x 2 plane, one map: V = w sum G a; dR = V / t; dz = -dR s with s = R / t;
    da = G w s. z = 0 stabilises to t = +eps."""
    a, G = _t([[[[2.0, 6.0]]]]), _t([[[[[1.0, 0.5]]]]])
    R, z = _t([[[[[3.0]]]]]), _t([[[[0.0]]]])
    eps, w = 0.5, 0.5
    dR, dz, da = ops.adaptive_avgpool_backward(G, R, a, z, eps, True)
    V = w * (1.0 * 2.0 + 0.5 * 6.0)
    s = 3.0 / eps
    assert torch.equal(dR, _t([[[[[V / eps]]]]]))
    assert torch.equal(dz, _t([[[[-(V / eps) * s]]]]))
    assert torch.equal(da, _t([[[[1.0 * w * s, 0.5 * w * s]]]]))


# ---- one header for both backends -----------------------------------------------------------------------------


def _functions(header: str) -> list[str]:
    return re.findall(r"^ISNET_HD \w+ (\w+)\(", header, flags=re.MULTILINE)


def test_both_backends_use_every_shared_function() -> None:
    """Every function of relevance_math.h is called by the CPU loop nests and by the CUDA kernels (directly, through
    another shared function, or through an elementwise op's struct, whose Op::prepare and Op::step both backends'
    generic loops call for every op of ISNET_ELEMENTWISE_OPS), both include the header, and neither computes a
    stabiliser of its own."""
    header = (CSRC / "common" / "relevance_math.h").read_text()
    functions = _functions(header)
    assert len(functions) >= 14, functions
    bodies = {name: header.split(f" {name}(", 1)[1].split("\n}\n", 1)[0] for name in functions}
    op_structs = header.split("---- the elementwise ops", 1)[1]
    listed = re.findall(r"^  X\((\w+)\)", op_structs, flags=re.MULTILINE)
    assert len(listed) >= 6 and all(f"struct {op} {{" in op_structs for op in listed), listed
    sources = {"cpu": (CSRC / "cpu" / "kernels.inc").read_text() + (CSRC / "cpu" / "kernels.h").read_text(),
               "cuda": "".join(p.read_text() for p in sorted((CSRC / "cuda").glob("*.cu*")))}
    assert '#include "../common/relevance_math.h"' in sources["cpu"]
    assert '#include "../common/relevance_math.h"' in sources["cuda"]
    for backend, text in sources.items():
        assert "Op::prepare(" in text and "Op::step(" in text and "ISNET_ELEMENTWISE_OPS(" in text, backend
        text += op_structs  # the generic loop instantiated for every listed op calls the ops' maths
        called = {name for name in functions if re.search(rf"\b(math::)?{name}\(", text.replace("using math::", ""))}
        for _ in functions:  # add the functions the called ones call
            called |= {name for name in functions for caller in list(called)
                       if re.search(rf"\b{name}\(", bodies[caller])}
        assert called == set(functions), f"{backend} does not use {sorted(set(functions) - called)}"
        assert not re.search(r"\?\s*eps\s*:\s*-eps|\?\s*e\s*:\s*-e\b", text), f"{backend} has its own stabiliser"
