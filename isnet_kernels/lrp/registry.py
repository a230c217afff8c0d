"""The registry of builders (:class:`RuleRegistry`): which relevance step each traced operation becomes.

A traced node is a module call (``call_module``), a function call (``call_function``) or a tensor method
(``call_method``). The registry maps each to a *builder*: a function that receives the node's
:class:`NodeContext` and returns the :class:`~isnet_kernels.lrp.steps.Step` that runs the node's forward and
implements its layer's LRP rule. The package's builders live beside their steps in :mod:`isnet_kernels.lrp.layers`,
one module per layer family. Module types are looked up along the class hierarchy, so a subclass that keeps its base's
``forward`` (a ``Conv2d`` subclass that only adds attributes) takes the base's rule, while a subclass with a
``forward`` of its own is traced through (what it computes decides its rules; see :func:`is_leaf`).

Users add or override builders without editing the package (:func:`register_rule`)::

    from isnet_kernels.lrp import CallStep, identity_relevance, register_rule

    @register_rule(MyScale, description="MyScale: relevance passes unchanged (identity rule)")
    def _my_scale(ctx):
        return CallStep(ctx.name, [ctx.single()], ctx.call(), identity_relevance)

The list of supported layers in error messages, :data:`isnet_kernels.lrp.SUPPORTED` and the table of docs/layers.md are
generated from the registered descriptions (:meth:`RuleRegistry.table`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import InputError, InputTypeError, UnsupportedLayerError

Builder = Callable[["NodeContext"], Any]
Key = type | Callable | str


@dataclass
class Entry:
    """One registration: the keys it covers, its builder and the line describing it in the supported-layer table."""

    keys: tuple[Key, ...]
    builder: Builder
    group: str
    description: str


class RuleRegistry:
    """A table from module type, function and tensor-method name to the builder of the node's relevance step."""

    def __init__(self) -> None:
        self.modules: dict[type, Entry] = {}
        self.functions: dict[Callable, Entry] = {}
        self.methods: dict[str, Entry] = {}
        self.by_name: dict[str, Entry] = {}  # "package.module.name" of a function or class not imported here
        self.entries: list[Entry] = []

    def register(self, *keys: Key, group: str, description: str) -> Callable[[Builder], Builder]:
        """Decorator: ``builder`` handles every key (a module class, a function, a tensor-method name, or the
        dotted name ``"package.module.name"`` of a function or module class of a library that need not be
        imported). A later registration of the same key overrides the earlier one."""
        if not keys:
            raise InputError("register needs at least one module type, function or method name")
        for key in keys:  # checked here, so that a bad key fails where it is written, before anything is stored
            if isinstance(key, type) and not issubclass(key, nn.Module):
                raise InputTypeError(f"{key.__name__} is not an nn.Module subclass")
            if not isinstance(key, (type, str)) and not callable(key):
                raise InputTypeError(f"cannot register {key!r}: give a module class, a function or a method name")

        def decorate(builder: Builder) -> Builder:
            entry = Entry(tuple(keys), builder, group, description)
            for key in keys:
                if isinstance(key, type):
                    self.modules[key] = entry
                elif isinstance(key, str) and "." in key:
                    self.by_name[key] = entry
                elif isinstance(key, str):
                    self.methods[key] = entry
                else:
                    self.functions[key] = entry
            self.entries.append(entry)
            return builder

        return decorate

    def module_entry(self, module: nn.Module) -> Entry | None:
        """The entry of ``module``'s class, or of the nearest base class whose ``forward`` it inherits."""
        cls = type(module)
        for base in cls.__mro__:
            entry = self.modules.get(base) or self.by_name.get(_dotted(base))
            if entry is not None:
                return entry if base is cls or _same_forward(cls, base) else None
        return None

    def lookup(self, node: fx.Node, modules: dict[str, nn.Module]) -> Entry | None:
        if node.op == "call_module":
            return self.module_entry(modules[node.target])
        if node.op == "call_function":
            entry = self.functions.get(node.target)
            return entry if entry is not None else self.by_name.get(_dotted(node.target))
        if node.op == "call_method":
            return self.methods.get(node.target)
        return None

    def table(self) -> list[tuple[str, str]]:
        """``(group, description)`` rows of the entries still in force, in registration order, one per entry."""
        live = {id(e) for e in (*self.modules.values(), *self.functions.values(), *self.methods.values(),
                                *self.by_name.values())}
        rows, seen = [], set()
        for entry in self.entries:
            if id(entry) in live and entry.description and (entry.group, entry.description) not in seen:
                seen.add((entry.group, entry.description))
                rows.append((entry.group, entry.description))
        return rows

    def markdown(self) -> str:
        """The supported-layer table of docs/layers.md: one row per rule group, its registered descriptions."""
        groups: dict[str, list[str]] = {}
        for group, description in self.table():
            groups.setdefault(group, []).append(description)
        rows = ["| layer or operation | forms recognised in the traced graph, and their rule |", "| --- | --- |"]
        rows += [f"| {group} | {'; '.join(texts)} |" for group, texts in groups.items()]
        return "\n".join(rows) + "\n"

    def summary(self) -> str:
        """One line listing the supported groups (for error messages)."""
        groups: dict[str, None] = {}
        for group, _ in self.table():
            groups[group] = None
        return ", ".join(groups)


