"""The package's rules, registered in :data:`~isnet_kernels.lrp.registry.REGISTRY`: one builder per layer family.

Each builder turns a traced node into the step implementing its rule (docs/rules.md). Registration order is the
order of the supported-layer table (docs/layers.md).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import movement as MV
from . import steps as S
from .registry import REGISTRY, NodeContext

register = REGISTRY.register

_MAXPOOL_ARGS = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
_AVGPOOL_ARGS = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]


def _check_conv(ctx: NodeContext, layer: nn.Conv2d) -> None:
    if layer.padding_mode != "zeros":
        raise ctx.unsupported(f"Conv2d padding_mode='{layer.padding_mode}' (only 'zeros')")
    try:
        S.conv_padding(layer)
    except ValueError as exc:
        raise ctx.unsupported(f"Conv2d with {exc}") from exc


# --- linear layers ---------------------------------------------------------------------------------------------
@register(nn.Conv2d, nn.Linear, group="convolution, fully connected",
          description="`nn.Conv2d` (zero padding: numbers, `\"valid\"`, symmetric `\"same\"`; any stride, dilation, "
                      "groups), `nn.Linear` (on (B, F) or token tensors (B, T, F)); with or without bias: epsilon "
                      "(Z^B on the layers reading the input)")
def _linear(ctx: NodeContext):
    if isinstance(ctx.module, nn.Conv2d):
        _check_conv(ctx, ctx.module)
    return S.LinearBlock(ctx.name, ctx.single(), ctx.module, None)


@register(nn.modules.batchnorm._BatchNorm, group="batch normalisation",
          description="`nn.BatchNorm1d`/`2d`: folded into the `Conv2d`/`Linear` before it when that layer feeds only "
                      "it, otherwise its own diagonal epsilon layer; train and eval mode")
def _batchnorm(ctx: NodeContext):
    conv = ctx.folded_source  # the Conv2d/Linear folded into this BatchNorm, if any
    if conv is not None:
        layer = ctx.modules[conv.target]
        if isinstance(layer, nn.Conv2d):
            _check_conv(ctx, layer)
        return S.LinearBlock(ctx.name, conv.args[0].name, layer, ctx.module)
    return S.BatchNormStep(ctx.name, ctx.single(), ctx.module)


class FunctionalLayer:
    """The layer of ``F.conv2d(x, weight, bias, ...)`` / ``F.linear(x, weight, bias)`` called with parameters (or
    tensors computed from parameters alone, as a weight standardisation): what :class:`~.steps.LinearBlock` reads
    of a ``Conv2d``/``Linear``, the weight and bias taken from the forward's environment (:meth:`bind`)."""

    padding_mode = "zeros"

    def __init__(self, weight: Any, bias: Any, is_conv: bool, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 groups: int = 1):
        self._weight, self._bias, self.is_conv = weight, bias, is_conv
        self.stride, self.padding, self.dilation, self.groups = S._pair(stride), padding, S._pair(dilation), groups
        if isinstance(padding, (int, tuple, list)):
            self.padding = S._pair(padding)
        self.env: dict[str, Any] = {}

    def bind(self, env: dict[str, Any]) -> None:
        """Take the weight and bias values of this forward (the environment itself is not kept: the forward drops
        values no later node reads, a parameter node among them, before the relevance pass reads the layer)."""
        self.env = {a.name: env[a.name] for a in (self._weight, self._bias) if isinstance(a, fx.Node)}

    def _get(self, arg: Any) -> Any:
        return self.env[arg.name] if isinstance(arg, fx.Node) else arg

    @property
    def weight(self):
        return self._get(self._weight)

    @property
    def bias(self):
        return self._get(self._bias)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.weight.shape[-2:])


@register(F.conv2d, torch.conv2d, F.linear, group="convolution, fully connected",
          description="`F.conv2d` / `F.linear` called with a module's parameters (a library's `Conv2d` subclass with "
                      "its own padding logic, a weight-standardised convolution): as `nn.Conv2d` / `nn.Linear`")
