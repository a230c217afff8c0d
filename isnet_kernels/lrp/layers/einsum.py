"""The rule of ``torch.einsum`` of one or two operands (attention written with einsum, MaxViT) (docs/rules.md).

``y = einsum(eq, A, B)`` is bilinear in ``(A, B)``. With ``vjp_A(S)`` the gradient of ``<einsum(eq, A, B), S>``
with respect to ``A`` (an einsum of ``S`` and ``B`` with the equation rearranged, the map axis ``M`` a letter of
its own, so no activation is repeated M times):

- two activations: AttnLRP's uniform epsilon rule (Achtibat et al., ICML 2024), generalised from ``A @ B`` to any
  bilinear einsum: ``S = R / (2 stab(y))``, ``R_A = A * vjp_A(S)``, ``R_B = B * vjp_B(S)``; in index form
  ``R_A[a] = sum over the other indices of A[a] B[b] S[y-indices]``, so ``sum R_A + sum R_B = sum R y / stab(y)``
  (conservative as ``eps -> 0``);
- one operand the output of a softmax and ``LRP(attention="cp")``: CP-LRP (Ali et al., ICML 2022), the
  attention weights held constant: ``S = R / stab(y)``, all relevance to the other operand, none to the weights;
- one constant operand (a weight, a buffer), or a single operand: the epsilon rule of the linear map it is,
  ``S = R / stab(y)``, ``R_A = A * vjp_A(S)`` (twice the uniform rule's share).

The batch axis must be the first axis of every relevance-carrying operand and of the output (``"b..."`` in each
of their terms), so that the samples' relevances stay apart. Diagonals (a letter repeated in one term) and the
sublist form ``einsum(A, [0, 1], B, [1, 2])`` are not supported.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor

from ... import ops
from ...errors import InputError
from ..registry import REGISTRY, NodeContext
from ..rules import RuleConfig
from ..steps import Env, Record, Step


@dataclass(frozen=True)
class Equation:
    """An einsum equation with its ellipses written out as letters: one subscript string per operand, the output's,
    and a letter used nowhere else (the map axis ``M`` of the relevance)."""

    terms: tuple[str, ...]
    output: str
    free: str


def parse_equation(equation: str, ndims: tuple[int, ...]) -> Equation:
    """Parse ``equation`` for operands of ``ndims`` axes: spaces dropped, ``...`` expanded into unused letters
    (aligned to the right, as einsum broadcasts them), the implicit output (letters used once, in alphabetical
    order, after the ellipsis) made explicit. Raises ValueError for a diagonal or a mismatch of ranks."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise InputError(f"einsum equation '{equation}' has {len(terms)} operand terms for {len(ndims)} operands")
    used = set(eq) - set(".,->")
    pool = [c for c in string.ascii_letters if c not in used]
    n_ell = max([nd - (len(t) - 3) for t, nd in zip(terms, ndims) if "..." in t], default=0)
    ell = "".join(pool[:n_ell])
    free = pool[n_ell]
    expanded = []
    for term, nd in zip(terms, ndims):
        if "..." in term:
            k = nd - (len(term) - 3)
            term = term.replace("...", ell[n_ell - k:] if k else "")
        if len(term) != nd or not all(c.isalpha() for c in term):
            raise InputError(f"einsum term '{term}' does not match an operand of {nd} axes")
        if len(set(term)) != len(term):
            raise InputError(f"einsum term '{term}' repeats a letter (a diagonal), which has no relevance rule here")
        expanded.append(term)
    if arrow:
        output = rhs.replace("...", ell)
    else:
        counts = {c: sum(t.count(c) for t in expanded) for c in set("".join(expanded)) - set(ell)}
        output = ell + "".join(sorted(c for c, n in counts.items() if n == 1))
    if len(set(output)) != len(output) or any(c not in "".join(expanded) for c in output):
        raise InputError(f"einsum output '{output}' repeats a letter or names one no operand has")
    return Equation(tuple(expanded), output, free)


def check_batch(eq: Equation, carrying: list[bool]) -> str | None:
    """Why the batch axis is not the first axis of the output and of every carrying operand, or None."""
    if not eq.output:
        return "an einsum with a scalar output (the batch axis must stay first)"
    b = eq.output[0]
    for term, carry in zip(eq.terms, carrying):
        if carry and (not term or term[0] != b):
            return (f"an einsum whose batch axis is not the first axis of the output and of each operand that "
                    f"carries relevance (terms {','.join(eq.terms)} -> {eq.output}: write the batch letter first "
                    "in every term, e.g. 'bij,bjk->bik')")
    return None


def _with_map(term: str, free: str) -> str:
    """A relevance's subscripts: the activation's with the map axis letter after the batch axis."""
    return term[0] + free + term[1:]


def vjp(eq: Equation, S: Tensor, operands: list[Tensor], i: int) -> Tensor:
    """The gradient of ``<einsum(eq, *operands), S_m>`` w.r.t. ``operands[i]`` for every map ``m``: ``S`` (B, M,
    *y.shape[1:]), result (B, M, *operands[i].shape[1:]). Letters of operand ``i`` that appear nowhere else (summed
    out) broadcast the gradient; broadcast axes of size 1 are summed back."""
    target = eq.terms[i]
    others = [(eq.terms[j], operands[j]) for j in range(len(operands)) if j != i]
    available = set(eq.output).union(*(set(t) for t, _ in others))
    kept = "".join(c for c in target if c in available)
    spec = ",".join([_with_map(eq.output, eq.free)] + [t for t, _ in others]) + "->" + _with_map(kept, eq.free)
    G = torch.einsum(spec, S, *(x for _, x in others))
    x = operands[i]
    shape = [G.shape[0], G.shape[1]]
    view = [G.shape[0], G.shape[1]]
    for c, size in zip(target[1:], x.shape[1:]):
        if c in available:
            view.append(G.shape[2 + kept.index(c) - 1])
            shape.append(view[-1])
        else:
            view.append(1)
            shape.append(size)
    G = G.reshape(view).expand(shape)
    full = (G.shape[0], G.shape[1], *x.shape[1:])
    return G if tuple(G.shape) == full else G.sum_to_size(full)


