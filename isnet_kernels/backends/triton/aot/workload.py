"""The launches the compile check records: the layers of ResNet-18, ResNet-50 and a ViT-B block at 224x224, batch
32, through the package's own launchers, in every dtype and float32 precision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

BATCH = 32
EPS = 1e-2

#: dtype labels: (torch dtype, float32 matmul precision to set, or None)
DTYPES = {"fp32": (torch.float32, "ieee"), "tf32": (torch.float32, "tf32"), "bf16": (torch.bfloat16, None),
          "fp16": (torch.float16, None), "fp64": (torch.float64, None)}


@dataclass(frozen=True)
class Conv:
    Ci: int
    Co: int
    k: int
    stride: int
    pad: int
    H: int  # input size (square)
    first: bool = False  # a model's first layer: also the Z^B rule

    @property
    def Ho(self) -> int:
        return (self.H + 2 * self.pad - self.k) // self.stride + 1


@dataclass(frozen=True)
class Linear:
    F: int  # input features (times tokens)
    K: int  # output features (times tokens)


def _resnet18() -> list:
    layers = [Conv(3, 64, 7, 2, 3, 224, first=True)]
    for Ci, Co, H in ((64, 64, 56), (64, 128, 56), (128, 256, 28), (256, 512, 14)):
        if Ci != Co:
            layers += [Conv(Ci, Co, 3, 2, 1, H), Conv(Ci, Co, 1, 2, 0, H)]
            H //= 2
        layers.append(Conv(Co, Co, 3, 1, 1, H))
    return layers + [Linear(512, 1000)]


def _resnet50() -> list:
    layers = [Conv(3, 64, 7, 2, 3, 224, first=True)]
    Ci, H = 64, 56
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        out = 4 * width
        layers += [Conv(Ci, width, 1, 1, 0, H), Conv(width, width, 3, stride, 1, H),
                   Conv(Ci, out, 1, stride, 0, H)]
        H //= stride
        layers += [Conv(width, out, 1, 1, 0, H), Conv(out, width, 1, 1, 0, H), Conv(width, width, 3, 1, 1, H)]
        Ci = out
    return layers + [Linear(2048, 1000)]


def _vit_block() -> list:
    tokens, d = 197, 768
    return [Conv(3, d, 16, 16, 0, 224, first=True), Linear(tokens * d, tokens * 3 * d), Linear(tokens * d, tokens * d),
            Linear(tokens * d, tokens * 4 * d), Linear(tokens * 4 * d, tokens * d)]


MODELS: dict[str, Callable[[], list]] = {"resnet18": _resnet18, "resnet50": _resnet50, "vit_b_block": _vit_block}
#: A probe beyond the models: the Z^B rule's tensor-core form (a first layer with 8 or more input channels).
ZBOX_DOT_PROBE = Conv(64, 64, 3, 1, 1, 56, first=True)


def _empty(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


@dataclass(frozen=True)
class Launch:
    """One launcher call: what it is (for the table's labels) and the call itself."""

    launcher: str
    model: str
    layer: str
    dtype: str
    run: Callable[[], object]


def _conv_launches(model: str, layer: Conv, dtype_name: str, dtype: torch.dtype, M: int) -> Iterator[Launch]:
    from ....ops.geometry import Geometry
    from .. import conv, elementwise

    geom = Geometry(stride=(layer.stride,) * 2, padding=(layer.pad,) * 2)
    Ho, H = layer.Ho, layer.H
    name = f"conv {layer.Ci}->{layer.Co} {layer.k}x{layer.k}/{layer.stride} @{H}"
    w = _empty(layer.Co, layer.Ci, layer.k, layer.k, dtype=dtype)
    R = _empty(BATCH, M, layer.Co, Ho, Ho, dtype=dtype)
    z = _empty(BATCH, layer.Co, Ho, Ho, dtype=dtype)
    a = _empty(BATCH, layer.Ci, H, H, dtype=dtype)
    U = _empty(BATCH, M, layer.Ci, H, H, dtype=dtype)
    G = U.view(BATCH, M, -1)
    for keep_c in (False, True):
        yield Launch("conv_epsilon_forward", model, name, dtype_name,
                     lambda keep_c=keep_c: conv.conv_epsilon_forward(R, a, z, w, (H, H), geom, EPS, keep_c))
        if layer.first:
            yield Launch("zbox_forward", model, name, dtype_name,
                         lambda keep_c=keep_c: conv.zbox_forward(R, a, a, z, w, w, (H, H), geom, EPS, keep_c))
    yield Launch("conv_epsilon_backward", model, name, dtype_name,
                 lambda: conv.conv_epsilon_backward(U, w, R, z, geom, EPS))
    for c in (None, G):
        yield Launch("epsilon_backward_input", model, name, dtype_name,
                     lambda c=c: elementwise.epsilon_backward_input(G, a.view(BATCH, -1), c))


def _linear_launches(model: str, layer: Linear, dtype_name: str, dtype: torch.dtype, M: int) -> Iterator[Launch]:
    from .. import elementwise

    name = f"linear {layer.F}->{layer.K}"
    R, z = _empty(BATCH, M, layer.K, dtype=dtype), _empty(BATCH, layer.K, dtype=dtype)
    c, a = _empty(BATCH, M, layer.F, dtype=dtype), _empty(BATCH, layer.F, dtype=dtype)
    yield Launch("stab_divide", model, name, dtype_name, lambda: elementwise.stab_divide(R, z, EPS))
    yield Launch("mul_activation", model, name, dtype_name, lambda: elementwise.mul_activation(c, a))
    yield Launch("epsilon_backward_input", model, name, dtype_name,
                 lambda: elementwise.epsilon_backward_input(c, a, c))
    yield Launch("epsilon_backward_stab", model, name, dtype_name,
                 lambda: elementwise.epsilon_backward_stab(R, R, z, EPS))
    if layer.F == layer.K:  # a residual stream
        yield Launch("residual_forward", model, name, dtype_name, lambda: elementwise.residual_forward(R, z, z, z, EPS))
        yield Launch("residual_backward", model, name, dtype_name,
                     lambda: elementwise.residual_backward(R, R, R, z, z, z, EPS))


def _resnet_extras(model: str, dtype_name: str, dtype: torch.dtype, M: int, final: int) -> Iterator[Launch]:
    """Residual sums, the stem's max-pool (3x3/2 on 64x112x112) and the head's adaptive average pooling."""
    from ....ops.pool import AvgPoolWindows
    from .. import elementwise, pool

    for N in (64 * 56 * 56, final * 7 * 7):
        R, x = _empty(BATCH, M, N, dtype=dtype), _empty(BATCH, N, dtype=dtype)
        yield Launch("residual_forward", model, f"residual {N}", dtype_name,
                     lambda R=R, x=x: elementwise.residual_forward(R, x, x, x, EPS))
        yield Launch("residual_backward", model, f"residual {N}", dtype_name,
                     lambda R=R, x=x: elementwise.residual_backward(R, R, R, x, x, x, EPS))
    C, Lo, length = 64, 56 * 56, 112 * 112
    R, z = _empty(BATCH, M, C, Lo, dtype=dtype), _empty(BATCH, C, Lo, dtype=dtype)
    idx = torch.zeros(BATCH, C, Lo, dtype=torch.int64)
    G = _empty(BATCH, M, C, length, dtype=dtype)
    yield Launch("maxpool_forward", model, "maxpool 3x3/2", dtype_name,
                 lambda: pool.maxpool_forward(R, z, idx, length, EPS))
    yield Launch("maxpool_backward", model, "maxpool 3x3/2", dtype_name,
                 lambda: pool.maxpool_backward(G, R, z, idx, EPS))
    for where, C, H, Ho, windows in ((f"adaptive avgpool {final}x7x7->1", final, 7, 1, None),
                                     ("avg_pool2d 2x2/2", 128, 56, 28, AvgPoolWindows((2, 2), (2, 2), (0, 0), False,
                                                                                       True, None))):
        R, z = _empty(BATCH, M, C, Ho, Ho, dtype=dtype), _empty(BATCH, C, Ho, Ho, dtype=dtype)
        a, G = _empty(BATCH, C, H, H, dtype=dtype), _empty(BATCH, M, C, H, H, dtype=dtype)
        yield Launch("avgpool_forward", model, where, dtype_name,
                     lambda R=R, a=a, z=z, w=windows: pool.avgpool_forward(R, a, z, w, EPS))
        yield Launch("avgpool_backward", model, where, dtype_name,
                     lambda R=R, a=a, z=z, G=G, w=windows: pool.avgpool_backward(G, R, a, z, w, EPS, True))


def launches(models: list[str], dtypes: list[str], maps: tuple[int, ...] = (1, 2)) -> Iterator[tuple[Launch, str]]:
    """Every launch of ``models`` in ``dtypes`` with each map count, with the float32 precision to set for it."""
    for dtype_name in dtypes:
        dtype, precision = DTYPES[dtype_name]
        for M in maps:
            for model in models:
                for layer in dict.fromkeys(MODELS[model]()):
                    make = _conv_launches if isinstance(layer, Conv) else _linear_launches
                    yield from ((launch, precision) for launch in make(model, layer, dtype_name, dtype, M))
                if model.startswith("resnet"):
                    final = 512 if model == "resnet18" else 2048
                    yield from ((launch, precision) for launch in _resnet_extras(model, dtype_name, dtype, M, final))
            yield from ((launch, precision) for launch in _conv_launches("probe", ZBOX_DOT_PROBE, dtype_name, dtype, M))