def _functional_linear(ctx: NodeContext):
    conv = ctx.node.target is not F.linear
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"] if conv else \
        ["input", "weight", "bias"]
    b = ctx.bind(names, {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    ctx.constants(b)
    if not isinstance(b["weight"], fx.Node):
        raise ctx.unsupported("a weight that is not a parameter or a tensor computed from parameters")
    if conv and isinstance(b["padding"], str):
        raise ctx.unsupported("F.conv2d with string padding (give the padding as numbers)")
    padding = b["padding"] if conv else 0
    source = b["input"]
    folded = _folded_pad(source) if conv and isinstance(source, fx.Node) else None
    if folded is not None:  # F.pad(x, zeros) then F.conv2d(..., padding): one zero-padded conv of x
        padding = tuple(p + q for p, q in zip(S._pair(padding), folded))
    layer = FunctionalLayer(b["weight"], b["bias"], conv, b["stride"], padding, b["dilation"], b["groups"])
    return S.LinearBlock(ctx.name, ctx.single(), layer, None)


_CONV_ARGS = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]


def _folded_pad(node: fx.Node) -> tuple[int, int] | None:
    """``(pad_h, pad_w)`` when ``node`` is ``F.pad(x, [w, w, h, h])`` with zeros (constant mode, value 0) read only
    by ``F.conv2d`` calls with numeric padding as their input: the pad is then the convolution's own zero padding
    (a library's ``Conv2d`` subclass with its own padding logic), so that the convolution reads ``x`` and its rule,
    Z^B on the input included, is that of ``nn.Conv2d(padding=(h, w))``. None otherwise."""
    if node.op != "call_function" or node.target is not F.pad:
        return None
    bound = dict(zip(["input", "pad", "mode", "value"], node.args))
    bound.update(node.kwargs)
    pad, mode, value = bound.get("pad"), bound.get("mode", "constant"), bound.get("value")
    if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, (list, tuple)) or len(pad) != 4 \
            or not all(isinstance(p, int) for p in pad) or pad[0] != pad[1] or pad[2] != pad[3]:
        return None
    for user in node.users:
        if user.op != "call_function" or user.target not in (F.conv2d, torch.conv2d):
            return None
        args = dict(zip(_CONV_ARGS, user.args))
        args.update(user.kwargs)
        padding = args.get("padding", 0)
        if args.get("input") is not node or any(a is node for k, a in args.items() if k != "input") \
                or isinstance(padding, (str, fx.Node)):
            return None
    return (pad[2], pad[0])


# --- pass-through ----------------------------------------------------------------------------------------------
def _relu(ctx: NodeContext):
    step = S.PassStep(ctx.name, ctx.single(), F.relu)
    step.is_relu = True
    return step


register(nn.ReLU, F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_", group="ReLU",
         description="`nn.ReLU` (in place too), `F.relu`, `torch.relu`, `x.relu()`: relevance passes unchanged")(_relu)


@register(nn.Dropout, nn.Dropout2d, nn.Identity, F.dropout, F.dropout2d, "contiguous", "clone", "float", "double",
          "to", "type_as", group="pass-through",
          description="`nn.Dropout`, `nn.Dropout2d`, `F.dropout`, `nn.Identity`, `x.contiguous()`, `x.clone()`, "
                      "dtype conversions: relevance passes unchanged")
def _pass(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, (nn.Dropout, nn.Dropout2d)):
        fn = F.dropout2d if isinstance(mod, nn.Dropout2d) else F.dropout
        return S.PassStep(ctx.name, ctx.single(), lambda x, m=mod: fn(x, m.p, m.training))  # never in place
    if target in (F.dropout, F.dropout2d):
        b = ctx.bind(["input", "p", "training"], {"p": 0.5, "training": True})
        p, training = b["p"], b["training"]
        return S.PassStep(ctx.name, ctx.single(), lambda x: target(x, p, training))  # never in place
    step = MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.identity_rule, passes_input=True)
    return step


