"""Trace a classifier with ``torch.fx`` once and compile it into a relevance program.

The compiler walks the traced graph, folds each BatchNorm into the ``Conv2d``/``Linear`` right before it, marks
the layers that read the input (Z^B rule) and the one that produces the logits (the output rule), and turns
every node into a :class:`~isnet_kernels.lrp.steps.Step`. Nodes that only compute shapes (``x.size(0)``) are
evaluated as they are. Anything else raises :class:`~isnet_kernels.errors.UnsupportedLayerError` here, before any
data flows, naming the node, its module path and type.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError
from . import steps as S

SUPPORTED = (
    "nn.Conv2d (zero padding; any stride, dilation, groups), nn.Linear, nn.BatchNorm1d/2d (folded into the "
    "preceding Conv2d/Linear, or on its own), nn.ReLU / F.relu / torch.relu (in-place too), nn.MaxPool2d / "
    "F.max_pool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d / F.avg_pool2d, nn.AdaptiveAvgPool2d / "
    "F.adaptive_avg_pool2d, x.mean(spatial dims), residual `+` / torch.add / `+=` of two tensors, torch.cat, "
    "nn.Flatten / torch.flatten / view / reshape (batch axis kept), nn.Dropout / F.dropout, nn.Identity, "
    "x.contiguous()"
)

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_DROPOUT_FUNCS = {F.dropout, F.dropout2d}
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRS = {"shape", "ndim"}


@dataclass
class Program:
    """A compiled relevance program: steps in forward order, plus what the runner needs to know."""

    graph_module: fx.GraphModule
    input_name: str
    output_name: str  # the node whose value the model returns
    logits_step: S.LinearBlock  # the layer whose output rule starts the relevance pass
    logits_index: int  # its position in ``steps``: the relevance pass walks the steps before it
    steps: list[Any]  # S.Step or _ShapeNode, forward order
    last_use: dict[str, int] = field(default_factory=dict)  # node name -> index of its last forward reader


@dataclass
class _ShapeNode:
    """A node that computes sizes or other non-tensor values: evaluated, carries no relevance."""

    name: str
    fn: Callable[[dict[str, Any]], Any]
    inputs: list[str]


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack.values())[-1][0]) or "<root>"
    return "<root>"


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        what = type(modules[node.target]).__name__
    elif node.op == "call_function":
        what = getattr(node.target, "__name__", str(node.target))
    elif node.op == "call_method":
        what = f"Tensor.{node.target}"
    else:
        what = f"{node.op} {node.target}"
    return f"node '{node.name}' ({what}) in module '{_module_path(node)}'"


def _unsupported(node: fx.Node, modules: dict[str, nn.Module], why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"{_describe(node, modules)}: {why}. Supported: {SUPPORTED}. Replace the layer by a supported one or "
        "express it with them."
    )


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` the model, turning tracing failures into :class:`UnsupportedLayerError`."""
    root = nn.Sequential(model) if isinstance(model, (nn.Linear, nn.Conv2d)) else model
    try:
        return fx.symbolic_trace(root)
    except Exception as exc:  # fx raises many types: TraceError, TypeError, NotImplementedError, ...
        raise UnsupportedLayerError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. The LRP engine needs a "
            "model whose forward has no data-dependent Python control flow (if/for on tensor values) and calls only "
            f"traceable operations. Supported: {SUPPORTED}."
        ) from exc


def _arg_fn(arg: Any) -> Callable[[dict[str, Any]], Any]:
    """A function of the environment that rebuilds ``arg`` (a node, a constant or a nested container of them)."""
    nodes: list[str] = []
    fx.node.map_arg(arg, lambda n: nodes.append(n.name))
    if not nodes:
        return lambda env: arg
    return lambda env: fx.node.map_arg(arg, lambda n: env[n.name])


def _tensor_inputs(node: fx.Node, shape_nodes: set[str]) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if n.name not in shape_nodes else None)
    return found


def _bind(args: tuple, kwargs: dict, names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


_MAXPOOL_ARGS = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
_AVGPOOL_ARGS = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]


