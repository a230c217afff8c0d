"""Where relevance starts: the output rules, applied through the last (linear) layer (docs/rules.md#output-rules).

Logit rule: ``R_out = z_c e_c`` (the logit's value), then epsilon through the last layer:

    R_in = a * (z_c / stab(z_c)) * W'_c.

Selective rule (Faster ISNet): explain ``eta_c = log p_c - log(1 - p_c)`` class-contrastively. With
``z_cc' = z_c - z_c'`` (weights ``W_c - W_c'``, bias difference detached) and, for ``c' != c``,

    R_cc' = z_cc' * exp(-z_cc') / stab_1e-5(sum_c'' exp(-z_cc'') - 1)      (the c'' = c term is exp(0) = 1)

then epsilon through the contrastive layers: ``R_in = a * sum_c' (W_c - W_c') R_cc' / stab(z_cc')``.
Writing ``q_c' = R_cc' / stab(z_cc')`` (``q_c = 0``) that is ``a * ((sum q) W_c - q @ W)``: one (B, M, K)
by (K, F) product, however many classes. The softmax is evaluated shifted, so large logit gaps cannot overflow.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stabilize import stabilize

SELECTIVE_SOFTMAX_EPS = 1e-5


def reference_logit_output(a: Tensor, z: Tensor, weight: Tensor, targets: Tensor, eps: float = 1e-2) -> Tensor:
    """Relevance at the last linear layer's input for the logit rule.

    ``a`` (B, F) its input, ``z`` (B, K) its rule pre-activation (the logits, bias detached), ``weight`` (K, F),
    ``targets`` (B, M) class indices. Returns (B, M, F).
    """
    zc = z.gather(1, targets)
    ratio = zc / stabilize(zc, eps)
    return a.unsqueeze(1) * (ratio.unsqueeze(-1) * weight[targets])


def selective_relevance(z: Tensor, targets: Tensor, eps: float = 1e-2) -> Tensor:
    """``q`` of the selective rule, (B, M, K): ``R_cc' / stab(z_cc')`` for ``c' != c`` and 0 at ``c' = c``."""
    zc = z.gather(1, targets)
    zcc = zc.unsqueeze(-1) - z.unsqueeze(1)
    own = torch.zeros_like(zcc, dtype=torch.bool).scatter_(2, targets.unsqueeze(-1), True)
    u = (-zcc).masked_fill(own, float("-inf"))
    shift = u.amax(-1, keepdim=True).clamp(min=0).detach()
    e = torch.exp(u - shift)
    weights = e / (e.sum(-1, keepdim=True) + SELECTIVE_SOFTMAX_EPS * torch.exp(-shift))
    return zcc * weights / stabilize(zcc, eps)


def reference_selective_output(a: Tensor, z: Tensor, weight: Tensor, targets: Tensor, eps: float = 1e-2) -> Tensor:
    """Relevance at the last linear layer's input for the selective rule. Shapes as :func:`reference_logit_output`."""
    q = selective_relevance(z, targets, eps)
    s = -q
    s = s.scatter_add(2, targets.unsqueeze(-1), q.sum(-1, keepdim=True))
    return a.unsqueeze(1) * (s @ weight)


def all_logits_output(a: Tensor, z: Tensor, weight: Tensor, eps: float = 1e-2) -> Tensor:
    """Relevance at the last linear layer's input when all logits are explained together (the dual ISNet):
    ``R_out = z`` (every logit at its value, one map), then epsilon: ``R_in = a * ((z / stab(z)) @ W)``.

    ``a`` (B, F), ``z`` (B, K), ``weight`` (K, F). Returns (B, 1, F).
    """
    return (a * ((z / stabilize(z, eps)) @ weight)).unsqueeze(1)
