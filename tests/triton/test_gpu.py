"""The backends on CUDA tensors (compiled Triton kernels, not the interpreter), part of ``make gpu-check``.

Each fused primitive of the triton backend, and its plain-PyTorch composition (the ``torch`` backend's), is run
on CUDA in fp32 at IEEE and at TF32 precision, bf16 and fp16, and compared with the float64 composition
(:class:`isnet_kernels.ops.fused.FusedReference`) normwise: ``max |out - ref| / max |ref|``. The triton
kernel must be at most twice as far from float64 as the torch backend in the same dtype, plus a floor for the
dtype (the kernels accumulate in float32 where torch may not). The short-K case (an RGB and a grayscale first
layer, the CUDA-core path of the epsilon backward) is checked on its own: a term counted twice or eight times shows
as a median ratio to the reference of 2 or 8. A whole explanation of a ResNet-18 runs on ``triton`` against
``reference``. Skipped without a CUDA device or under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                                reason="needs a CUDA device and compiled kernels (TRITON_INTERPRET unset or 0)")

from isnet_kernels.backends.triton import TritonPrimitives  # noqa: E402
from isnet_kernels.ops.fused import FusedReference  # noqa: E402
from isnet_kernels.ops.primitives import Geometry  # noqa: E402

#: (label, dtype, float32 precision)
PRECISIONS = [("fp32", torch.float32, "ieee"), ("tf32", torch.float32, "tf32"), ("bf16", torch.bfloat16, "ieee"),
              ("fp16", torch.float16, "ieee")]
#: Error floors by label (normwise): what float32 accumulation of rounded inputs allows.
FLOOR = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 2e-2, "fp16": 3e-3}
EPS = 0.25  # large enough that fp16 terms R / eps^2 stay finite


@pytest.fixture
def precision(request):
    label, dtype, fp32 = request.param
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = fp32
    yield label, dtype
    torch.backends.cuda.matmul.fp32_precision = saved


def _error(out, ref) -> float:
    worst = 0.0
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        if o is None:
            continue
        r = r.double()
        worst = max(worst, float((o.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)))
    return worst


def _conv_case(Ci: int, Co: int, k: int, stride: int, pad: int, H: int, M: int = 2, B: int = 2):
    a = torch.randn(B, Ci, H, H, dtype=torch.float64, device="cuda")
    w = torch.randn(Co, Ci, k, k, dtype=torch.float64, device="cuda") / (Ci * k * k) ** 0.5
    z = F.conv2d(a, w, None, stride, pad)
    R = torch.randn(B, M, *z.shape[1:], dtype=torch.float64, device="cuda")
    U = torch.randn(B, M, Ci, H, H, dtype=torch.float64, device="cuda")
    return a, w, z, R, U, Geometry(stride=(stride, stride), padding=(pad, pad))


CONVS = {"rgb-7x7/2": (3, 64, 7, 2, 3, 32), "gray-3x3": (1, 16, 3, 1, 1, 28), "3x3": (64, 64, 3, 1, 1, 14),
         "3x3/2": (64, 128, 3, 2, 1, 14), "1x1/2": (64, 128, 1, 2, 0, 14)}


def _calls(case):
    a, w, z, R, U, geom = case
    s = R / (z + EPS * torch.where(z >= 0, 1.0, -1.0)).unsqueeze(1)
    size = tuple(a.shape[-2:])
    return {"conv_epsilon_forward": (R, a, z, w, size, geom, EPS, True),
            "zbox_forward": (R, a, -a, z, w.clamp(min=0), w.clamp(max=0), size, geom, EPS, True),
            "conv_epsilon_backward": (U, w, s, z, geom, EPS)}


@pytest.mark.parametrize("precision", PRECISIONS, indirect=True, ids=[p[0] for p in PRECISIONS])
@pytest.mark.parametrize("conv", list(CONVS))
def test_fused_convolutions_on_cuda(precision, conv: str) -> None:
    label, dtype = precision
    ref64 = FusedReference()
    triton_prims = TritonPrimitives(fallback=False)
    for name, args in _calls(_conv_case(*CONVS[conv])).items():
        ref = getattr(ref64, name)(*args)
        cast = tuple(x.to(dtype) if isinstance(x, torch.Tensor) else x for x in args)
        torch_err = _error(getattr(ref64, name)(*cast), ref)
        triton_err = _error(getattr(triton_prims, name)(*cast), ref)
        assert triton_err <= 2 * torch_err + FLOOR[label], (name, conv, label, triton_err, torch_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("conv", ["rgb-7x7/2", "gray-3x3"])
def test_first_layer_backward_counts_each_term_once(dtype: torch.dtype, conv: str) -> None:
    """The short-K case: dR of the epsilon backward through an RGB / grayscale first layer against float64."""
    from isnet_kernels.backends.triton import conv as conv_kernels

    a, w, z, R, U, geom = _conv_case(*CONVS[conv])
    s = R / (z + EPS * torch.where(z >= 0, 1.0, -1.0)).unsqueeze(1)
    ref_dR, _ = FusedReference().conv_epsilon_backward(U, w, s, z, geom, EPS)
    dR, _ = conv_kernels.conv_epsilon_backward(U.to(dtype), w.to(dtype), s.to(dtype), z.to(dtype), geom, EPS)
    big = ref_dR.abs() > 1e-2 * ref_dR.abs().max()
    ratio = (dR.double()[big] / ref_dR[big]).median().item()
    assert abs(ratio - 1) < 1e-2, f"median dR / reference = {ratio:.3f} (2 or 8: a term counted 2x / 8x)"
    assert _error(dR, ref_dR) < {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 3e-2)


@pytest.mark.parametrize("precision", PRECISIONS, indirect=True, ids=[p[0] for p in PRECISIONS])
def test_elementwise_and_pooling_on_cuda(precision) -> None:
    from isnet_kernels.ops.pool import AvgPoolWindows

    label, dtype = precision
    B, M, C, H = 2, 3, 16, 14
    d = dict(dtype=torch.float64, device="cuda")
    R, x = torch.randn(B, M, C * H * H, **d), torch.randn(B, C * H * H, **d)
    z = x + 0.5 * torch.sign(x)
    Rp, ap = torch.randn(B, M, C, 7, 7, **d), torch.randn(B, C, H, H, **d)
    zp = F.avg_pool2d(ap, 2, 2)
    windows = AvgPoolWindows((2, 2), (2, 2), (0, 0))
    calls = {"stab_divide": (R, z, EPS), "mul_activation": (R, x), "epsilon_backward_input": (R, x, R),
             "epsilon_backward_stab": (R, R, z, EPS), "residual_forward": (R, x, x, z, EPS),
             "residual_backward": (R, R, R, x, x, z, EPS), "avgpool_forward": (Rp, ap, zp, windows, EPS),
             "avgpool_backward": (torch.randn(B, M, C, H, H, **d), Rp, ap, zp, windows, EPS, True)}
    ref64, triton_prims = FusedReference(), TritonPrimitives(fallback=False)
    for name, args in calls.items():
        ref = getattr(ref64, name)(*args)
        cast = tuple(v.to(dtype) if isinstance(v, torch.Tensor) else v for v in args)
        torch_err = _error(getattr(ref64, name)(*cast), ref)
        assert _error(getattr(triton_prims, name)(*cast), ref) <= 2 * torch_err + FLOOR[label], (name, label)


def test_explain_resnet18_triton_matches_reference() -> None:
    from isnet_kernels import explain
    from isnet_kernels.models import build_model

    model = build_model("resnet18", 10).cuda().eval()  # torchvision's
    x = torch.rand(2, 3, 64, 64, device="cuda")
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            ref = explain(model, x, backend="reference")
            out = explain(model, x, backend="triton")
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved
    assert _error(out, ref) < 1e-3


def test_launch_follows_the_tensor_device() -> None:
    """A tensor on the last GPU while the first is current launches there (the device guard)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from isnet_kernels.backends.triton import elementwise

    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    R, z = torch.randn(2, 3, 100, device=dev), torch.rand(2, 100, device=dev) + 1
    with torch.cuda.device(0):
        out = elementwise.stab_divide(R, z, EPS)
    torch.testing.assert_close(out, R / (z + EPS).unsqueeze(1))