def reference_einsum_relevance(R: Tensor, eq: Equation, operands: list[Tensor], y: Tensor, carrying: list[bool],
                               eps: float, constant: int | None = None) -> list[Tensor | None]:
    """The relevance of each operand of ``y = einsum(eq, *operands)`` (module docstring): ``R`` (B, M, ...).

    ``carrying[i]``: operand ``i`` carries relevance. ``constant``: the index of an operand held constant (CP-LRP,
    the attention weights), which gets none. Two carrying operands take the uniform rule, one the epsilon rule.
    """
    if constant is not None:
        carrying = [c and i != constant for i, c in enumerate(carrying)]
        operands = [x.detach() if i == constant else x for i, x in enumerate(operands)]
    share = 2 if sum(carrying) == 2 else 1
    S = R / (share * ops.stabilize(y, eps)).unsqueeze(1)
    return [x.unsqueeze(1) * vjp(eq, S, operands, i) if carry else None
            for i, (x, carry) in enumerate(zip(operands, carrying))]


class _EinsumFields(NamedTuple):
    operands: list[Any]  # the operands' values
    y: Tensor  # the output
    eq: Equation  # the parsed equation


class EinsumSaved(Record, _EinsumFields):
    """What :class:`EinsumStep`'s forward keeps."""

    __slots__ = ()


class EinsumStep(Step):
    """``torch.einsum(equation, *operands)`` of one or two operands (module docstring)."""

    def __init__(self, name: str, inputs: list[str], equation: str, operands: list[Any], softmax: list[bool]):
        self.name, self.inputs, self.equation, self.operands = name, inputs, equation, operands
        self.softmax = softmax  # operand i is a softmax output (attention weights)
        self.carrying = [isinstance(o, str) and o in inputs for o in operands]
        self._parsed: dict[tuple[int, ...], Equation] = {}

    def parse(self, ndims: tuple[int, ...]) -> Equation:
        eq = self._parsed.get(ndims)
        if eq is None:
            try:
                eq = parse_equation(self.equation, ndims)
            except ValueError as exc:
                raise InputError(f"node '{self.name}': {exc}") from exc
            problem = check_batch(eq, self.carrying)
            if problem is not None:
                raise InputError(f"node '{self.name}': {problem}")
            self._parsed[ndims] = eq
        return eq

    def forward(self, env: Env) -> tuple[Tensor, Any]:
        xs = [env[o] if isinstance(o, str) else o for o in self.operands]
        y = torch.einsum(self.equation, *xs)
        eq = self.parse(tuple(x.dim() for x in xs))
        if y.dim() == 0 or y.shape[0] != next(x for x, c in zip(xs, self.carrying) if c).shape[0]:
            raise InputError(f"node '{self.name}': the einsum's output lost the batch axis")
        return y, EinsumSaved(xs, y, eq)

    def relevance(self, R: Tensor, saved: EinsumSaved, cfg: RuleConfig) -> list[Tensor | None]:
        xs, y, eq = saved
        constant = None
        if cfg.attention == "cp" and all(self.carrying) and len(xs) == 2 and any(self.softmax):
            constant = self.softmax.index(True)
        parts = reference_einsum_relevance(R, eq, xs, y, self.carrying, cfg.eps, constant)
        by_name: dict[str, Tensor | None] = {}
        for operand, part in zip(self.operands, parts):
            if part is not None:
                by_name[operand] = part if by_name.get(operand) is None else by_name[operand] + part
        return [by_name.get(n) for n in self.inputs]


@REGISTRY.register(torch.einsum, group="attention",
                   description="`torch.einsum` of one or two operands, batch axis first in each term (attention "
                               "written with einsum, MaxViT): of two activations the uniform epsilon rule, CP-LRP for "
                               "a softmax operand with `attention=\"cp\"`, with a constant the epsilon rule")
def _einsum(ctx: NodeContext):
    args = list(ctx.node.args)
    if ctx.node.kwargs:
        raise ctx.unsupported("einsum with keyword arguments")
    if not args or not isinstance(args[0], str):
        raise ctx.unsupported("the sublist form of einsum (give the equation as a string: einsum('bij,bjk->bik', "
                              "a, b))")
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if len(operands) not in (1, 2):
        raise ctx.unsupported(f"einsum of {len(operands)} operands (one or two only: split it into pairwise "
                              "einsums)")
    names = [o.name if isinstance(o, fx.Node) else o for o in operands]
    carrying = [n.name for n in ctx.tensor_inputs()]
    if not carrying:
        raise ctx.unsupported("no operand carries relevance")
    flags = [isinstance(n, str) and n in carrying for n in names]
    if "..." not in equation:
        try:
            eq = parse_equation(equation, tuple(len(t) for t in equation.replace(" ", "").split("->")[0].split(",")))
        except ValueError as exc:
            raise ctx.unsupported(str(exc)) from exc
        problem = check_batch(eq, flags)
        if problem is not None:
            raise ctx.unsupported(problem)
    softmax = [isinstance(o, fx.Node) and o.name in ctx.softmax for o in operands]
    return EinsumStep(ctx.name, list(dict.fromkeys(carrying)), equation, names, softmax)