def _is_shape_node(node: fx.Node, shape_nodes: set[str]) -> bool:
    """Whether ``node`` computes a size or another non-tensor value."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS:
        return True
    if node.op in ("call_function", "call_method"):
        inputs: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), inputs.append)
        return bool(inputs) and all(n.name in shape_nodes for n in inputs)
    return False


def compile_model(model: nn.Module) -> Program:
    """Trace ``model`` and compile its relevance program (see the module docstring)."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    users = {n.name: len(n.users) for n in nodes}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs; the LRP engine explains models with "
            "exactly one input tensor (B, C, H, W)")
    input_name = placeholders[0].name
    shape_nodes: set[str] = set()
    steps: list[Any] = []
    by_name: dict[str, Any] = {}
    folded: dict[str, fx.Node] = {}  # conv/linear node name -> its BatchNorm node
    output_node = None

    # BatchNorm folding: a BatchNorm whose input is a Conv2d/Linear read by nothing else.
    for node in nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            src = node.args[0] if node.args else None
            if (isinstance(src, fx.Node) and src.op == "call_module"
                    and isinstance(modules[src.target], (nn.Conv2d, nn.Linear)) and users[src.name] == 1):
                folded[src.name] = node

    for node in nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            output_node = node
            continue
        if node.op == "get_attr":
            raise _unsupported(node, modules, "raw parameters or buffers used in the forward have no relevance rule")
        if _is_shape_node(node, shape_nodes):
            shape_nodes.add(node.name)
            inputs = []
            fx.node.map_arg((node.args, node.kwargs), lambda n, acc=inputs: acc.append(n.name))
            steps.append(_ShapeNode(node.name, _shape_fn(node), inputs))
            continue
        if node.name in folded:
            continue  # runs inside its BatchNorm's block
        step = _make_step(node, modules, shape_nodes, folded)
        steps.append(step)
        by_name[step.name] = step

    assert output_node is not None
    out_arg = output_node.args[0]
    if not isinstance(out_arg, fx.Node):
        raise UnsupportedLayerError(
            f"{type(model).__name__}.forward returns {type(out_arg).__name__}; the LRP engine needs a single logits "
            "tensor (B, K)")
    logits_step = _find_logits_step(out_arg, by_name, modules)
    logits_step.output = True
    for step in steps:
        if isinstance(step, S.LinearBlock) and _reads_input(step.inputs[0], by_name, input_name):
            step.first = True
    program = Program(gm, input_name, out_arg.name, logits_step, steps.index(logits_step), steps)
    for i, step in enumerate(steps):
        for name in step.inputs:
            program.last_use[name] = i
    return program


def _reads_input(name: str, by_name: dict[str, Any], input_name: str) -> bool:
    """Whether ``name`` is the model input seen through views, dropout or identity only."""
    while name != input_name:
        step = by_name.get(name)
        if not isinstance(step, (S.PassStep, S.ReshapeStep)) or getattr(step, "is_relu", False):
            return False
        name = step.inputs[0]
    return True


def _find_logits_step(node: fx.Node, by_name: dict[str, Any], modules: dict[str, nn.Module]) -> S.LinearBlock:
    name = node.name
    while True:
        step = by_name.get(name)
        if isinstance(step, S.LinearBlock) and not step.is_conv:
            return step
        if isinstance(step, (S.PassStep, S.ReshapeStep)) and not getattr(step, "is_relu", False):
            name = step.inputs[0]
            continue
        raise _unsupported(node, modules, "the logits must be produced by an nn.Linear (optionally followed by "
                                          "BatchNorm1d, dropout or identity), where the output rule starts")


def _shape_fn(node: fx.Node) -> Callable[[dict[str, Any]], Any]:
    args_fn, kwargs_fn = _arg_fn(node.args), _arg_fn(node.kwargs)
    if node.op == "call_method":
        method = node.target
        return lambda env: getattr(args_fn(env)[0], method)(*args_fn(env)[1:], **kwargs_fn(env))
    target = node.target
    return lambda env: target(*args_fn(env), **kwargs_fn(env))