def _dotted(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _same_forward(cls: type, base: type) -> bool:
    return inspect.getattr_static(cls, "forward", None) is inspect.getattr_static(base, "forward", None)


#: The package's builders (registered by the layer families of :mod:`isnet_kernels.lrp.layers`, when imported).
REGISTRY = RuleRegistry()


def register_rule(*keys: Key, group: str = "user rules", description: str | None = None,
                  registry: RuleRegistry | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering a builder (a function returning the step that implements a layer's LRP rule) for
    module types, functions or tensor-method names (module docstring).

    ``builder(ctx)`` receives a :class:`NodeContext` and returns a step. After registering a builder for a model that
    was already compiled, call :func:`isnet_kernels.lrp.clear_cache`.
    """
    names = ", ".join(k.__name__ if hasattr(k, "__name__") else repr(k) for k in keys)
    return (registry or REGISTRY).register(*keys, group=group, description=description or names)


def is_leaf(module: nn.Module, registry: RuleRegistry | None = None) -> bool:
    """Whether tracing stops at ``module`` (a ``call_module`` node): it has a rule (itself, or a base class whose
    ``forward`` it keeps), or it is a ``torch.nn`` layer without one (reported as unsupported, by its name).
    Any other module (containers, blocks, a subclass with its own ``forward``) is traced through."""
    if (registry or REGISTRY).module_entry(module) is not None:
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    mod = type(module).__module__
    return mod.startswith("torch.nn") or mod.startswith("torch.ao.nn")


@dataclass
class NodeContext:
    """What a builder knows about the node it turns into a step.

    ``kinds`` classifies every earlier node: ``"tensor"`` (carries relevance), ``"shape"`` (sizes and other
    non-tensor values), ``"const"`` (parameters, buffers and tensors computed from them alone: no relevance).
    """

    node: fx.Node
    modules: dict[str, nn.Module]
    kinds: dict[str, str]
    root: nn.Module
    gates: set[str] = field(default_factory=set)  # nodes whose value is a gate (sigmoid-like, in [0, 1])
    producers: dict[str, Callable[[NodeContext, Any], Any]] = field(default_factory=dict)  # tuple-valued nodes
    softmax: set[str] = field(default_factory=set)  # nodes whose value is a softmax (attention probabilities)
    folded_source: fx.Node | None = None  # for a BatchNorm: the Conv2d/Linear folded into it

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def module(self) -> nn.Module | None:
        return self.modules[self.node.target] if self.node.op == "call_module" else None

    def tensor_inputs(self) -> list[fx.Node]:
        """The relevance-carrying inputs, in argument order (each node once)."""
        found: list[fx.Node] = []
        fx.node.map_arg((self.node.args, self.node.kwargs),
                        lambda n: found.append(n) if self.kinds.get(n.name) == "tensor" and n not in found else None)
        return found

    def single(self) -> str:
        """The name of the one relevance-carrying input (an error if there are several or none)."""
        tensors = self.tensor_inputs()
        if len(tensors) != 1:
            raise self.unsupported(f"expected one tensor input carrying relevance, found {len(tensors)}")
        return tensors[0].name

    def bind(self, names: Iterable[str], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The node's arguments by parameter name (positional ones bound to ``names`` in order)."""
        bound = dict(defaults or {})
        bound.update(zip(names, self.node.args))
        bound.update(self.node.kwargs)
        return bound

    def constants(self, bound: dict[str, Any], skip: Iterable[str] = ("input",)) -> None:
        """Require every argument of ``bound`` but those in ``skip`` to be fixed when the model is traced."""
        skip = set(skip)
        for key, value in bound.items():
            if key not in skip and isinstance(value, fx.Node) and self.kinds.get(value.name) == "tensor":
                raise self.unsupported(f"argument '{key}' must be a constant, not computed from the input")

    def evaluator(self) -> Callable[[dict[str, Any]], tuple[tuple, dict]]:
        """A function of the environment that returns the node's evaluated ``(args, kwargs)``."""
        args, kwargs = self.node.args, self.node.kwargs
        return lambda env: (fx.node.map_arg(args, lambda n: env[n.name]),
                            fx.node.map_arg(kwargs, lambda n: env[n.name]))

    def call(self) -> Callable[[dict[str, Any]], Any]:
        """A function of the environment that evaluates the node as the traced model would, but never in place
        (``nn.SiLU(inplace=True)``, ``F.relu6(x, inplace=True)``, ``x.sigmoid_()``, ``torch.tanh_``): the input
        is kept by the steps before it (a layer's output is its rule's denominator), so it must not change."""
        ev, node = self.evaluator(), self.node
        if node.op == "call_module":
            module = self.modules[node.target]
            if getattr(module, "inplace", False) is True:
                def run_module(env: dict[str, Any]) -> Any:
                    out_of_place = copy.copy(module)  # shares the parameters; only this call's flag differs
                    out_of_place.inplace = False
                    args, kwargs = ev(env)
                    return out_of_place(*args, **kwargs)

                return run_module
            return lambda env: module(*ev(env)[0], **ev(env)[1])
        if node.kwargs.get("inplace") is True:
            kw, node_args = {**node.kwargs, "inplace": False}, node.args

            def ev(env: dict[str, Any]) -> tuple[tuple, dict]:
                return (fx.node.map_arg(node_args, lambda n: env[n.name]),
                        fx.node.map_arg(kw, lambda n: env[n.name]))
        if node.op == "call_method":
            method = _out_of_place_method(node.target)

            def run_method(env: dict[str, Any]) -> Any:
                args, kwargs = ev(env)
                return getattr(args[0], method)(*args[1:], **kwargs)

            return run_method
        target = _out_of_place_function(node.target)

        def run_function(env: dict[str, Any]) -> Any:
            args, kwargs = ev(env)
            return target(*args, **kwargs)

        return run_function

    def is_constant(self, arg: Any) -> bool:
        """Whether ``arg`` (a node or a literal) carries no relevance."""
        return not isinstance(arg, fx.Node) or self.kinds.get(arg.name) != "tensor"

    def unsupported(self, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{describe(self.node, self.modules)}: {why}")


def _out_of_place_method(name: str) -> str:
    """``"sigmoid"`` for ``"sigmoid_"`` (a tensor method's out-of-place form, where there is one)."""
    if name.endswith("_") and not name.startswith("__") and hasattr(torch.Tensor, name[:-1]):
        return name[:-1]
    return name


def _out_of_place_function(fn: Any) -> Any:
    """``torch.sigmoid`` for ``torch.sigmoid_``, ``F.leaky_relu`` for ``F.leaky_relu_`` (where there is one)."""
    name = getattr(fn, "__name__", "")
    if not name.endswith("_") or name.startswith("__"):
        return fn
    for space in (torch.nn.functional, torch):
        if getattr(space, name, None) is fn and callable(getattr(space, name[:-1], None)):
            return getattr(space, name[:-1])
    return fn


def module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack.values())[-1][0]) or "<root>"
    return "<root>"


def node_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short name of what the node runs: the module type, the function or ``Tensor.<method>``."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return f"{node.op} {node.target}"


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    return f"node '{node.name}' ({node_kind(node, modules)}) in module '{module_path(node)}'"