# --- element-wise non-linearities: the identity rule -----------------------------------------------------------
_ACTIVATION_MODULES = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish,
                       nn.Hardsigmoid, nn.Sigmoid, nn.Mish, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Softsign,
                       nn.LogSigmoid)
_ACTIVATION_FUNCTIONS = (F.relu6, F.leaky_relu, F.leaky_relu_, F.prelu, F.elu, F.elu_, F.celu, F.selu, F.gelu,
                         F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, torch.sigmoid, torch.sigmoid_, F.mish,
                         F.tanh, torch.tanh, torch.tanh_, F.softplus, F.hardtanh, F.hardtanh_, F.softsign)
_ACTIVATION_METHODS = ("sigmoid", "sigmoid_", "tanh", "tanh_")
#: Activations whose output is a gate in [0, 1]: a product with one is a gated signal.
GATES = (nn.Sigmoid, nn.Hardsigmoid, F.sigmoid, torch.sigmoid, torch.sigmoid_, F.hardsigmoid, "sigmoid", "sigmoid_")


@register(*_ACTIVATION_MODULES, *_ACTIVATION_FUNCTIONS, *_ACTIVATION_METHODS, group="element-wise activations",
          description="`ReLU6`, `LeakyReLU`, `PReLU`, `ELU`, `CELU`, `SELU`, `GELU`, `SiLU`, `Hardswish`, "
                      "`Hardsigmoid`, `Sigmoid`, `Mish`, `Tanh`, `Softplus`, `Hardtanh`, `Softsign`, `LogSigmoid`, as "
                      "modules, functions and methods: the identity rule (AttnLRP)")
def _activation(ctx: NodeContext):
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.identity_rule)


# --- pooling ---------------------------------------------------------------------------------------------------
@register(nn.MaxPool2d, nn.AdaptiveMaxPool2d, F.max_pool2d, F.adaptive_max_pool2d, group="max pooling",
          description="`nn.MaxPool2d`, `F.max_pool2d` (any kernel, stride, padding, dilation, `ceil_mode`), "
                      "`nn.AdaptiveMaxPool2d`, `F.adaptive_max_pool2d`: winner takes all")
