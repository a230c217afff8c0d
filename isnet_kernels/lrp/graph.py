"""Trace a classifier with ``torch.fx`` once and compile it into a relevance program.

The compiler walks the traced graph, folds each BatchNorm into the ``Conv2d``/``Linear`` right before it, marks
the layers that read the input (Z^B rule) and the one that produces the logits (the output rule), and turns
every node into a :class:`~isnet_kernels.lrp.steps.Step` with the builder the registry
(:mod:`isnet_kernels.lrp.registry`) holds for it; the package's builders are registered by importing
:mod:`isnet_kernels.lrp.layers`, which this module does. What a step is, the compiler reads from one property, its
:class:`~isnet_kernels.lrp.steps.Kind` (:func:`step_kind`). Nodes that compute sizes, parameters or tensors from
parameters alone (``x.size(0)``, a class token's ``expand``) are evaluated as they are and carry no relevance.
Nodes without a rule raise one :class:`~isnet_kernels.errors.UnsupportedLayerError` here, before any data flows,
listing every one of them with its module path and type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, UnsupportedLayerError
from . import layers  # the package's layer families: importing them registers their builders
from .registry import REGISTRY, NodeContext, is_leaf, module_path, node_kind
from .steps import Kind, TupleNode

_SHAPE_METHODS = {"size", "dim"}
#: The registry entry (the builder) of Conv2d and Linear as the package registers it: a layer taking it (a subclass
#: that keeps its base's forward) folds the BatchNorm after it.
_LINEAR_ENTRY = REGISTRY.modules[nn.Conv2d]
_SHAPE_ATTRS = {"shape", "ndim", "device", "dtype", "is_cuda"}  # x.device: where the model puts a tensor it makes


def supported() -> str:
    """The supported layers and operations, one line per registered builder (generated from the registry)."""
    return "\n".join(f"- {group}: {description}" for group, description in REGISTRY.table())


@dataclass
class Program:
    """A compiled relevance program: steps in forward order, plus what the runner needs to know.

    ``logits_step`` is the ``Linear`` producing the logits (seen through dropout and ``nn.Flatten`` only,
    :func:`_find_logits_step`) when there is one: the output rules start at its input, exactly
    (docs/rules.md#output-rules). Otherwise (``logits_step`` None: logits from a convolution and pooling, SqueezeNet,
    or a ``Linear`` followed by ``nn.Identity``, ``view`` or ``.float()``) relevance starts at the logits themselves
    and the pass walks every step.
    """

    graph_module: fx.GraphModule
    input_name: str
    output_name: str  # the node whose value the model returns
    logits_step: layers.linear.LinearBlock | None  # the layer whose output rule starts the relevance pass
    logits_index: int  # the relevance pass walks ``steps[:logits_index]``
    steps: list[Any]  # Step or _ShapeNode, forward order
    frees: list[list[str]] = field(default_factory=list)  # per step: the values no later step reads


@dataclass
class _ShapeNode:
    """A node that computes sizes, parameters or other values that carry no relevance: evaluated as it is."""

    name: str
    fn: Callable[[dict[str, Any]], Any]


class _Tracer(fx.Tracer):
    """Stops at modules that have a rule (or are ``torch.nn`` layers without one); traces through the rest."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m)


def optional_arguments(model: nn.Module) -> dict[str, Any]:
    """The arguments of ``model.forward`` after the image that have defaults, bound to them: timm's
    ``VisionTransformer.forward(x, attn_mask=None, is_causal=False)`` is explained as ``forward(x)``. Arguments
    without a default stay inputs (and are refused by :func:`compile_model`)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C-implemented forward: nothing to bind
        return {}
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params[1:] if p.kind in positional and p.default is not p.empty}


def _drop_bound_arguments(graph: fx.Graph, bound: dict[str, Any]) -> None:
    """Remove the placeholders ``torch.fx`` keeps for arguments bound by ``concrete_args`` and the checks it adds
    on them (``_assert_is_none``, ``torch._assert``): the traced code already uses the bound values."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"][1:]
    dead: list[fx.Node] = []
    for ph in placeholders:
        stack = [ph]
        while stack:
            node = stack.pop()
            if node not in dead:
                dead.append(node)
                stack.extend(node.users)
    for node in reversed(sorted(dead, key=_order(graph))):
        if any(user not in dead for user in node.users):
            raise UnsupportedLayerError(f"the traced model computes with its argument {node.name!r}, bound to its "
                                        f"default ({', '.join(f'{k}={v!r}' for k, v in bound.items())}); the LRP "
                                        "engine explains a forward of the image alone")
        graph.erase_node(node)


