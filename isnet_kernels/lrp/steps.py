"""The step vocabulary: what every step of a compiled relevance program is and says about itself.

A *step* is one traced node that carries relevance. It runs the node's forward computation (:meth:`Step.forward`),
keeps what its relevance needs as a named record (a :class:`Record`: references to tensors the forward produced,
never copies), and, in the relevance pass, maps the relevance at its output, shape (B, M, ...), to relevance at its
tensor inputs (:meth:`Step.relevance`). The compiler asks a step one question, what it is: its :attr:`Step.kind`
(:class:`Kind`). A step whose rule the pass's :class:`~isnet_kernels.lrp.rules.RuleConfig` chooses (linear layers,
BatchNorms, residual sums) hands the chosen rule the values it reads as a record
(:class:`~isnet_kernels.lrp.rules.FoldedLayer`, ...): steps import rules, rules never import steps.

The steps of each layer family sit beside their registrations in :mod:`isnet_kernels.lrp.layers`. This module holds
what they share: :class:`Step`, :class:`Kind`, :class:`Record`, the generic :class:`CallStep` (a node evaluated as
the model does, with a relevance function: element-wise activations and data movement) and :class:`TupleNode`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from torch import Tensor

from .rules import RuleConfig

Env = dict[str, Any]

__all__ = ["CallSaved", "CallStep", "Env", "Kind", "Record", "RuleConfig", "Step", "TupleNode", "identity_relevance",
           "like", "pair"]


class Kind(enum.Enum):
    """What a step is, as the compiler reads it (:attr:`Step.kind`; :func:`~isnet_kernels.lrp.graph.step_kind`).

    - ``COMPUTE``: any other operation (activations, ReLU included, pooling, sums, products, norms, attention).
    - ``LINEAR``: a ``Conv2d`` or ``Linear`` with its BatchNorm folded in (``LinearBlock``): it takes the Z^B rule when
      it reads the model input, and a ``Linear`` that produces the logits starts the output rules.
    - ``MOVE``: its output is its one input's elements moved, copied, selected or padded, or the input itself
      (reshape, permute, indexing, identity, a dtype conversion): a layer after it still reads the model input (Z^B),
      and a gate moved by it is still a gate.
    - ``PASS``: a ``MOVE`` through which the compiler also looks for the layer producing the logits (dropout,
      ``nn.Flatten``; docs/rules.md#output-rules).
    """

    COMPUTE = "compute"
    LINEAR = "linear"
    MOVE = "move"
    PASS = "pass"


class Step:
    """One node of the relevance program."""

    name: str  # the fx node's name
    inputs: list[str]  # names of the tensor nodes it reads, in the order ``relevance`` returns them
    kind: Kind = Kind.COMPUTE  # what it is (:class:`Kind`); a class or an instance may set it

    def forward(self, env: Env) -> tuple[Tensor, Any]:  # pragma: no cover - interface
        """Compute the node's value from the values of earlier nodes; return it and what ``relevance`` needs."""
        raise NotImplementedError

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> Sequence[Tensor | None]:  # pragma: no cover
        raise NotImplementedError


class Record:
    """Base of the named records steps keep: ``class FooSaved(Record, _FooFields)`` over a ``NamedTuple`` of its
    (two or more) fields. A record is built from its fields (``FooSaved(a, out)``) or, as a tuple is, from one
    iterable of them (``FooSaved(values)``), so that the engine's walks over saved state (``upcast``,
    ``_step_bytes``), which rebuild and count tuples, treat it as the tuple it is."""

    __slots__ = ()

    def __new__(cls, *fields: Any) -> Any:
        if len(fields) == 1:
            fields = tuple(fields[0])
        return super().__new__(cls, *fields)  # type: ignore[call-arg]


def like(t: Tensor | None, ref: Tensor) -> Tensor | None:
    """``t`` (a parameter read live) in ``ref``'s floating dtype: a half-precision model's weights meet the
    float32 relevance pass (differentiably)."""
    return t if t is None or t.dtype == ref.dtype else t.to(ref.dtype)


def pair(v: Any) -> tuple[int, int]:
    """``(v, v)`` for an integer, else the first two entries as integers (a kernel size, stride, padding)."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _CallFields(NamedTuple):
    inputs: list[Tensor]  # the values of the relevance-carrying inputs
    out: Any  # the node's value


class CallSaved(Record, _CallFields):
    """What a :class:`CallStep` keeps: its inputs' values and its output."""

    __slots__ = ()


#: ``relevance_fn(R, inputs, out, cfg) -> one relevance per input (None for none)``: the relevance function of a
#: :class:`CallStep`, given the relevance at the output, the inputs' values and the output.
RelevanceFn = Callable[[Tensor, list[Tensor], Any, RuleConfig], Sequence[Tensor | None]]


class CallStep(Step):
    """A step that evaluates its node with ``call(env)`` and keeps its relevance-carrying inputs and its output
    (:class:`CallSaved`) for ``relevance_fn(R, inputs, output, cfg) -> list of relevances`` (one per input, None
    for none). ``kind`` says what it is: ``Kind.MOVE`` for data movement (its relevance function the op's
    adjoint), ``Kind.COMPUTE`` (the default) for anything else, an element-wise activation under
    :func:`identity_relevance` say."""

    def __init__(self, name: str, inputs: list[str], call: Callable[[Env], Any], relevance_fn: RelevanceFn,
                 kind: Kind = Kind.COMPUTE):
        self.name, self.inputs, self.call, self.relevance_fn, self.kind = name, inputs, call, relevance_fn, kind

    def forward(self, env: Env) -> tuple[Any, CallSaved]:
        out = self.call(env)
        return out, CallSaved([env[n] for n in self.inputs], out)

    def relevance(self, R: Tensor, saved: CallSaved, cfg: RuleConfig) -> Sequence[Tensor | None]:
        return self.relevance_fn(R, saved.inputs, saved.out, cfg)


def identity_relevance(R: Tensor, inputs: list[Tensor], out: Tensor, cfg: RuleConfig) -> list[Tensor]:
    """Element-wise non-linearity ``y = f(x)`` (or the identity): the identity rule ``R_x = R_y`` (AttnLRP)."""
    return [R]


class TupleNode:
    """A node whose value is a tuple of tensors (``x.chunk(n)``): no step of its own; each ``parts[i]`` that reads
    it becomes a step through ``part(ctx, i)``."""

    def __init__(self, name: str, part: Callable[[Any, Any], Step]):
        self.name, self.part = name, part