def _maxpool(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise ctx.unsupported("MaxPool2d(return_indices=True) returns a tuple")
        return S.MaxPoolStep(ctx.name, ctx.single(), lambda x, m=mod: F.max_pool2d(
            x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode, return_indices=True))
    if isinstance(mod, nn.AdaptiveMaxPool2d):
        return S.MaxPoolStep(ctx.name, ctx.single(), lambda x, m=mod: F.adaptive_max_pool2d(x, m.output_size, True))
    if target is F.max_pool2d:
        b = ctx.bind(_MAXPOOL_ARGS, {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                                     "return_indices": False})
        if b["return_indices"]:
            raise ctx.unsupported("max_pool2d(return_indices=True) returns a tuple")
        ctx.constants(b)
        return S.MaxPoolStep(ctx.name, ctx.single(), lambda x: F.max_pool2d(
            x, b["kernel_size"], b["stride"], b["padding"], b["dilation"], ceil_mode=b["ceil_mode"],
            return_indices=True))
    b = ctx.bind(["input", "output_size"])
    ctx.constants(b)
    return S.MaxPoolStep(ctx.name, ctx.single(), lambda x: F.adaptive_max_pool2d(x, b["output_size"], True))


@register(nn.AvgPool2d, nn.AdaptiveAvgPool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean, "mean",
          group="average pooling",
          description="`nn.AvgPool2d`, `F.avg_pool2d` (all options), `nn.AdaptiveAvgPool2d`, "
                      "`F.adaptive_avg_pool2d`, `x.mean(dims)` / `torch.mean` over non-batch axes: epsilon with the "
                      "exact adjoint")
def _avgpool(ctx: NodeContext):
    mod, target = ctx.module, ctx.node.target
    if isinstance(mod, nn.AvgPool2d):
        return S.AvgPoolStep(ctx.name, ctx.single(), mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                             mod.count_include_pad, mod.divisor_override)
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return S.AdaptiveAvgPoolStep(ctx.name, ctx.single(), mod.output_size)
    if target is F.avg_pool2d:
        b = ctx.bind(_AVGPOOL_ARGS, {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                                     "divisor_override": None})
        ctx.constants(b)
        return S.AvgPoolStep(ctx.name, ctx.single(), b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"],
                             b["count_include_pad"], b["divisor_override"])
    if target is F.adaptive_avg_pool2d:
        b = ctx.bind(["input", "output_size"])
        ctx.constants(b)
        return S.AdaptiveAvgPoolStep(ctx.name, ctx.single(), b["output_size"])
    args, kwargs = ctx.node.args[1:], ctx.node.kwargs
    dims = args[0] if args else kwargs.get("dim")
    keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
    if dims is None or isinstance(dims, fx.Node):
        raise ctx.unsupported("mean over all axes (or computed axes); average over non-batch axes only")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if any(d == 0 for d in dims):
        raise ctx.unsupported("mean over the batch axis")
    return S.MeanStep(ctx.name, ctx.single(), dims, bool(keepdim))


# --- sums, products, constants ---------------------------------------------------------------------------------
def _scalar_or_const(ctx: NodeContext, arg: Any):
    """A function of the environment giving ``arg``'s value (a literal, a parameter or a constant tensor)."""
    if isinstance(arg, fx.Node):
        return lambda env: env[arg.name]
    return lambda env: arg


@register(operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__", "__radd__",
          operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__", group="sums",
          description="`a + b`, `a += b`, `torch.add`, `a - b` of two tensors: the residual split (relevance in "
                      "proportion to the summands); a tensor plus or minus a constant (a position embedding, "
                      "GoogLeNet's input transform): the shift absorbs its share")
def _add(ctx: NodeContext):
    node = ctx.node
    alpha = node.kwargs.get("alpha", 1)
    tensors = ctx.tensor_inputs()
    subtract = node.target in (operator.sub, operator.isub, torch.sub, "sub", "sub_", "__sub__")
    if alpha != 1:
        raise ctx.unsupported("add/sub with alpha != 1")
    if len(tensors) == 2 and len(node.args) == 2:
        return S.AddStep(ctx.name, [t.name for t in tensors], subtract=subtract)
    if len(tensors) == 1 and len(node.args) == 2:
        x_first = node.args[0] is tensors[0]
        if subtract and not x_first:
            raise ctx.unsupported("a constant minus a tensor")
        const = node.args[1] if x_first else node.args[0]
        value = _scalar_or_const(ctx, const)
        shift = (lambda env: -value(env)) if subtract else value
        return MV.AffineStep(ctx.name, tensors[0].name, ctx.call(), shift=shift)
    raise ctx.unsupported("only the sum of two tensors, or of a tensor and a constant, has a rule")


@register(torch.sum, "sum", group="sums",
          description="`x.sum(dims)` / `torch.sum` over non-batch axes (ResNeSt's radix splits): epsilon with "
                      "weights 1, relevance in proportion to the summands")
def _sum(ctx: NodeContext):
    b = ctx.bind(["input", "dim", "keepdim"], {"dim": None, "keepdim": False})
    ctx.constants(b)
    dims = b["dim"]
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        raise ctx.unsupported("a sum over all axes (the batch axis too); sum over non-batch axes only")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        raise ctx.unsupported("a sum over named or computed axes; give the axes as integers")
    if 0 in dims:
        raise ctx.unsupported("a sum over the batch axis")
    return S.SumStep(ctx.name, ctx.single(), dims, ctx.call())


@register(operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__", operator.truediv,
          torch.div, "div", "div_", "__truediv__", group="products",
          description="`a * b` of two activations: signal takes all for a gate (`x * sigmoid(...)`, squeeze-"
                      "excitation; `x * softmax(...)`, split attention; also through reshapes of the gate; "
                      "`product=\"uniform\"` for AttnLRP's uniform rule), the uniform rule otherwise; a "
                      "tensor times or divided by a constant (layer scale, GoogLeNet's input transform): diagonal "
                      "epsilon")
def _mul(ctx: NodeContext):
    node = ctx.node
    tensors = ctx.tensor_inputs()
    divide = node.target in (operator.truediv, torch.div, "div", "div_", "__truediv__")
    if node.kwargs.get("rounding_mode") is not None or len(node.args) != 2:
        raise ctx.unsupported("only the product or quotient of two operands has a rule")
    if len(tensors) == 2:
        if divide:
            raise ctx.unsupported("the quotient of two activations")
        a, b = tensors
        gate = 1 if b.name in ctx.gates else 0 if a.name in ctx.gates else None
        return MV.ProductStep(ctx.name, [a.name, b.name], gate)
    if len(tensors) == 1:
        x_first = node.args[0] is tensors[0]
        if divide and not x_first:
            raise ctx.unsupported("a constant divided by a tensor")
        value = _scalar_or_const(ctx, node.args[1] if x_first else node.args[0])
        scale = (lambda env: 1.0 / value(env)) if divide else value
        return MV.AffineStep(ctx.name, tensors[0].name, ctx.call(), scale=scale)
    raise ctx.unsupported("no operand carries relevance")


def _stochastic_depth(ctx: NodeContext):
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.ratio_rule)