def _make_step(node: fx.Node, modules: dict[str, nn.Module], shape_nodes: set[str], folded: dict[str, fx.Node]):
    """Turn one traced node into its relevance step, or raise UnsupportedLayerError."""
    tensors = _tensor_inputs(node, shape_nodes)
    name = node.name

    def single() -> str:
        return _single_of(node, shape_nodes, modules)

    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            src = node.args[0]
            conv_node = src if isinstance(src, fx.Node) and folded.get(src.name) is node else None
            if conv_node is not None:
                layer = modules[conv_node.target]
                _check_layer(conv_node, layer, modules)
                return S.LinearBlock(name, _single_of(conv_node, shape_nodes, modules), layer, mod)
            return S.BatchNormStep(name, single(), mod)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            _check_layer(node, mod, modules)
            return S.LinearBlock(name, single(), mod, None)
        if isinstance(mod, nn.ReLU):
            step = S.PassStep(name, single(), F.relu)
            step.is_relu = True
            return step
        if isinstance(mod, (nn.Dropout, nn.Dropout2d)):
            fn = F.dropout2d if isinstance(mod, nn.Dropout2d) else F.dropout
            return S.PassStep(name, single(), lambda x, m=mod: fn(x, m.p, m.training))  # never in place
        if isinstance(mod, nn.Identity):
            return S.PassStep(name, single(), lambda x: x)
        if isinstance(mod, nn.Flatten):
            source = single()
            return S.ReshapeStep(name, source, lambda env: mod(env[source]))
        if isinstance(mod, nn.MaxPool2d):
            if mod.return_indices:
                raise _unsupported(node, modules, "MaxPool2d(return_indices=True) returns a tuple")
            return S.MaxPoolStep(name, single(), lambda x, m=mod: F.max_pool2d(
                x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode, return_indices=True))
        if isinstance(mod, nn.AdaptiveMaxPool2d):
            return S.MaxPoolStep(name, single(), lambda x, m=mod: F.adaptive_max_pool2d(x, m.output_size, True))
        if isinstance(mod, nn.AvgPool2d):
            return S.AvgPoolStep(name, single(), mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                 mod.count_include_pad, mod.divisor_override)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return S.AdaptiveAvgPoolStep(name, single(), mod.output_size)
        raise _unsupported(node, modules, "no relevance rule for this layer type")

    target = node.target
    args_fn, kwargs_fn = _arg_fn(node.args), _arg_fn(node.kwargs)
    if node.op == "call_function":
        if target in _RELU_FUNCS:
            step = S.PassStep(name, single(), F.relu)
            step.is_relu = True
            return step
        if target in _ADD_FUNCS:
            alpha = node.kwargs.get("alpha", 1)
            if len(tensors) != 2 or alpha != 1 or len(node.args) != 2:
                raise _unsupported(node, modules, "only the sum of two tensors (a residual connection) is supported")
            return S.AddStep(name, [t.name for t in tensors])
        if target in _CAT_FUNCS:
            parts = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts):
                raise _unsupported(node, modules, "torch.cat needs a list of tensors")
            if not isinstance(dim, int) or dim == 0:
                raise _unsupported(node, modules, "concatenation along the batch axis")
            return S.CatStep(name, [p.name for p in parts], dim)
        if target in _RESHAPE_FUNCS:
            return S.ReshapeStep(name, single(), lambda env: target(*args_fn(env), **kwargs_fn(env)))
        if target in _DROPOUT_FUNCS:
            b = _bind(node.args, node.kwargs, ["input", "p", "training"], {"p": 0.5, "training": True})
            p, training = b["p"], b["training"]
            return S.PassStep(name, single(), lambda x: target(x, p, training))  # never in place
        if target is F.max_pool2d:
            b = _bind(node.args, node.kwargs, _MAXPOOL_ARGS, {"stride": None, "padding": 0, "dilation": 1,
                                                              "ceil_mode": False, "return_indices": False})
            if b["return_indices"]:
                raise _unsupported(node, modules, "max_pool2d(return_indices=True) returns a tuple")
            _constants(node, modules, b)
            return S.MaxPoolStep(name, single(), lambda x: F.max_pool2d(
                x, b["kernel_size"], b["stride"], b["padding"], b["dilation"], ceil_mode=b["ceil_mode"],
                return_indices=True))
        if target is F.avg_pool2d:
            b = _bind(node.args, node.kwargs, _AVGPOOL_ARGS, {"stride": None, "padding": 0, "ceil_mode": False,
                                                              "count_include_pad": True, "divisor_override": None})
            _constants(node, modules, b)
            return S.AvgPoolStep(name, single(), b["kernel_size"], b["stride"], b["padding"], b["ceil_mode"],
                                 b["count_include_pad"], b["divisor_override"])
        if target is F.adaptive_avg_pool2d:
            b = _bind(node.args, node.kwargs, ["input", "output_size"], {})
            _constants(node, modules, b)
            return S.AdaptiveAvgPoolStep(name, single(), b["output_size"])
        if target is F.adaptive_max_pool2d:
            b = _bind(node.args, node.kwargs, ["input", "output_size"], {})
            _constants(node, modules, b)
            return S.MaxPoolStep(name, single(), lambda x: F.adaptive_max_pool2d(x, b["output_size"], True))
        if target is torch.mean:
            return _mean_step(node, modules, single(), node.args[1:], node.kwargs)
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            step = S.PassStep(name, single(), F.relu)
            step.is_relu = True
            return step
        if target in ("add", "add_", "__add__", "__iadd__"):
            if len(tensors) != 2 or node.kwargs.get("alpha", 1) != 1:
                raise _unsupported(node, modules, "only the sum of two tensors (a residual connection) is supported")
            return S.AddStep(name, [t.name for t in tensors])
        if target in ("view", "reshape", "flatten"):
            return S.ReshapeStep(name, single(), lambda env: getattr(args_fn(env)[0], target)(
                *args_fn(env)[1:], **kwargs_fn(env)))
        if target == "contiguous":
            return S.PassStep(name, single(), lambda x: x.contiguous())
        if target == "mean":
            return _mean_step(node, modules, single(), node.args[1:], node.kwargs)
    raise _unsupported(node, modules, "no relevance rule for this operation")


