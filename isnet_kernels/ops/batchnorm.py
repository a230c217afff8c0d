"""BatchNorm under the LRP rules (docs/rules.md#folded-batchnorm).

A BatchNorm after a convolution or linear layer is folded into it:

    W' = W * gamma / sigma,    b' = gamma * (b - mu) / sigma + beta,    sigma = sqrt(var + eps_bn),

with ``mu, var`` the statistics the BatchNorm normalised with in this forward pass (train mode: the batch's,
biased variance; eval mode: the running ones). ``gamma`` keeps its gradient; ``beta``, ``b`` and the
statistics are detached, so the rule's pre-activation behaves as ``z = gamma * xhat + const`` with ``xhat`` a
function of the layer input and ``W`` only. The rule reads ``z``'s value from the forward pass and gives it
exactly that gradient (:func:`rule_preactivation`), so no convolution is recomputed.

With ``live_stats=True`` (train mode only: :func:`batch_statistics` of the layer output, attached to its graph)
the statistics keep their gradient too: ``z`` is then the BatchNorm's own function of ``W`` and the layer input,
``beta`` and ``b`` alone detached. The heatmap is then invariant to the scale of the weights before a BatchNorm,
as the classifier is, and its gradient w.r.t. those weights is the true derivative.

A BatchNorm with no linear layer before it (DenseNet's pre-activation norms) is itself a linear layer with
diagonal weight ``gamma / sigma`` and takes the epsilon rule (:func:`reference_batchnorm_epsilon`), or under the
z+ rule its positive diagonal weight and shift (:func:`reference_batchnorm_zplus`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .preactivation import Preactivation
from .primitives import TorchPrimitives
from .stabilize import stabilize


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    """View a (C,) vector so that it broadcasts over the channel axis (1) of an ``ndim``-d activation."""
    return v.view(-1, *([1] * (ndim - 2)))


def batch_statistics(x: Tensor, bn_eps: float) -> tuple[Tensor, Tensor]:
    """Per-channel (axis 1) mean and inverse standard deviation ``1 / sqrt(var + bn_eps)`` of ``x`` over every
    other axis, biased variance: the statistics a train-mode BatchNorm normalises ``x`` with, on ``x``'s graph."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dims, correction=0)
    return mean, torch.rsqrt(var + bn_eps)


def batchnorm_scale(gamma: Tensor | None, invstd: Tensor, live_stats: bool = False) -> Tensor:
    """``gamma / sigma`` with ``gamma`` live and the statistics detached (kept live with ``live_stats``);
    ``gamma = 1`` when not affine."""
    if not live_stats:
        invstd = invstd.detach()
    return invstd if gamma is None else gamma * invstd


def scale_relevance(R: Tensor, gamma: Tensor | None, invstd: Tensor, live_stats: bool = False) -> Tensor:
    """``R * gamma / sigma`` per output channel (axis 2 of a conv's (B, M, C, H, W) relevance, the last axis of a
    linear layer's (B, M, C)), with :func:`batchnorm_scale`'s detach semantics.

    The epsilon rule through a folded layer, ``W'^T (R / t)`` with ``W' = W gamma / sigma``, equals ``W^T (R gamma
    / sigma / t)``: the same value and gradient, and scaling the relevance costs less than folding the weight when
    the weight is the larger of the two (deep layers with small maps).
    """
    scale = batchnorm_scale(gamma, invstd, live_stats)
    return R * scale.view(-1, *([1] * (R.dim() - 3)))


def fold_batchnorm(
    weight: Tensor, bias: Tensor | None, gamma: Tensor | None, beta: Tensor | None, mean: Tensor, invstd: Tensor,
    live_stats: bool = False,
) -> tuple[Tensor, Tensor]:
    """Fold a BatchNorm into the preceding layer: returns ``(W', b')`` with the rule's detach semantics."""
    scale = batchnorm_scale(gamma, invstd, live_stats)
    w = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    mean = mean if live_stats else mean.detach()
    shifted = -mean if bias is None else bias.detach() - mean
    b = scale * shifted
    if beta is not None:
        b = b + beta.detach()
    return w, b