# --- concatenation and data movement ---------------------------------------------------------------------------
@register(torch.cat, torch.concat, torch.concatenate, group="concatenation",
          description="`torch.cat` / `torch.concat` along a non-batch axis, also with constant parts (a class "
                      "token): relevance split back into the parts")
def _cat(ctx: NodeContext):
    b = ctx.bind(["tensors", "dim"], {"dim": 0})
    parts, dim = b["tensors"], b["dim"]
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts):
        raise ctx.unsupported("torch.cat needs a list of tensors")
    if not isinstance(dim, int) or dim == 0:
        raise ctx.unsupported("concatenation along the batch axis")
    carrying = [not ctx.is_constant(p) for p in parts]
    if all(carrying):
        return S.CatStep(ctx.name, [p.name for p in parts], dim)
    inputs = [p.name for p, c in zip(parts, carrying) if c]  # a tensor given twice gets both slices, summed
    return MV.CatParts(ctx.name, inputs, ctx.call(), [p.name for p in parts], carrying, dim)


@register(nn.Flatten, nn.Unflatten, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "view", "reshape",
          "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", group="shape",
          description="`nn.Flatten`, `torch.flatten`, `x.view`, `x.reshape`, `unflatten`, `squeeze`, `unsqueeze`, "
                      "keeping the batch axis; size arithmetic (`x.size(0)`, `x.shape`)")
def _reshape(ctx: NodeContext):
    source = ctx.tensor_inputs()[0].name if ctx.tensor_inputs() else ctx.single()
    if ctx.module is not None and isinstance(ctx.module, nn.Flatten):
        mod = ctx.module
        return S.ReshapeStep(ctx.name, source, lambda env: mod(env[source]))
    call = ctx.call()
    if len(ctx.tensor_inputs()) != 1:
        raise ctx.unsupported("a reshape whose target shape is computed from another tensor")
    return MV.CallStep(ctx.name, [source], _batch_kept(ctx.name, source, call), MV.reshape_rule, passes_input=True)


def _batch_kept(name: str, source: str, call):
    def run(env: dict[str, Any]):
        out = call(env)
        MV._check_batch(name, env[source], out)
        return out

    return run


@register(torch.permute, "permute", torch.transpose, torch.swapaxes, torch.swapdims, "transpose", "swapaxes",
          "swapdims", group="data movement",
          description="`permute`, `transpose`, `swapaxes` (batch axis kept), `expand`, indexing and slicing "
                      "(`x[:, 0]`, `x[..., :k]`), `chunk`/`split`/`unbind` with `parts[i]`, `torch.roll`, `F.pad`: "
                      "relevance follows the op's adjoint (conserved)")