def _single_of(node: fx.Node, shape_nodes: set[str], modules: dict[str, nn.Module]) -> str:
    tensors = _tensor_inputs(node, shape_nodes)
    if len(tensors) != 1:
        raise _unsupported(node, modules, f"expected one tensor input, found {len(tensors)}")
    return tensors[0].name


def _check_layer(node: fx.Node, layer: nn.Module, modules: dict[str, nn.Module]) -> None:
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise _unsupported(node, modules, f"Conv2d padding_mode='{layer.padding_mode}' (only 'zeros')")
        try:
            S.conv_padding(layer)
        except ValueError as exc:
            raise _unsupported(node, modules, f"Conv2d with {exc}") from exc


def _constants(node: fx.Node, modules: dict[str, nn.Module], bound: dict[str, Any]) -> None:
    for key, value in bound.items():
        if key != "input" and isinstance(value, fx.Node):
            raise _unsupported(node, modules, f"argument '{key}' must be a constant, not computed in the forward")


def _mean_step(node: fx.Node, modules: dict[str, nn.Module], input_name: str, args: tuple, kwargs: dict):
    dims = args[0] if args else kwargs.get("dim")
    keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
    if dims is None or isinstance(dims, fx.Node):
        raise _unsupported(node, modules, "mean over all axes (or computed axes); average over spatial axes only")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if any(d == 0 for d in dims):
        raise _unsupported(node, modules, "mean over the batch axis")
    return S.MeanStep(node.name, input_name, dims, bool(keepdim))


def module_output(program: Program, module_name: str) -> str:
    """The name of the program step whose value is the output of submodule ``module_name`` (e.g. ``"layer2"``):
    the last node traced inside that module. Its relevance is the relevance at the module's output."""
    step_names = {s.name for s in program.steps if not isinstance(s, _ShapeNode)}
    found = None
    for node in program.graph_module.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        paths = {key.split("@")[0] for key in node.meta.get("nn_module_stack", {})}
        if node.op == "call_module":
            paths.add(str(node.target))
        if module_name in paths:
            found = node.name
    if found is None:
        names = sorted({key.split("@")[0] for n in program.graph_module.graph.nodes
                        for key in n.meta.get("nn_module_stack", {})})
        raise ValueError(f"no module named '{module_name}' runs in the model's forward; module names here: "
                         f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
    if found not in step_names:
        raise ValueError(f"module '{module_name}' ends in node '{found}', which carries no relevance of its own (a "
                         "layer folded into a following BatchNorm); supervise the module that contains both")
    return found