def _order(graph: fx.Graph) -> Callable[[fx.Node], int]:
    index = {node: i for i, node in enumerate(graph.nodes)}
    return lambda node: index[node]


def _forget_proxies(before: dict[nn.Module, dict[str, Any]]) -> None:
    """Undo what tracing left in the modules: a model that caches a value under a key computed from its input
    (timm's attention-bias cache, keyed by ``str(x.device)``) stores a ``torch.fx`` proxy while it is traced.
    Attributes set to a proxy get their former value back; dict entries holding one are removed."""
    for module, attrs in before.items():
        for key, value in list(vars(module).items()):
            if isinstance(value, fx.Proxy):
                if key in attrs:
                    setattr(module, key, attrs[key])
                else:
                    delattr(module, key)
            elif isinstance(value, dict):
                for k in [k for k, v in value.items() if isinstance(v, fx.Proxy)]:
                    del value[k]


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace the model with ``torch.fx`` (leaves: :func:`~isnet_kernels.lrp.registry.is_leaf`), turning tracing
    failures into :class:`UnsupportedLayerError`. Optional arguments of ``forward`` beside the image are bound to
    their defaults (:func:`optional_arguments`)."""
    root = nn.Sequential(model) if is_leaf(model) else model
    bound = optional_arguments(root)
    before = {module: dict(vars(module)) for module in root.modules()}
    try:
        graph = _Tracer().trace(root, concrete_args=bound or None)
    except Exception as exc:  # fx raises many types: TraceError, TypeError, NotImplementedError, ...
        raise UnsupportedLayerError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {' '.join(str(exc).split())}. "
            "The LRP engine needs a model whose forward has no Python control flow on tensor values (if/for on a "
            "tensor, shapes compared with data) and calls only traceable operations; move such code out of "
            "forward, or register a rule for the module that holds it (isnet_kernels.lrp.register_rule)."
        ) from exc
    finally:
        _forget_proxies(before)
    if bound:
        _drop_bound_arguments(graph, bound)
    _unmerge_token_batchnorms(graph, dict(root.named_modules()))
    return fx.GraphModule(root, graph, type(root).__name__)


def _merged_batch(node: fx.Node) -> fx.Node | None:
    """``x`` when ``node`` is ``x.flatten(0, 1)`` (or ``torch.flatten(x, 0, 1)``), else None."""
    if node.target not in ("flatten", torch.flatten) or node.op not in ("call_method", "call_function"):
        return None
    args = list(node.args) + [None] * 3
    start = node.kwargs.get("start_dim", args[1])
    end = node.kwargs.get("end_dim", args[2])
    return node.args[0] if start == 0 and end == 1 and isinstance(node.args[0], fx.Node) else None


def _unmerge_token_batchnorms(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Rewrite ``bn(x.flatten(0, 1)).reshape_as(x)`` (a BatchNorm1d over tokens with the batch axis merged into
    the token axis, timm's LeViT) into ``bn(tokens_channels_first(x)).transpose(1, 2)``: the same function (the
    statistics of each channel over the B*N tokens, the running statistics updated alike) with the batch axis
    kept, which the relevance rules need (:func:`~isnet_kernels.lrp.layers.movement.tokens_channels_first`)."""
    tokens_channels_first = layers.movement.tokens_channels_first
    for bn in list(graph.nodes):
        if bn.op != "call_module" or not isinstance(modules.get(str(bn.target)), nn.BatchNorm1d) \
                or len(bn.args) != 1 or bn.kwargs or not isinstance(bn.args[0], fx.Node):
            continue
        merged = bn.args[0]
        x = _merged_batch(merged)
        if x is None or len(merged.users) != 1 or not bn.users:
            continue
        if not all(u.op == "call_method" and u.target in ("reshape_as", "view_as") and u.args == (bn, x)
                   and not u.kwargs for u in bn.users):
            continue
        with graph.inserting_before(merged):
            channels_first = graph.call_function(tokens_channels_first, (x,))
        bn.args = (channels_first,)
        for user in list(bn.users):
            with graph.inserting_before(user):
                back = graph.call_method("transpose", (bn, 1, 2))
            back.meta = dict(user.meta)
            user.replace_all_uses_with(back)
            graph.erase_node(user)
        channels_first.meta = dict(merged.meta)
        graph.erase_node(merged)


