"""Products of activations (uniform rule, signal takes all) and constant scalings / shifts (docs/rules.md).

Oracles: broadcasting written as an explicit index map (each output element's source element in an operand,
from ``arange(numel).view(shape).expand(y.shape)``) and relevance scattered back with ``index_add_``; the scaling as
its Jacobian matrix (``torch.autograd.functional.jacobian``) under the explicit epsilon sum
``R_x_i = sum_j x_i W_ji R_j / stab(z_j)``.
"""

import pytest
import torch
from torch.autograd.functional import jacobian

from isnet_kernels.ops.products import reference_affine_constant, reference_product_gate, reference_product_uniform

DTYPES = [torch.float64, torch.float32]
BM = [(1, 1), (2, 3)]
# (a shape, b shape) without the batch axis
PRODUCT_SHAPES = {
    "same": ((3, 4, 5), (3, 4, 5)),
    "se_gate": ((4, 5, 3), (4, 1, 1)),
    "both_broadcast": ((1, 4, 3), (3, 1, 3)),
    "tokens": ((7, 6), (7, 6)),
    "vector": ((5,), (1,)),
}


def stab(z, eps):
    return torch.where(z >= 0, z + eps, z - eps)


def scatter_oracle(R, operand, y_shape):
    """Sum R (B, M, *y) into the operand's elements it was broadcast from, by explicit index arithmetic."""
    B, M = R.shape[:2]
    idx = torch.arange(operand[0].numel()).view(operand.shape[1:]).expand(y_shape[1:]).reshape(-1)
    out = torch.zeros(B, M, operand[0].numel(), dtype=R.dtype)
    return out.index_add_(2, idx, R.reshape(B, M, -1)).view(B, M, *operand.shape[1:])


def make_product(name, B, M, dtype):
    sa, sb = PRODUCT_SHAPES[name]
    a, b = torch.randn(B, *sa, dtype=dtype), torch.randn(B, *sb, dtype=dtype)
    y = a * b
    return a, b, y, torch.randn(B, M, *y.shape[1:], dtype=dtype)


# ----------------------------------------------------------------------------------------------- uniform rule


@pytest.mark.parametrize("name", PRODUCT_SHAPES)
@pytest.mark.parametrize("B,M", BM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_uniform_matches_scatter_oracle_and_conserves(name, B, M, dtype):
    a, b, y, R = make_product(name, B, M, dtype)
    Ra, Rb = reference_product_uniform(R, a, b, y)
    assert Ra.shape == (B, M, *a.shape[1:]) and Rb.shape == (B, M, *b.shape[1:])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Ra, scatter_oracle(R / 2, a, y.shape), **tol)
    torch.testing.assert_close(Rb, scatter_oracle(R / 2, b, y.shape), **tol)
    torch.testing.assert_close(Ra.flatten(2).sum(-1) + Rb.flatten(2).sum(-1), R.flatten(2).sum(-1), **tol)


def test_uniform_gradcheck_and_value_independence():
    a, b, y, R = make_product("se_gate", 2, 3, torch.float64)
    R.requires_grad_()
    assert torch.autograd.gradcheck(lambda R: reference_product_uniform(R, a, b, y), (R,))
    a.requires_grad_()
    Ra, Rb = reference_product_uniform(R, a, b, a * b)
    assert Ra.grad_fn is not None and not any(
        g is not None for g in torch.autograd.grad((Ra.sum() + Rb.sum()), a, allow_unused=True))


# -------------------------------------------------------------------------------------- signal takes all


@pytest.mark.parametrize("name", PRODUCT_SHAPES)
@pytest.mark.parametrize("gate_index", [0, 1])
@pytest.mark.parametrize("B,M", BM)
def test_gate_gives_everything_to_the_signal(name, gate_index, B, M):
    a, b, y, R = make_product(name, B, M, torch.float64)
    Ra, Rb = reference_product_gate(R, a, b, y, gate_index)
    signal, got, gate = (b, Rb, Ra) if gate_index == 0 else (a, Ra, Rb)
    assert gate is None
    torch.testing.assert_close(got, scatter_oracle(R, signal, y.shape), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.flatten(2).sum(-1), R.flatten(2).sum(-1), rtol=1e-12, atol=1e-12)


def test_gate_gradcheck_and_bad_index():
    a, b, y, R = make_product("se_gate", 2, 2, torch.float64)
    R.requires_grad_()
    assert torch.autograd.gradcheck(lambda R: reference_product_gate(R, a, b, y, 1)[0], (R,))
    with pytest.raises(ValueError, match="gate_index"):
        reference_product_gate(R, a, b, y, 2)


def test_operand_without_batch_axis_is_refused():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64)
    R = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="reference_affine_constant"):
        reference_product_uniform(R, x, w, x * w)
    with pytest.raises(ValueError, match=r"\(B, M"):
        reference_product_uniform(R[:, :, :2], x, x, x * x)


# ------------------------------------------------------------------------------------- constant scale / shift

