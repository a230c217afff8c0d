"""Residual-add split (docs/rules.md#residual-add): for ``y = x + f``, ``T = R / stab(y)``, ``R_x = x * T``, ``R_f =
f * T``.

``y`` is the forward output of the addition: the relevance program does not keep it but recomputes it, ``x + f``
(bitwise the forward's value), where the rule needs it. Both parts are propagated on and summed
where the branches meet again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .primitives import TorchPrimitives
from .stabilize import stabilize


def reference_residual_split(R: Tensor, x: Tensor, f: Tensor, y: Tensor, eps: float = 1e-2) -> tuple[Tensor, Tensor]:
    """Split ``R`` (B, M, ...) between the summands ``x`` and ``f`` (B, ...) of ``y = x + f``."""
    T = R / stabilize(y, eps).unsqueeze(1)
    return x.unsqueeze(1) * T, f.unsqueeze(1) * T


class ResidualFunction(torch.autograd.Function):
    """Residual split with a hand-written backward (docs/kernels.md#residual-add): one pass each way.

    Backward with ``G_x``, ``G_f``: ``Q = G_x x + G_f f``; ``dR = Q / t``; ``dx = sum_M G_x T``;
    ``df = sum_M G_f T``; ``dy = -sum_M Q T / t``. Given ``y`` (the forward's sum, with its own graph), ``dy`` is
    returned for it and reaches ``x`` and ``f`` through the forward graph, which completes the ``dL/dx`` and
    ``dL/df`` of docs/kernels.md#residual-add. With ``y`` None, ``y = x + f`` is recomputed here in both passes
    (one add, bitwise the forward's) instead of being kept, and ``dy`` is added to ``dx`` and ``df`` directly.
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, x: Tensor, f: Tensor, y: Tensor | None, eps: float,
                prims: TorchPrimitives) -> tuple[Tensor, Tensor]:
        B, M = R.shape[:2]
        R_, x_, f_ = R.contiguous(), x.contiguous(), f.contiguous()
        y_ = (x_ + f_) if y is None else y.contiguous()
        Rx, Rf = prims.residual_forward(R_.view(B, M, -1), x_.view(B, -1), f_.view(B, -1), y_.view(B, -1), eps)
        ctx.save_for_backward(R_, x_, f_, None if y is None else y_)
        ctx.eps, ctx.prims = eps, prims
        return Rx.view(R.shape), Rf.view(R.shape)

    @staticmethod
    def backward(ctx: Any, Gx: Tensor | None, Gf: Tensor | None) -> tuple[Tensor | None, ...]:
        R, x, f, y = ctx.saved_tensors
        recomputed = y is None
        if recomputed:
            y = x + f
        B, M = R.shape[:2]
        Gx = torch.zeros_like(R) if Gx is None else Gx.contiguous()
        Gf = torch.zeros_like(R) if Gf is None else Gf.contiguous()
        dR, dx, df, dy = ctx.prims.residual_backward(Gx.view(B, M, -1), Gf.view(B, M, -1), R.view(B, M, -1),
                                                     x.view(B, -1), f.view(B, -1), y.view(B, -1), ctx.eps)
        if recomputed:
            return dR.view(R.shape), (dx + dy).view(x.shape), (df + dy).view(f.shape), None, None, None
        return dR.view(R.shape), dx.view(x.shape), df.view(f.shape), dy.view(y.shape), None, None


def residual_split(R: Tensor, x: Tensor, f: Tensor, y: Tensor | None, eps: float,
                   prims: TorchPrimitives | None = None) -> tuple[Tensor, Tensor]:
    """Residual split on a backend's primitives or (``prims`` None) the reference; ``y`` None: ``y = x + f``,
    recomputed (not kept for the backward on a backend's primitives)."""
    if prims is None:
        return reference_residual_split(R, x, f, x + f if y is None else y, eps)
    return ResidualFunction.apply(R, x, f, y, eps, prims)