def _is_value_node(node: fx.Node, kinds: dict[str, str]) -> str | None:
    """``"shape"`` or ``"const"`` when ``node`` computes a value that carries no relevance, else None."""
    if node.op == "get_attr":
        return "const"
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return "shape"
    if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS:
        return "shape"
    if node.op in ("call_function", "call_method", "call_module"):
        inputs: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), inputs.append)
        input_kinds = {kinds.get(n.name) for n in inputs}
        if node.op == "call_module" and not inputs:
            return None
        if "tensor" not in input_kinds and None not in input_kinds:
            return "const" if "const" in input_kinds else "shape"
    return None


def _value_fn(node: fx.Node, gm: fx.GraphModule) -> Callable[[dict[str, Any]], Any]:
    if node.op == "get_attr":  # a parameter or buffer, read live at every call
        path = str(node.target)
        return lambda env: _attr(gm, path)
    args_fn, kwargs_fn = _arg_fn(node.args), _arg_fn(node.kwargs)
    if node.op == "call_method":
        method = node.target
        return lambda env: getattr(args_fn(env)[0], method)(*args_fn(env)[1:], **kwargs_fn(env))
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return lambda env: module(*args_fn(env), **kwargs_fn(env))
    target = node.target
    return lambda env: target(*args_fn(env), **kwargs_fn(env))


def _attr(gm: fx.GraphModule, path: str) -> Any:
    obj: Any = gm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _arg_fn(arg: Any) -> Callable[[dict[str, Any]], Any]:
    """A function of the environment that rebuilds ``arg`` (a node, a constant or a nested container of them)."""
    nodes: list[str] = []
    fx.node.map_arg(arg, lambda n: nodes.append(n.name))
    if not nodes:
        return lambda env: arg
    return lambda env: fx.node.map_arg(arg, lambda n: env[n.name])


def _output_problem(model: nn.Module, out_arg: Any, modules: dict[str, nn.Module]) -> str | None:
    """Why the forward's output is not one logits tensor, or None."""
    name = type(model).__name__
    if not isinstance(out_arg, fx.Node):
        return (f"{name}.forward returns a {type(out_arg).__name__}, not one logits tensor (B, K); the LRP engine "
                "explains a model with a single output (auxiliary heads: call model.eval() or build the model "
                "without them, e.g. aux_logits=False)")
    if out_arg.op == "call_function" and isinstance(out_arg.target, type) and issubclass(out_arg.target, tuple):
        return (f"{name}.forward returns {out_arg.target.__name__} (a tuple of outputs), not one logits tensor "
                "(B, K): in train mode the model adds auxiliary outputs; call model.eval(), or build it with "
                "aux_logits=False")
    return None


