"""LayerNorm and GroupNorm under the epsilon rule, the standard deviation held constant (docs/rules.md).

A normalisation computes, over each normalised group of ``N`` elements,

    z = gamma * (x - mean(x)) / sigma + beta,    sigma = sqrt(var(x) + eps_norm)    (biased variance).

With ``sigma`` held constant (Ali et al., ICML 2022; AttnLRP, Achtibat et al., ICML 2024) this is linear in ``x``:
``z_j = sum_i W_ji x_i + beta_j`` with ``W_ji = gamma_j / sigma * (delta_ij - 1/N)`` (the mean stays the linear map
it is). The epsilon rule through it, with ``s = R / stab(z)``, is

    R_x_i = x_i * sum_j W_ji s_j = x_i * (gamma * s - mean_group(gamma * s))_i / sigma,

i.e. ``R_x = x * W^T s`` where ``W^T s = center(gamma * s) / sigma`` and ``center(t) = t - mean_group(t)``; the
forward map is ``W u = gamma * center(u) / sigma`` (``sigma`` is one number per group, so it commutes with the
centring). In the rule ``sigma`` (``invstd = 1 / sigma``) and ``beta`` are detached, ``gamma`` keeps its gradient
(it trains through the heatmap, as BatchNorm's does) and the mean keeps its gradient as part of ``W``. With
``beta = 0`` and ``eps -> 0`` the rule conserves relevance: ``sum_i R_x_i = sum_j R_j``, since ``sum_i W_ji x_i =
z_j`` for every group.

Which elements form a group is a :class:`NormLayout`: the last ``k`` axes (``nn.LayerNorm``, ViT's and ConvNeXt's
channels-last norm; a channels-first ``LayerNorm2d`` is traced as permute, layer_norm, permute), or ``G`` groups of
``C / G`` channels with everything after them (``nn.GroupNorm``, ``gamma`` per channel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import InputError
from .primitives import TorchPrimitives
from .stabilize import stabilize

__all__ = ["NormEpsilonFunction", "NormLayout", "group_norm_forward", "layer_norm_forward", "norm_epsilon",
           "reference_norm_epsilon", "rule_norm_preactivation"]

_KINDS = ("last", "groups")


@dataclass(frozen=True)
class NormLayout:
    """Which elements of an activation ``(B, *S)`` are normalised together, and how ``gamma`` is laid out.

    - ``NormLayout.layer_norm(k)`` (``kind="last"``, ``size=k``): each group is the last ``k`` axes;
      ``gamma`` and ``beta`` have the shape of those axes (``nn.LayerNorm(S[-k:])``).
    - ``NormLayout.group_norm(G)`` (``kind="groups"``, ``size=G``): ``(B, C, ...)`` viewed as ``(B, G, C / G,
      ...)``, each group ``(C / G, ...)``; ``gamma`` is ``(C,)``.

    The statistics (``mean``, ``invstd``) hold one value per group, in any shape with that many elements per
    image, e.g. ``torch.native_layer_norm``'s ``(B, *S[:-k], 1, ..., 1)`` or ``torch.native_group_norm``'s
    ``(B, G)``.
    """

    kind: Literal["last", "groups"]
    size: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputError(f"NormLayout kind {self.kind!r} is not one of {_KINDS}")
        if not isinstance(self.size, int) or self.size < 1:
            raise InputError(f"NormLayout size must be a positive int (axes or groups), got {self.size!r}")

    @classmethod
    def layer_norm(cls, normalized_ndim: int) -> NormLayout:
        """Normalise over the last ``normalized_ndim`` axes (``len(nn.LayerNorm.normalized_shape)``)."""
        return cls("last", normalized_ndim)

    @classmethod
    def group_norm(cls, num_groups: int) -> NormLayout:
        """Normalise ``num_groups`` groups of consecutive channels with their positions (``nn.GroupNorm``)."""
        return cls("groups", num_groups)

    def grouped_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape in which every group is a set of trailing axes: ``(B, G, C / G, ...)`` for ``groups``, the
        activation's own shape for ``last``."""
        shape = tuple(shape)
        need = self.size + 1 if self.kind == "last" else 2
        if len(shape) < need:
            raise InputError(f"a {self.describe()} needs an activation with at least {need} axes (batch first), "
                             f"got shape {shape}")
        if self.kind == "groups":
            B, C, *rest = shape
            if C % self.size:
                raise InputError(f"GroupNorm with {self.size} groups needs the channel count to be a multiple of "
                                 f"it, got {C} channels (shape {shape})")
            return (B, self.size, C // self.size, *rest)
        return shape

    def reduce_dims(self, grouped_ndim: int) -> tuple[int, ...]:
        """The axes of a group, counted from the end, so that they hold with or without a map axis after B."""
        if self.kind == "last":
            return tuple(range(-self.size, 0))
        return tuple(range(2 - grouped_ndim, 0))

    def stat_view(self, stat: Tensor, shape: Sequence[int]) -> Tensor:
        """View a per-group statistic so that it broadcasts over the grouped activation ``(B, *grouped)``."""
        grouped = self.grouped_shape(shape)
        keep = list(grouped)
        for d in self.reduce_dims(len(grouped)):
            keep[d] = 1
        if stat.numel() != math.prod(keep):
            raise InputError(f"a {self.describe()} of an activation of shape {tuple(shape)} has statistics of "
                             f"{math.prod(keep)} elements (shape {tuple(keep)}), got shape {tuple(stat.shape)}")
        return stat.reshape(keep)

    def affine_view(self, param: Tensor, shape: Sequence[int]) -> Tensor:
        """View ``gamma`` or ``beta`` so that it broadcasts over the grouped activation ``(B, *grouped)``."""
        shape = tuple(shape)
        grouped = self.grouped_shape(shape)
        want = shape[-self.size:] if self.kind == "last" else (shape[1],)
        if param.numel() != math.prod(want):
            raise InputError(f"a {self.describe()} of an activation of shape {shape} has an affine parameter of "
                             f"shape {want}, got shape {tuple(param.shape)}")
        if self.kind == "last":
            return param.reshape(want)
        return param.reshape(grouped[1], grouped[2], *([1] * (len(shape) - 2)))

    def describe(self) -> str:
        if self.kind == "last":
            return f"LayerNorm over the last {self.size} axes"
        return f"GroupNorm with {self.size} groups"


def _center(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``t - mean_group(t)``: the centring map, self-adjoint."""
    return t - t.mean(dims, keepdim=True)


def _adjoint(s: Tensor, gamma: Tensor | None, invstd: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``W^T s = center(gamma * s) * invstd`` on grouped map tensors (B, M, *grouped); ``invstd`` (B, 1, ...)."""
    return _center(s if gamma is None else s * gamma, dims) * invstd


def layer_norm_forward(x: Tensor, normalized_shape: Sequence[int], weight: Tensor | None = None,
                       bias: Tensor | None = None, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """``F.layer_norm`` (bit-identical: the same ATen kernel) returning ``(y, mean, invstd)``; the statistics are
    ``(B, *S[:-k], 1, ..., 1)``, one per group, without gradient."""
    return torch.native_layer_norm(x, list(normalized_shape), weight, bias, eps)


def group_norm_forward(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
                       eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """``F.group_norm`` (the same ATen kernel) returning ``(y, mean, invstd)``, statistics ``(B, G)``."""
    B, C = x.shape[:2]
    NormLayout.group_norm(num_groups).grouped_shape(x.shape)  # validates C % G
    return torch.native_group_norm(x.contiguous(), weight, bias, B, C, math.prod(x.shape[2:]), num_groups, eps)


def rule_norm_preactivation(a: Tensor, gamma: Tensor | None, beta: Tensor | None, mean: Tensor | None,
                            invstd: Tensor, layout: NormLayout) -> Tensor:
    """The pre-activation ``z`` the rule divides by, with the rule's gradient.

    ``z = gamma * (a - mu) * invstd.detach() + beta.detach()``: the forward pass's normalisation output in value,
    ``gamma`` live, ``beta`` and ``invstd`` detached, and ``mu`` the group mean of ``a`` with its gradient (part
    of the linear map ``W``), so that ``dz/da = W``. When the forward's ``mean`` is given, ``mu`` takes its exact
    value (``mean.detach() + (m - m.detach())`` with ``m`` the mean recomputed from ``a``: the value of ``mean``,
    the gradient of ``m``); with ``mean=None`` it is ``m``.
    """
    shape = layout.grouped_shape(a.shape)
    dims = layout.reduce_dims(len(shape))
    g = a.reshape(shape)
    m = g.mean(dims, keepdim=True)
    mu = m if mean is None else layout.stat_view(mean, a.shape).detach() + (m - m.detach())
    z = (g - mu) * layout.stat_view(invstd, a.shape).detach()
    if gamma is not None:
        z = z * layout.affine_view(gamma, a.shape)
    if beta is not None:
        z = z + layout.affine_view(beta, a.shape).detach()
    return z.reshape(a.shape)


def reference_norm_epsilon(R: Tensor, a: Tensor, z: Tensor, gamma: Tensor | None, invstd: Tensor,
                           layout: NormLayout, eps: float = 1e-2) -> Tensor:
    """Epsilon rule through a normalisation with ``sigma`` held constant: ``R_in = a * center(gamma * s) * invstd``,
    ``s = R / stab(z)``, the centring over each group of ``layout``.

    Parameters
    ----------
    R : (B, M, *S) relevance at the normalisation's output.
    a : (B, *S) its input.
    z : (B, *S) its output with the rule's gradient (:func:`rule_norm_preactivation`).
    gamma : the scale (live), shaped as ``layout`` says, or None (no elementwise affine).
    invstd : ``1 / sigma`` per group (detached here), any shape with one element per group.
    """
    B, M = R.shape[:2]
    shape = layout.grouped_shape(a.shape)
    dims = layout.reduce_dims(len(shape))
    s = (R / stabilize(z, eps).unsqueeze(1)).reshape(B, M, *shape[1:])
    gam = None if gamma is None else layout.affine_view(gamma, a.shape)
    c = _adjoint(s, gam, layout.stat_view(invstd, a.shape).detach().unsqueeze(1), dims)
    return a.unsqueeze(1) * c.reshape(R.shape)


class NormEpsilonFunction(torch.autograd.Function):
    """Epsilon rule through a normalisation (``sigma`` constant) with a hand-written backward.

    Forward: ``s = R / t``, ``c = W^T s = center(gamma s) invstd``, ``R_in = a c`` with ``t = stab(z)``. Backward,
    given ``G = dL/dR_in``: ``U = G a``, ``dL/da = sum_M G c``; ``V = center(U) invstd`` (the gradient w.r.t.
    ``gamma s``: the centring is self-adjoint and ``invstd`` constant per group); ``dL/dgamma = sum V s`` over all
    but ``gamma``'s axes; ``dL/ds = gamma V = W U``; ``dL/dR = W U / t``, ``dL/dz = -sum_M (W U) s / t``.
    ``invstd`` gets no gradient (held constant by the rule). The elementwise steps are the backend's primitives;
    the centring is a mean over each group.
    """

    @staticmethod
    def forward(ctx: Any, R: Tensor, a: Tensor, z: Tensor, gamma: Tensor | None, invstd: Tensor,
                layout: NormLayout, eps: float, prims: TorchPrimitives) -> Tensor:
        B, M = R.shape[:2]
        shape = layout.grouped_shape(a.shape)
        dims = layout.reduce_dims(len(shape))
        R_, a_, z_ = R.contiguous(), a.contiguous(), z.contiguous()
        inv = layout.stat_view(invstd.detach(), a.shape).unsqueeze(1)
        gam = None if gamma is None else layout.affine_view(gamma, a.shape)
        s = prims.stab_divide(R_.view(B, M, -1), z_.view(B, -1), eps)
        c = _adjoint(s.view(B, M, *shape[1:]), gam, inv, dims).reshape(B, M, -1)
        R_in = prims.mul_activation(c, a_.view(B, -1))
        ctx.save_for_backward(R_, a_, z_, gamma, inv, c if ctx.needs_input_grad[1] else None)
        ctx.layout, ctx.eps, ctx.prims = layout, eps, prims
        return R_in.view(R.shape)

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, ...]:
        R, a, z, gamma, inv, c = ctx.saved_tensors
        layout, eps, prims = ctx.layout, ctx.eps, ctx.prims
        B, M = R.shape[:2]
        shape = layout.grouped_shape(a.shape)
        dims = layout.reduce_dims(len(shape))
        U, dA = prims.epsilon_backward_input(G.contiguous().view(B, M, -1), a.view(B, -1), c)
        V = _center(U.reshape(B, M, *shape[1:]), dims) * inv
        s = prims.stab_divide(R.view(B, M, -1), z.view(B, -1), eps)
        dgamma = dR = dZ = None
        if gamma is not None:
            gam = layout.affine_view(gamma, a.shape)
            if ctx.needs_input_grad[3]:
                dgamma = (V * s.view(V.shape)).sum_to_size(gam.shape).reshape(gamma.shape)
            V = V * gam
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            dR, dZ = prims.epsilon_backward_stab(V.reshape(B, M, -1), s, z.view(B, -1), eps)
            dR, dZ = dR.view(R.shape), dZ.view(z.shape)
        return dR, None if dA is None else dA.view(a.shape), dZ, dgamma, None, None, None, None


def norm_epsilon(R: Tensor, a: Tensor, z: Tensor, gamma: Tensor | None, invstd: Tensor, layout: NormLayout,
                 eps: float = 1e-2, prims: TorchPrimitives | None = None) -> Tensor:
    """Epsilon rule through a LayerNorm / GroupNorm on a backend's primitives, or (``prims`` None) the reference."""
    if prims is None:
        return reference_norm_epsilon(R, a, z, gamma, invstd, layout, eps)
    return NormEpsilonFunction.apply(R, a, z, gamma, invstd, layout, eps, prims)
