"""Triton implicit-GEMM convolution kernels against the plain-PyTorch primitives and reference ops.

Three kernels (isnet_kernels/backends/triton/conv.py): the epsilon rule's forward (transposed convolution, stab
prologue, activation epilogue), the Z^B rule's forward (the same with W+ and W- and two accumulators), and the
epsilon rule's backward (forward convolution with the ``dR``, ``dZ`` epilogue). Each is compared with its composition
of plain-PyTorch primitives across odd sizes, stride 2 with output_padding, dilation 2, groups, depthwise, 1x1
and 7x7 kernels, batch 1 and several maps, on both the tensor-core (``tl.dot``) and CUDA-core paths; then the
autograd Functions that call them are checked against autograd of the reference ops and by ``gradcheck``.
Outputs start as NaN (tests/triton/conftest.py), so unwritten elements show.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from isnet_kernels import ops
from isnet_kernels.backends.triton import TritonPrimitives, available
from isnet_kernels.errors import InputError
from isnet_kernels.ops import reference_conv_epsilon
from isnet_kernels.ops.primitives import Geometry

from .helpers import DEVICE, EPS, TORCH, TRITON, assert_matches, randn

OK, WHY = available()
pytestmark = pytest.mark.skipif(not OK, reason=WHY)

# (B, M, Ci, Co, H, W, kernel, stride, padding, dilation, groups): odd sizes everywhere
CONV_CASES = {
    "3x3": (2, 3, 8, 8, 7, 9, 3, 1, 1, 1, 1),  # tl.dot path (8 channels, padded to 16)
    "3x3_blocks": (1, 1, 20, 18, 5, 5, 3, 1, 1, 1, 1),  # several input-channel and output-channel blocks
    "3x3_fma_k_blocks": (1, 1, 3, 20, 5, 5, 3, 1, 1, 1, 1),  # CUDA-core path, several output-channel blocks
    "3x3_fma_wide": (1, 2, 20, 3, 5, 5, 3, 1, 1, 1, 1),  # CUDA-core path, several input-channel blocks
    "stride2_outpad": (1, 3, 8, 8, 8, 9, 3, 2, 1, 1, 1),  # H: output_padding 1, W: 0
    "stride2_outpad_fma": (1, 1, 3, 5, 8, 8, 3, 2, 1, 1, 1),  # output_padding 1 in both, CUDA-core path
    "dilation2": (1, 3, 8, 8, 9, 9, 3, 1, 2, 2, 1),
    "dilation2_stride2_fma": (1, 1, 4, 6, 9, 8, 3, 2, 1, 2, 1),
    "groups2": (1, 3, 8, 8, 9, 7, 3, 1, 1, 1, 2),
    "groups2_dot": (1, 2, 16, 16, 5, 7, 3, 2, 1, 1, 2),  # 8 channels per group: tl.dot within groups
    "depthwise": (2, 1, 4, 4, 7, 9, 3, 1, 1, 1, 4),
    "depthwise_mult2_stride2": (1, 3, 4, 8, 9, 7, 3, 2, 1, 1, 4),
    "1x1": (1, 3, 8, 8, 9, 9, 1, 1, 0, 1, 1),
    "1x1_stride2": (1, 1, 6, 3, 9, 8, 1, 2, 0, 1, 1),
    "7x7": (1, 1, 8, 8, 9, 9, 7, 1, 3, 1, 1),
    "7x7_stride2_fma": (1, 1, 3, 4, 9, 9, 7, 2, 3, 1, 1),  # an RGB first layer
    "batch1_m1": (1, 1, 8, 8, 5, 7, 3, 1, 1, 1, 1),
    "many_pixels": (3, 2, 3, 4, 11, 13, 3, 1, 1, 1, 1),  # several pixel blocks, images straddling them
}
LOW_PRECISION_CASES = ["3x3", "stride2_outpad", "depthwise", "groups2", "7x7_stride2_fma"]


def _geometry(case: tuple[int, ...]) -> Geometry:
    stride, pad, dil, groups = case[7:]
    return Geometry(stride=(stride, stride), padding=(pad, pad), dilation=(dil, dil), groups=groups)


def _conv_inputs(case: tuple[int, ...], dtype: torch.dtype) -> tuple:
    """R, a, z, weight, geometry of a convolution case; z has exact zeros."""
    B, M, Ci, Co, H, W, k, stride, pad, dil, groups = case
    a = torch.randn(B, Ci, H, W, dtype=torch.float64)
    weight = torch.randn(Co, Ci // groups, k, k, dtype=torch.float64) / (Ci // groups * k * k) ** 0.5
    z = F.conv2d(a, weight, None, stride, pad, dil, groups)
    z.view(-1)[::9] = 0.0
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)
    return R.to(DEVICE, dtype), a.to(DEVICE, dtype), z.to(DEVICE, dtype), weight.to(DEVICE, dtype), _geometry(case)


def _keep_c(case: str) -> bool:
    return list(CONV_CASES).index(case) % 2 == 0


# ----------------------------------------------------------------------------------------------------------------
# epsilon forward: a * conv_transpose(R / stab(z), W)
# ----------------------------------------------------------------------------------------------------------------


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
    keep_c = _keep_c(case)
    R, a, z, weight, geom = _conv_inputs(CONV_CASES[case], torch.float64)
    out = TRITON.conv_epsilon_forward(R, a, z, weight, a.shape[-2:], geom, EPS, keep_c)
    assert (out[1] is None) == (not keep_c)
    assert_matches(out, _reference_with_c(geom, keep_c), [R, a, z, weight], torch.float64, f"conv[{case}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_conv_epsilon_forward_low_precision(case: str, dtype: torch.dtype) -> None:
    R, a, z, weight, geom = _conv_inputs(CONV_CASES[case], dtype)
    out = TRITON.conv_epsilon_forward(R, a, z, weight, a.shape[-2:], geom, EPS, True)
    assert_matches(out, _reference_with_c(geom, True), [R, a, z, weight], dtype, f"conv[{case}]")


def test_conv_epsilon_forward_rejects_wrong_input_size() -> None:
    R, a, z, weight, geom = _conv_inputs(CONV_CASES["stride2_outpad"], torch.float64)
    with pytest.raises(ValueError):
        TRITON.conv_epsilon_forward(R, a[..., :-2, :], z, weight, (a.shape[-2] - 2, a.shape[-1]), geom, EPS, False)


# ----------------------------------------------------------------------------------------------------------------
# Z^B forward: A_l * conv_transpose(s, W+) + A_h * conv_transpose(s, W-), s = R / stab(z_B)
# ----------------------------------------------------------------------------------------------------------------


def _zbox_inputs(case: tuple[int, ...], dtype: torch.dtype) -> tuple:
    """R, a - l, a - h, z_B, W+, W-, geometry: per-channel bounds l <= a <= h, z_B with exact zeros."""
    B, M, Ci, Co, H, W, k, stride, pad, dil, groups = case
    geom = _geometry(case)
    low = -torch.rand(1, Ci, 1, 1, dtype=torch.float64) - 0.5
    high = torch.rand(1, Ci, 1, 1, dtype=torch.float64) + 0.5
    a = low + (high - low) * torch.rand(B, Ci, H, W, dtype=torch.float64)
    weight = torch.randn(Co, Ci // groups, k, k, dtype=torch.float64) / (Ci // groups * k * k) ** 0.5
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    args = (None, geom.stride, geom.padding, geom.dilation, groups)
    z_box = (F.conv2d(a - low, w_pos, *args) + F.conv2d(a - high, w_neg, *args))
    z_box.view(-1)[::9] = 0.0
    R = torch.randn(B, M, *z_box.shape[1:], dtype=torch.float64)
    tensors = (R, a - low, a - high, z_box, w_pos, w_neg)
    return (*(t.to(DEVICE, dtype) for t in tensors), geom)


def _zbox_reference(geom: Geometry, keep_c: bool) -> Callable[..., tuple]:
    """``(R_in, c+, c-)`` from the plain-PyTorch primitives (c+, c- None unless ``keep_c``)."""
    def fn(R: torch.Tensor, a_low: torch.Tensor, a_high: torch.Tensor, z_box: torch.Tensor, w_pos: torch.Tensor,
           w_neg: torch.Tensor) -> tuple:
        B, M = R.shape[:2]
        s = TORCH.stab_divide(R.flatten(2), z_box.flatten(1), EPS).view(B * M, *R.shape[2:])
        size = tuple(a_low.shape[2:])
        c_pos = TORCH.transpose(s, w_pos, size, geom).view(B, M, *a_low.shape[1:])
        c_neg = TORCH.transpose(s, w_neg, size, geom).view(B, M, *a_low.shape[1:])
        R_in = a_low.unsqueeze(1) * c_pos + a_high.unsqueeze(1) * c_neg
        return (R_in, c_pos, c_neg) if keep_c else (R_in, None, None)
    return fn


@pytest.mark.parametrize("case", list(CONV_CASES), ids=str)
def test_zbox_forward_float64(case: str) -> None:
    keep_c = _keep_c(case)
    *inputs, geom = _zbox_inputs(CONV_CASES[case], torch.float64)
    out = TRITON.zbox_forward(*inputs, inputs[1].shape[-2:], geom, EPS, keep_c)
    assert len(out) == 3 and (out[1] is None) == (out[2] is None) == (not keep_c)
    assert_matches(out, _zbox_reference(geom, keep_c), inputs, torch.float64, f"zbox[{case}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_zbox_forward_low_precision(case: str, dtype: torch.dtype) -> None:
    *inputs, geom = _zbox_inputs(CONV_CASES[case], dtype)
    out = TRITON.zbox_forward(*inputs, inputs[1].shape[-2:], geom, EPS, True)
    assert_matches(out, _zbox_reference(geom, True), inputs, dtype, f"zbox[{case}]")


def test_zbox_forward_uses_weights_as_given() -> None:
    """W+ and W- are used as passed, whatever their signs (the Function's inputs are free to vary)."""
    R, a_low, a_high, z_box, w_pos, w_neg, geom = _zbox_inputs(CONV_CASES["3x3"], torch.float64)
    w_pos, w_neg = randn(*w_pos.shape, dtype=torch.float64), randn(*w_neg.shape, dtype=torch.float64)
    inputs = [R, a_low, a_high, z_box, w_pos, w_neg]
    out = TRITON.zbox_forward(*inputs, a_low.shape[-2:], geom, EPS, True)
    assert_matches(out, _zbox_reference(geom, True), inputs, torch.float64, "zbox[signed weights]")


def test_zbox_forward_rejects_mismatched_inputs() -> None:
    R, a_low, a_high, z_box, w_pos, w_neg, geom = _zbox_inputs(CONV_CASES["3x3"], torch.float64)
    with pytest.raises(ValueError):
        TRITON.zbox_forward(R, a_low, a_high[:, :-1], z_box, w_pos, w_neg, a_low.shape[-2:], geom, EPS, False)
    with pytest.raises(ValueError):
        TRITON.zbox_forward(R, a_low, a_high, z_box, w_pos, w_neg[:-1], a_low.shape[-2:], geom, EPS, False)
    with pytest.raises(TypeError):
        TRITON.zbox_forward(R, a_low, a_high.float(), z_box, w_pos, w_neg, a_low.shape[-2:], geom, EPS, False)


# ----------------------------------------------------------------------------------------------------------------
# epsilon backward, output side: V = conv(U, W); dR = V / t, dZ = -sum_M V s / t
# ----------------------------------------------------------------------------------------------------------------


def _backward_inputs(case: tuple[int, ...], dtype: torch.dtype) -> tuple:
    """U (B, M, Ci, H, W), weight, s (B, M, Co, Ho, Wo), z (B, Co, Ho, Wo) with exact zeros, geometry."""
    R, a, z, weight, geom = _conv_inputs(case, torch.float64)
    B, M = R.shape[:2]
    U = torch.randn(B, M, *a.shape[1:], dtype=torch.float64)
    s = R / torch.where(z >= 0, z + EPS, z - EPS).unsqueeze(1)
    s = s / s.abs().max()  # keep V * s / t finite in float16 where z = 0
    return U.to(DEVICE, dtype), weight.to(DEVICE, dtype), s.to(DEVICE, dtype), z.to(DEVICE, dtype), geom


def _backward_reference(geom: Geometry, eps: float) -> Callable[..., tuple]:
    """``(dR, dZ)`` from the plain-PyTorch primitives: ``forward_map`` then ``epsilon_backward_stab``."""
    def fn(U: torch.Tensor, weight: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> tuple:
        B, M = U.shape[:2]
        V = TORCH.forward_map(U.flatten(0, 1), weight, geom).view(B, M, -1)
        dR, dZ = TORCH.epsilon_backward_stab(V, s.flatten(2), z.flatten(1), eps)
        return dR.view(s.shape), dZ.view(z.shape)
    return fn


@pytest.mark.parametrize("case", list(CONV_CASES), ids=str)
def test_conv_epsilon_backward_float64(case: str) -> None:
    *inputs, geom = _backward_inputs(CONV_CASES[case], torch.float64)
    out = TRITON.conv_epsilon_backward(*inputs, geom, EPS)
    assert_matches(out, _backward_reference(geom, EPS), inputs, torch.float64, f"conv_backward[{case}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_conv_epsilon_backward_low_precision(case: str, dtype: torch.dtype) -> None:
    *inputs, geom = _backward_inputs(CONV_CASES[case], dtype)
    eps = 0.25 if dtype == torch.float16 else EPS
    out = TRITON.conv_epsilon_backward(*inputs, geom, eps)
    assert_matches(out, _backward_reference(geom, eps), inputs, dtype, f"conv_backward[{case}]")


def test_fused_convolutions_reject_linear_layers() -> None:
    """The ops run linear layers through the elementwise primitives around a matmul, never the fused convolutions;
    called with a linear layer's tensors, each raises instead of computing something else."""
    B, M, K, Fin = 2, 3, 5, 7
    a, weight, z = (randn(*shape, dtype=torch.float64) for shape in ((B, Fin), (K, Fin), (B, K)))
    R, U, linear = randn(B, M, K, dtype=torch.float64), randn(B, M, Fin, dtype=torch.float64), Geometry(linear=True)
    with pytest.raises(InputError):
        TRITON.conv_epsilon_forward(R, a, z, weight, (Fin,), linear, EPS, False)
    with pytest.raises(InputError):
        TRITON.zbox_forward(R, a, -a, z, weight.clamp(min=0), weight.clamp(max=0), (Fin,), linear, EPS, False)
    with pytest.raises(InputError):
        TRITON.conv_epsilon_backward(U, weight, R, z, linear, EPS)


def test_conv_epsilon_backward_rejects_mismatched_inputs() -> None:
    U, weight, s, z, geom = _backward_inputs(CONV_CASES["stride2_outpad"], torch.float64)
    with pytest.raises(ValueError):  # an output size the convolution cannot produce
        TRITON.conv_epsilon_backward(U[..., :-3, :], weight, s, z, geom, EPS)
    with pytest.raises(ValueError):
        TRITON.conv_epsilon_backward(U, weight, s[:, :1], z, geom, EPS)
    with pytest.raises(ValueError):
        TRITON.conv_epsilon_backward(U, weight[:, :-1], s, z, geom, EPS)


# ----------------------------------------------------------------------------------------------------------------
# autotuning: the tensor-core tiles kept for a launch
# ----------------------------------------------------------------------------------------------------------------


def test_dot_tiles_are_pruned_to_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU configurations (not the interpreter's single one) shrink to the channels and the pixel bucket."""
    from isnet_kernels.backends.triton import conv

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    tile_sets = (*conv.TRANSPOSE_TILES.values(), *conv.BACKWARD_TILES.values(), *conv.ZBOX_TILES.values())
    assert sum(len(tiles) > 1 for tiles in tile_sets) >= 4  # the pruning below is exercised
    for tiles in tile_sets:
        configs = conv._dot_configs("BLOCK_CI", tiles)
        assert len(configs) == len(tiles)
        prune = conv._dot_pruner("BLOCK_CI", "Ci_g", "Co_g")

        def kept(Ci_g: int, Co_g: int, n_pixels: int, prune=prune, configs=configs) -> list[dict]:
            args = {"Ci_g": Ci_g, "Co_g": Co_g, "P_BUCKET": conv.pixel_bucket(n_pixels)}
            return [c.kwargs for c in prune(configs, args)]

        if len(configs) == 1:  # a set of one tile keeps it whatever the problem
            assert kept(512, 512, 1 << 20) == kept(8, 8, 1 << 20) == kept(1, 1, 1) == [configs[0].kwargs]
            continue

        assert len(kept(512, 512, 1 << 20)) == len(configs)
        narrow = kept(8, 8, 1 << 20)  # the tiles within 16 channels, else the smallest tile alone
        fitting = [c.kwargs for c in configs if c.kwargs["BLOCK_CI"] <= 16 and c.kwargs["BLOCK_K"] <= 16]
        smallest = min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_CI"] * c.kwargs["BLOCK_K"])
        assert narrow == (fitting or [smallest.kwargs])
        few = kept(64, 64, 20)
        assert few and all(c["BLOCK_P"] <= 32 for c in few)
        assert len(kept(1, 1, 1)) == 1  # never empty


def test_tile_set_follows_dtype_and_precision() -> None:
    from isnet_kernels.backends.triton import conv

    assert conv.tile_set(torch.bfloat16, "ieee") == conv.tile_set(torch.float16, "ieee") == "tensor_core"
    assert conv.tile_set(torch.float32, "tf32") == "tensor_core"
    assert conv.tile_set(torch.float32, "ieee") == conv.tile_set(torch.float64, "ieee") == "fma"


def test_interpreter_uses_one_small_tile() -> None:
    from isnet_kernels.backends.triton import conv

    if DEVICE != "cpu":
        pytest.skip("interpreter only")
    for name in ("BLOCK_CI", "BLOCK_CO"):
        (config,) = conv._dot_configs(name, conv.TRANSPOSE_TILES["tensor_core"])
        assert config.kwargs["BLOCK_P"] * config.kwargs[name] * config.kwargs["BLOCK_K"] <= 128 * 16 * 16


# ----------------------------------------------------------------------------------------------------------------
# the autograd Functions on the triton primitives
# ----------------------------------------------------------------------------------------------------------------


def _away_from_zero(t: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    return t + margin * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def _grads_match(fn: Callable, ref: Callable, inputs: list[torch.Tensor], names: list[str]) -> None:
    """Values, and gradients of a random projection, of ``fn`` against autograd through ``ref`` (float64)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    G = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, G)
    ref_leaves = [t.detach().clone().requires_grad_() for t in inputs]
    expected = ref(*ref_leaves)
    ref_grads = torch.autograd.grad(expected, ref_leaves, G)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * r.abs().max().item(),
                                   msg=lambda m, n=name: f"d{n}: {m}")


class _Spy(TritonPrimitives):
    """Triton primitives that fail if the Functions take the unfused contraction paths."""

    def transpose(self, *args: object) -> torch.Tensor:
        raise AssertionError("unfused transposed convolution called")

    def forward_map(self, *args: object) -> torch.Tensor:
        raise AssertionError("unfused forward convolution called")


@pytest.mark.parametrize("case", ["stride2_outpad", "groups2", "7x7_stride2_fma"], ids=str)
def test_epsilon_function_on_fused_kernels(case: str) -> None:
    """The conv epsilon Function's forward and backward run on the fused kernels and match the reference."""
    R, a, z, weight, geom = _conv_inputs(CONV_CASES[case], torch.float64)
    z = _away_from_zero(z)
    _grads_match(lambda *t: ops.epsilon(*t, geom, EPS, _Spy()), lambda *t: ops.epsilon(*t, geom, EPS, None),
                 [R, a, z, weight], ["R", "a", "z", "weight"])


@pytest.mark.parametrize("case", ["3x3", "groups2", "7x7_stride2_fma", "dilation2_stride2_fma"], ids=str)
def test_zbox_function_forward_on_fused_kernel(case: str) -> None:
    """The Z^B op (bounds, bias, Function) with its forward on the fused kernel, against the reference op."""
    B, M, Ci, Co, H, W, k, stride, pad, dil, groups = CONV_CASES[case]
    geom = _geometry(CONV_CASES[case])
    low = (-torch.rand(1, Ci, 1, 1, dtype=torch.float64) - 0.5).expand(1, Ci, H, W)
    high = (torch.rand(1, Ci, 1, 1, dtype=torch.float64) + 0.5).expand(1, Ci, H, W)
    a = low + (high - low) * torch.rand(B, Ci, H, W, dtype=torch.float64)
    weight = torch.randn(Co, Ci // groups, k, k, dtype=torch.float64)
    bias = torch.randn(Co, dtype=torch.float64)
    z = F.conv2d(a, weight, bias, stride, pad, dil, groups)
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64)

    class NoTranspose(TritonPrimitives):
        def transpose(self, *args: object) -> torch.Tensor:
            raise AssertionError("unfused transposed convolution called")

    _grads_match(lambda *t: ops.zbox(*t, low, high, geom, EPS, NoTranspose()),
                 lambda *t: ops.zbox(*t, low, high, geom, EPS, None), [R, a, z, weight, bias],
                 ["R", "a", "z", "weight", "bias"])


# Full gradcheck costs two interpreted launches per input element; fast mode checks a random projection of the
# Jacobian instead (the full vector-Jacobian products are compared with autograd of the reference above).
GRADCHECK_CASES = {
    "fma_groups2_stride2_outpad": (1, 2, 4, 4, 5, 4, 2, 2, 0, 1, 2),
    "dot_stride2_outpad": (1, 2, 8, 8, 5, 4, 3, 2, 1, 1, 1),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES), ids=str)
def test_gradcheck_epsilon_function(case: str) -> None:
    """gradcheck (fast mode) of the conv epsilon Function on the triton backend, float64."""
    R, a, z, w, geom = _conv_inputs(GRADCHECK_CASES[case], torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (R, a, _away_from_zero(z), w))
    assert torch.autograd.gradcheck(lambda *t: ops.epsilon(*t, geom, 0.1, TRITON), inputs, fast_mode=True)


def test_gradcheck_zbox_function() -> None:
    """gradcheck (fast mode) of the Z^B op on the triton backend: RGB-like first layer, stride 2, bias,
    per-channel bounds, float64."""
    geom = Geometry(stride=(2, 2), padding=(1, 1))
    low = torch.tensor([-0.5, 0.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 5, 4)
    high = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 5, 4)
    a = low + (high - low) * torch.rand(1, 3, 5, 4, dtype=torch.float64)
    w = _away_from_zero(torch.randn(2, 3, 3, 3, dtype=torch.float64), 0.05)  # clamp(W) smooth at the inputs
    b = torch.randn(2, dtype=torch.float64)
    z = F.conv2d(a, w, b, 2, 1)
    R = torch.randn(1, 2, *z.shape[1:], dtype=torch.float64)
    inputs = tuple(t.to(DEVICE).requires_grad_() for t in (R, a, z, w, b))
    low, high = low.to(DEVICE), high.to(DEVICE)
    assert torch.autograd.gradcheck(lambda *t: ops.zbox(*t, low, high, geom, 0.1, TRITON), inputs, fast_mode=True)


def test_int32_pixel_index_limit() -> None:
    """Launches whose flat pixel index would overflow int32 are refused before any copy (inputs are expanded
    views: nothing this size is allocated); whole tensors past 2^31 elements are fine (int64 image offsets)."""
    n = 2**31
    one = torch.zeros((), dtype=torch.float64, device=DEVICE)
    geom = Geometry()
    R, a, z, w = one.expand(n, 1, 1, 1, 1), one.expand(n, 1, 1, 1), one.expand(n, 1, 1, 1), one.expand(1, 1, 1, 1)
    with pytest.raises(ValueError, match="int32"):
        TRITON.conv_epsilon_forward(R, a, z, w, (1, 1), geom, EPS, False)
    with pytest.raises(ValueError, match="int32"):
        TRITON.zbox_forward(R, a, a, z, w, w, (1, 1), geom, EPS, False)
    with pytest.raises(ValueError, match="int32"):
        TRITON.conv_epsilon_backward(R, w, R, z, geom, EPS)