def _permute(ctx: NodeContext):
    node = ctx.node
    source = ctx.single()
    if node.target in (torch.permute, "permute"):
        dims = node.args[1:] if node.op == "call_method" else node.args[1]
        if node.op == "call_method" and len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        dims = list(node.kwargs.get("dims", dims))
        if not all(isinstance(d, int) for d in dims):
            raise ctx.unsupported("a permutation with computed axes")
        if dims[0] % len(dims) != 0:
            if _selected_along_first(node, dims):  # qkv.permute(2, 0, 3, 1, 4) then q, k, v = qkv.unbind(0)
                return S.TupleNode(ctx.name, _select_part(source, [d % len(dims) for d in dims]))
            raise ctx.unsupported("a permutation that moves the batch axis (other than to axis 1 with the new "
                                  "axis 0 then taken apart by unbind(0) or [i], as attention's q, k, v)")
        return MV.CallStep(ctx.name, [source], ctx.call(), MV.permute_rule(dims), passes_input=True)
    b = ctx.bind(["input", "dim0", "dim1"])
    d0, d1 = b["dim0"], b["dim1"]
    if not (isinstance(d0, int) and isinstance(d1, int)) or d0 == 0 or d1 == 0:
        raise ctx.unsupported("a transpose of the batch axis")
    return MV.CallStep(ctx.name, [source], ctx.call(), MV.transpose_rule(d0, d1), passes_input=True)


def _selected_along_first(node: fx.Node, dims: list[int]) -> bool:
    """Whether ``x.permute(dims)`` puts the batch axis at 1 and its result is only taken apart along the new axis
    0, by ``[i]`` or ``unbind(0)`` (the q, k, v split of attention as timm and many ViTs write it)."""
    if len(dims) < 3 or dims[1] % len(dims) != 0 or not node.users:
        return False
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            continue
        if user.target in ("unbind", torch.unbind) and user.args[0] is node:
            dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
            if dim == 0:
                continue
        return False
    return True


def _select_part(source: str, dims: list[int]):
    """The parts ``x.permute(dims)[i]`` of :func:`_selected_along_first`: ``x.select(s, i).permute(rest)`` with
    ``s = dims[0]``, each a data-movement step (relevance permuted back and put in slice ``i`` of axis ``s``)."""
    s = dims[0]
    rest = [d - 1 if d > s else d for d in dims[1:]]

    def part(item_ctx: NodeContext, index: Any):
        if not isinstance(index, int):
            raise item_ctx.unsupported("a slice of the parts of a permuted tensor (take them one by one)")

        def call(env: dict[str, Any]):
            return env[source].select(s, index).permute(rest)

        def rule(R, inputs, out, cfg):
            x = inputs[0]
            inverse = [0] * len(rest)
            for j, p in enumerate(rest):
                inverse[p] = j
            back = R.permute(0, 1, *[inverse[j] + 1 for j in range(1, len(rest))])
            full = R.new_zeros(R.shape[:2] + x.shape[1:])
            full.select(s + 1, index).copy_(back)
            return [full]

        return MV.CallStep(item_ctx.name, [source], call, rule, passes_input=True)

    return part


@register(getattr, group="data movement", description="")
def _attribute(ctx: NodeContext):
    """``x.mT`` (the transpose of the last two axes); other attributes of an activation have no rule."""
    name = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    if name != "mT":
        raise ctx.unsupported(f"the attribute {name!r} of an activation (x.mT, sizes, x.device and x.dtype have "
                             "rules)")
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.transpose_rule(-2, -1), passes_input=True)


@register(MV.tokens_channels_first, group="batch normalisation",
          description="`bn(x.flatten(0, 1)).reshape_as(x)` on tokens (B, N, C), a BatchNorm1d with the batch axis "
                      "merged (timm's LeViT): run as `bn(x.transpose(1, 2)).transpose(1, 2)`, the standalone rule")
def _tokens_channels_first(ctx: NodeContext):
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.transpose_rule(1, 2), passes_input=True)


@register("expand", "expand_as", group="data movement", description="")
def _expand(ctx: NodeContext):
    return MV.CallStep(ctx.name, [ctx.single()], _batch_kept(ctx.name, ctx.single(), ctx.call()), MV.expand_rule,
                       passes_input=True)