def rule_preactivation(
    x0: Tensor, bias: Tensor | None, gamma: Tensor | None = None, beta: Tensor | None = None,
    mean: Tensor | None = None, invstd: Tensor | None = None, live_stats: bool = False, parts: bool = False,
) -> Tensor | Preactivation:
    """The pre-activation ``z`` the rules divide by, with the rule's gradient; with ``parts``, given by its parts
    (:class:`~isnet_kernels.ops.preactivation.Preactivation`: ``x0``, the per-channel scale and shift), for an op that
    rebuilds ``z`` instead of keeping it.

    ``x0`` is the linear layer's output without its bias (live). Without BatchNorm, ``z = x0 + b`` with ``b``
    detached; with it, ``z = gamma * (x0 + b - mu) / sigma + beta`` with only ``x0`` and ``gamma`` live (and
    ``mu``, ``sigma`` with ``live_stats``). Its value is the forward pass's BatchNorm output.
    """
    if mean is None:
        if bias is None:
            return Preactivation(x0) if parts else x0
        pre = Preactivation(x0, None, _per_channel(bias.detach(), x0.dim()))
        return pre if parts else pre.value()
    mean = mean if live_stats else mean.detach()
    shift = -mean if bias is None else bias.detach() - mean
    scale = batchnorm_scale(gamma, invstd, live_stats)
    # z = x0 * scale + (shift * scale + beta): autograd keeps x0 (the forward's tensor) and the (C,) vectors for
    # the backward, where (x0 + shift) * scale would keep the activation-sized x0 + shift as well
    offset = shift * scale
    if beta is not None:
        offset = offset + beta.detach()
    pre = Preactivation(x0, _per_channel(scale, x0.dim()), _per_channel(offset, x0.dim()))
    return pre if parts else pre.value()


def reference_batchnorm_epsilon(
    R: Tensor, a: Tensor, z: Tensor, gamma: Tensor | None, invstd: Tensor, eps: float = 1e-2,
    live_stats: bool = False,
) -> Tensor:
    """Epsilon rule through a standalone BatchNorm (diagonal weights ``gamma / sigma``).

    ``R`` (B, M, C, ...); ``a`` the BatchNorm input (B, C, ...); ``z`` its pre-activation with the rule's
    gradient (:func:`rule_preactivation` with ``x0 = a`` and no bias): ``R_in = a * (gamma/sigma) * R / stab(z)``.
    """
    scale = _per_channel(batchnorm_scale(gamma, invstd, live_stats), a.dim())
    return (a * scale).unsqueeze(1) * (R / stabilize(z, eps).unsqueeze(1))


def reference_batchnorm_zplus(
    R: Tensor, a: Tensor, gamma: Tensor | None, beta: Tensor | None, mean: Tensor, invstd: Tensor,
    eps: float = 1e-2, live_stats: bool = False,
) -> Tensor:
    """The z+ rule through a standalone BatchNorm: its positive diagonal weight and positive shift,

        w+ = max(gamma / sigma, 0),    b+ = max(beta - mu gamma / sigma, 0),
        z+ = w+ a + b+,                R_in = a * w+ * R / stab(z+).

    ``R`` (B, M, C, ...); ``a`` the BatchNorm input (B, C, ...). ``gamma / sigma`` keeps :func:`batchnorm_scale`'s
    gradient (``gamma`` live, the statistics with ``live_stats``); the shift is detached throughout (``mu``,
    ``beta`` and the scale inside it).
    """
    scale = batchnorm_scale(gamma, invstd, live_stats)
    shift = -mean.detach() * scale.detach()
    if beta is not None:
        shift = shift + beta.detach()
    w_pos, b_pos = scale.clamp(min=0), shift.clamp(min=0)
    view = (-1, *([1] * (a.dim() - 2)))
    z = a * w_pos.view(view) + b_pos.view(view)
    return a.unsqueeze(1) * w_pos.view(view) * R / stabilize(z, eps).unsqueeze(1)


def batchnorm_epsilon(R: Tensor, a: Tensor, z: Tensor, gamma: Tensor | None, invstd: Tensor, eps: float = 1e-2,
                      prims: TorchPrimitives | None = None, live_stats: bool = False) -> Tensor:
    """Epsilon rule through a standalone BatchNorm, on a backend's primitives or (``prims`` None) the reference.

    With ``a' = a * gamma / sigma`` (autograd, batch-sized) it is the linear-pool rule with ``P = identity``.
    """
    if prims is None:
        return reference_batchnorm_epsilon(R, a, z, gamma, invstd, eps, live_stats)
    from .pool import LinearPoolFunction

    scaled = a * _per_channel(batchnorm_scale(gamma, invstd, live_stats), a.dim())
    return LinearPoolFunction.apply(R, scaled, z, _identity, _identity, eps, prims)


def _identity(t: Tensor) -> Tensor:
    return t