def compile_model(model: nn.Module) -> Program:
    """Trace ``model`` and compile its relevance program (see the module docstring).

    Every node without a rule is collected, so one error lists all of them.
    """
    gm = trace(model)
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs; the LRP engine explains models with "
            "exactly one input tensor (B, C, H, W)")
    output_node = next(n for n in nodes if n.op == "output")
    problem = _output_problem(model, output_node.args[0], modules)
    if problem is not None:
        raise UnsupportedLayerError(problem)
    input_name = placeholders[0].name
    users = {n.name: len(n.users) for n in nodes}
    kinds: dict[str, str] = {input_name: "tensor"}
    ctx_shared = NodeContext(output_node, modules, kinds, gm)
    steps: list[Any] = []
    by_name: dict[str, Any] = {}
    failures: list[tuple[fx.Node, str]] = []

    # BatchNorm folding: a BatchNorm whose input is a Conv2d/Linear read by nothing else.
    folded: dict[str, fx.Node] = {}  # conv/linear node name -> its BatchNorm node
    for node in nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm) \
                and REGISTRY.module_entry(modules[node.target]) is REGISTRY.modules[nn.modules.batchnorm._BatchNorm]:
            src = node.args[0] if node.args else None
            if (isinstance(src, fx.Node) and src.op == "call_module"
                    and REGISTRY.module_entry(modules[src.target]) is _LINEAR_ENTRY and users[src.name] == 1):
                folded[src.name] = node
    folded_into = {bn.name: conv for conv, bn in folded.items()}  # BatchNorm node name -> its conv/linear name
    node_by_name = {n.name: n for n in nodes}

    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        value_kind = _is_value_node(node, kinds)
        if value_kind is not None:
            kinds[node.name] = value_kind
            steps.append(_ShapeNode(node.name, _value_fn(node, gm)))
            continue
        kinds[node.name] = "tensor"
        if node.name in folded:
            continue  # runs inside its BatchNorm's block
        entry = REGISTRY.lookup(node, modules)
        if entry is None:
            failures.append((node, "no relevance rule"))
            continue
        ctx = NodeContext(node, modules, kinds, gm, ctx_shared.gates, ctx_shared.producers, ctx_shared.softmax,
                          node_by_name[folded_into[node.name]] if node.name in folded_into else None)
        try:
            step = entry.builder(ctx)
        except UnsupportedLayerError as exc:
            failures.append((node, str(exc).split(": ", 1)[-1]))
            continue
        if isinstance(step, TupleNode):
            ctx_shared.producers[node.name] = step.part
            continue
        softmax = _is_softmax(node, modules)
        if softmax or _is_gate(node, modules) or _moves_gate(step, ctx_shared.gates):
            ctx_shared.gates.add(node.name)
        if softmax:
            ctx_shared.softmax.add(node.name)
        steps.append(step)
        by_name[step.name] = step
    if failures:
        raise _unsupported_error(model, failures, modules)

    out_arg = output_node.args[0]
    logits_step = _find_logits_step(out_arg, by_name)  # produces the logits: relevance starts there
    if logits_step is None and out_arg.name not in by_name:
        raise UnsupportedLayerError(f"{type(model).__name__}.forward returns node '{out_arg.name}', which carries no "
                                    "relevance (it does not depend on the input)")
    for step in steps:
        if step_kind(step) is Kind.LINEAR and _reads_input(step.inputs[0], by_name, input_name):
            step.first = True
    index = steps.index(logits_step) if logits_step is not None else len(steps)
    program = Program(gm, input_name, out_arg.name, logits_step, index, steps)
    program.frees = _frees(nodes, steps, folded)
    return program


def _frees(nodes: list[fx.Node], steps: list[Any], folded: dict[str, fx.Node]) -> list[list[str]]:
    """For each step, the values the forward can drop after it: those no later step reads (any argument, not only
    relevance inputs: a reshape reads sizes computed long before it). The returned logits are never dropped."""
    index_of = {step.name: i for i, step in enumerate(steps)}
    for conv, bn in folded.items():
        index_of[conv] = index_of[bn.name]
    done = len(steps)

    def reader(node: fx.Node) -> int:
        if node.op == "output":
            return done
        if node.name in index_of:
            return index_of[node.name]
        return max((reader(u) for u in node.users), default=-1)  # a tuple's parts evaluate it

    frees: list[list[str]] = [[] for _ in steps]
    for node in nodes:
        if node.op == "output" or node.name not in index_of and node.op != "placeholder":
            continue
        last = max((reader(u) for u in node.users), default=-1)
        if 0 <= last < done:
            frees[last].append(node.name)
    return frees