@register(torch.roll, "roll", group="data movement", description="")
def _roll(ctx: NodeContext):
    b = ctx.bind(["input", "shifts", "dims"], {"dims": None})
    ctx.constants(b)
    if b["dims"] is None:
        raise ctx.unsupported("roll of the flattened tensor (give dims)")
    dims = [b["dims"]] if isinstance(b["dims"], int) else list(b["dims"])
    if any(d == 0 for d in dims):
        raise ctx.unsupported("roll along the batch axis")
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.roll_rule(b["shifts"], b["dims"]), passes_input=True)


@register(F.pad, group="data movement", description="")
def _pad(ctx: NodeContext):
    b = ctx.bind(["input", "pad", "mode", "value"], {"mode": "constant", "value": None})
    ctx.constants(b)
    if b["mode"] != "constant":
        raise ctx.unsupported(f"F.pad mode {b['mode']!r} (only 'constant')")
    if _folded_pad(ctx.node) is not None:  # the convolutions reading it pad x themselves: its value is x
        source = ctx.single()
        return MV.CallStep(ctx.name, [source], lambda env: env[source], MV.identity_rule, passes_input=True)
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.pad_rule(list(b["pad"])), passes_input=True)


@register(operator.getitem, group="data movement", description="")
def _getitem(ctx: NodeContext):
    node = ctx.node
    src, index = node.args
    producer = ctx.producers.get(src.name) if isinstance(src, fx.Node) else None
    if producer is not None:  # a part of chunk/split/unbind, or the first output of a tuple-valued layer
        return producer(ctx, index)
    if isinstance(index, fx.Node) or (isinstance(index, tuple) and any(isinstance(i, fx.Node) for i in index)):
        raise ctx.unsupported("indexing with a computed index")
    why = MV.check_index(index)
    if why is not None:
        raise ctx.unsupported(why)
    return MV.CallStep(ctx.name, [ctx.single()], ctx.call(), MV.index_rule(index), passes_input=True)


@register(torch.chunk, torch.split, torch.unbind, "chunk", "split", "unbind", group="data movement",
          description="")
def _split(ctx: NodeContext):
    node = ctx.node
    if node.target in (torch.unbind, "unbind"):
        b = ctx.bind(["input", "dim"], {"dim": 0})
    elif node.target in (torch.chunk, "chunk"):
        b = ctx.bind(["input", "chunks", "dim"], {"dim": 0})
    else:
        b = ctx.bind(["input", "split_size_or_sections", "dim"], {"dim": 0})
    ctx.constants(b, skip=("input", "tensor"))
    src = b.get("input", b.get("tensor"))
    producer = ctx.producers.get(src.name) if isinstance(src, fx.Node) else None
    if producer is not None and b["dim"] == 0 and node.target in (torch.unbind, "unbind"):
        return S.TupleNode(ctx.name, producer)  # the parts of a permutation that moved the batch axis to 1
    if b["dim"] == 0:
        raise ctx.unsupported("splitting the batch axis")
    source, call, dim = ctx.single(), ctx.call(), b["dim"]

    def part(item_ctx: NodeContext, index: Any):
        if not isinstance(index, int):
            raise item_ctx.unsupported("a slice of the parts of a split (take them one by one)")
        return MV.PartStep(item_ctx.name, source, call, index, dim)

    return S.TupleNode(ctx.name, part)


register("torchvision.ops.stochastic_depth.stochastic_depth", "torchvision.ops.stochastic_depth.StochasticDepth",
         group="stochastic depth", description="torchvision's `stochastic_depth` / `StochasticDepth`: the diagonal "
         "epsilon rule of its scaling (zero for a dropped path)")(_stochastic_depth)

# the steps still to register (norms, attention) live in their own modules
from . import attention_layers as _attention_layers  # noqa: E402,F401
from . import einsum_layers as _einsum_layers  # noqa: E402,F401
from . import norm_layers as _norm_layers  # noqa: E402,F401
from . import swin_layers as _swin_layers  # noqa: E402,F401