# (x shape without batch, scale, shift): scale/shift as a callable of (B, dtype) so per-sample factors fit B
AFFINE_CASES = {
    "layer_scale_channels_first": ((4, 3, 5), lambda B, dt: torch.randn(4, 1, 1, dtype=dt), None),
    "layer_scale_channels_last": ((3, 5, 4), lambda B, dt: torch.randn(4, dtype=dt), None),
    "drop_path_per_sample": ((4, 3, 2), lambda B, dt: (torch.rand(B, 1, 1, 1) < 0.5).to(dt) / 0.5 + 0.1, None),
    "transform_input_scalars": ((1, 4, 5), lambda B, dt: 0.229 / 0.5, lambda B, dt: (0.485 - 0.5) / 0.5),
    "scale_and_shift_tensors": ((3, 4, 4), lambda B, dt: torch.randn(3, 1, 1, dtype=dt),
                                lambda B, dt: torch.randn(3, 1, 1, dtype=dt)),
    "shift_only": ((6, 5), lambda B, dt: None, lambda B, dt: torch.randn(5, dtype=dt)),
}


def make_affine(name, B, M, dtype):
    shape, scale_fn, shift_fn = AFFINE_CASES[name]
    x = torch.randn(B, *shape, dtype=dtype)
    scale = scale_fn(B, dtype)
    shift = None if shift_fn is None else shift_fn(B, dtype)
    return x, scale, shift, torch.randn(B, M, *shape, dtype=dtype)


def apply_affine(t, scale, shift):
    t = t if scale is None else t * scale
    return t if shift is None else t + shift


def jacobian_oracle(R, x, scale, shift, eps):
    """R_x_i = sum_j x_i W_ji R_j / stab(z_j), W the Jacobian of x -> scale x + shift for one image at a time."""
    B, M = R.shape[:2]
    out = []
    for i in range(B):
        sc = scale[i:i + 1] if isinstance(scale, torch.Tensor) and scale.dim() == x.dim() else scale

        def f(t, sc=sc):
            return apply_affine(t, sc, shift)

        W = jacobian(f, x[i:i + 1]).reshape(x[0].numel(), x[0].numel())  # W[j, i]
        z = f(x[i:i + 1]).reshape(-1)
        s = R[i].reshape(M, -1) / stab(z, eps)
        out.append(x[i].reshape(1, -1) * (s @ W))
    return torch.stack(out).view(R.shape)


@pytest.mark.parametrize("name", AFFINE_CASES)
@pytest.mark.parametrize("B,M", BM)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pass_y", [True, False])
def test_affine_matches_jacobian_oracle(name, B, M, dtype, pass_y):
    x, scale, shift, R = make_affine(name, B, M, dtype)
    y = apply_affine(x, scale, shift) if pass_y else None
    got = reference_affine_constant(R, x, y, scale, shift, eps=1e-2)
    assert got.shape == R.shape and got.dtype == dtype
    def to64(t):
        return t.double() if isinstance(t, torch.Tensor) else t

    expected = jacobian_oracle(R.double(), x.double(), to64(scale), to64(shift), 1e-2)
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5,
                                                                           atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(got.double(), expected, **tol)


@pytest.mark.parametrize("name", ["layer_scale_channels_first", "drop_path_per_sample", "transform_input_scalars"])
def test_affine_conservation(name):
    """sum R_x = sum R (y - shift) / stab(y): all of R when the shift is 0 and eps -> 0."""
    x, scale, shift, R = make_affine(name, 2, 3, torch.float64)
    for eps in (1e-12, 0.2):
        y = apply_affine(x, scale, shift)
        got = reference_affine_constant(R, x, y, scale, shift, eps).flatten(2).sum(-1)
        expected = (R * ((y if shift is None else y - shift) / stab(y, eps)).unsqueeze(1)).flatten(2).sum(-1)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        if shift is None and eps < 1e-6:
            torch.testing.assert_close(got, R.flatten(2).sum(-1), rtol=1e-9, atol=1e-9)


def test_affine_gradcheck_scale_live_shift_detached():
    x, scale, shift, R = make_affine("scale_and_shift_tensors", 2, 2, torch.float64)
    shift = shift.requires_grad_()
    args = tuple(t.clone().requires_grad_() for t in (R, x, scale))
    assert torch.autograd.gradcheck(lambda R, x, s: reference_affine_constant(R, x, None, s, shift.detach(), 0.1),
                                    args)
    y = stab(apply_affine(x, scale, shift.detach()), 0.5).requires_grad_()  # y as an independent input
    assert torch.autograd.gradcheck(lambda R, x, y, s: reference_affine_constant(R, x, y, s, None, 0.1),
                                    (*args[:2], y, args[2]))
    out = reference_affine_constant(*args[:2], None, args[2], shift, 0.1)
    g_scale, g_shift = torch.autograd.grad(out.sum(), [args[2], shift], allow_unused=True)
    assert g_scale is not None and g_shift is None