def step_kind(step: Any) -> Kind:
    """What ``step`` is (:class:`~isnet_kernels.lrp.steps.Kind`): its ``kind``; ``Kind.COMPUTE`` for a step of a user's
    own class that does not say. The one question the compiler asks a step."""
    return getattr(step, "kind", Kind.COMPUTE)


def _moves(step: Any) -> bool:
    """Whether ``step`` only moves the elements of its one input (``Kind.MOVE`` or ``Kind.PASS``: a reshape, view,
    permutation, slice, identity, dropout): the model input or a gate seen through it is still one."""
    return step is not None and step_kind(step) in (Kind.MOVE, Kind.PASS) and len(step.inputs) == 1


def _is_gate(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    key = type(modules[node.target]) if node.op == "call_module" else node.target
    return any(key is g or key == g for g in layers.activation.GATES)


def _moves_gate(step: Any, gates: set[str]) -> bool:
    """Whether ``step`` only moves the elements of a gate (:func:`_moves`): its output is a gate too (ResNeSt's
    ``x * softmax(...).view(B, -1, 1, 1).reshape(...)``)."""
    return _moves(step) and step.inputs[0] in gates


def _is_softmax(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Softmax)
    return node.target in (F.softmax, torch.softmax, "softmax")


def _unsupported_error(model: nn.Module, failures: list[tuple[fx.Node, str]],
                       modules: dict[str, nn.Module]) -> UnsupportedLayerError:
    """One error for every node without a rule, grouped by what the nodes run."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node, why in failures:
        groups.setdefault((node_kind(node, modules), why), []).append(f"'{node.name}' in '{module_path(node)}'")
    lines = []
    for (kind, why), where in groups.items():
        shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
        lines.append(f"  {kind} x{len(where)}: {why} ({shown})")
    count = len(failures)
    return UnsupportedLayerError(
        f"{type(model).__name__} has {count} operation{'s' if count > 1 else ''} the LRP engine cannot explain:\n"
        + "\n".join(lines) + f"\nSupported: {REGISTRY.summary()} (docs/layers.md). Replace these layers "
        "by supported ones, or register a rule for them: @isnet_kernels.lrp.register_rule(MyLayer) on a function "
        "that builds its step (docs/extending.md)."
    )


def _reads_input(name: str, by_name: dict[str, Any], input_name: str) -> bool:
    """Whether ``name`` is the model input seen through views, dropout, identity or data movement only
    (:func:`_moves`)."""
    while name != input_name:
        step = by_name.get(name)
        if not _moves(step):
            return False
        name = step.inputs[0]
    return True


def _find_logits_step(node: fx.Node, by_name: dict[str, Any]) -> layers.linear.LinearBlock | None:
    """The ``Linear`` producing the logits (a ``Kind.LINEAR`` step that is not a convolution), seen back from the
    output through steps of ``Kind.PASS`` (dropout, ``nn.Flatten``) only. The walk stops at any other step,
    ``nn.Identity``, ``view``, ``reshape`` and ``.float()`` included (``Kind.MOVE``): then, as for a head that is not
    one ``Linear``, it returns None and relevance starts at the logits themselves
    (:func:`~isnet_kernels.lrp.engine.logits_relevance`)."""
    name = node.name
    while True:
        step = by_name.get(name)
        kind = step_kind(step)
        if kind is Kind.LINEAR and not step.is_conv:
            return step
        if kind is Kind.PASS:
            name = step.inputs[0]
            continue
        return None


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
        raise InputError(f"no module named '{module_name}' runs in the model's forward; module names here: "
                         f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
    if found not in step_names:
        raise InputError(f"module '{module_name}' ends in node '{found}', which carries no relevance of its own (a "
                         "layer folded into a following BatchNorm); supervise the module that contains both")
    return found
