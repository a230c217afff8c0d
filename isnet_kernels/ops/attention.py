"""Attention under AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022) (docs/rules.md).

- Softmax ``s = softmax(x, dim)``: ``R_x = x * (R - s * sum_dim R)``, ``x`` times the vector-Jacobian product of
  ``R / s`` through the softmax (``J_ji = ds_j/dx_i = s_j (delta_ij - s_i)``, so ``sum_j J_ji R_j / s_j =
  R_i - s_i sum_j R_j``). Not conservative: along ``dim``, ``sum R_x = sum_i R_i (x_i - sum_j s_j x_j)``, which
  is invariant to a shift of ``x`` (the softmax's own invariance) and is 0 when ``R`` is proportional to ``s``.
  Entries with ``x = -inf`` (masked: ``s = 0`` there) get no relevance.
- Matrix product of two activations ``y = A @ B`` (batched, leading axes broadcast): the uniform epsilon rule,
  with ``S = R / (2 stab(y))``: ``R_A = A * (S @ B^T)``, ``R_B = B * (A^T @ S)``, i.e. ``R_A_ij = sum_k A_ij B_jk
  S_ik`` and ``R_B_jk = sum_i A_ij B_jk S_ik``. Conservative as ``eps -> 0``: ``sum R_A + sum R_B = sum R y /
  stab(y)``.
- CP-LRP: ``A`` (the attention probabilities) held constant, ``y = A @ B`` linear in ``B``: ``R_B = B * (A^T @ (R
  / stab(y)))`` with ``A`` detached, none to ``A``.
- Scaled dot-product attention ``out = softmax(scale * q @ k^T + bias) @ v`` (``F.scaled_dot_product_attention``,
  ``nn.MultiheadAttention``'s core) composed of the rules above: the product ``p @ v`` (uniform, or CP), the
  softmax, and the scores ``scale * q @ k^T + bias`` as one bilinear map with a bias (the uniform rule with
  ``y = scores``: the additive mask or position bias is held constant and, as a bias does, keeps its share;
  ``scale`` is a constant factor of the product). With CP-LRP ``q`` and ``k`` get none.

Relevance is (B, M, ...), activations (B, ...); the map axis is folded into the rows (or columns) of the products,
so no activation is repeated M times.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..errors import InputError
from .stabilize import stabilize

__all__ = ["attention_bias", "reference_matmul_cp", "reference_matmul_uniform", "reference_sdpa_relevance",
           "reference_softmax", "sdpa_forward"]


def _map_dim(dim: int, ndim: int) -> int:
    """The axis of a map tensor (B, M, ...) that is axis ``dim`` of an activation (B, ...)."""
    if not -ndim <= dim < ndim:
        raise InputError(f"dim {dim} is out of range for an activation with {ndim} axes")
    dim = dim % ndim
    if dim == 0:
        raise InputError("the softmax rule runs along a feature axis, not the batch axis 0")
    return dim + 1


def _unmask(x: Tensor) -> Tensor:
    """``x`` with ``-inf`` (masked entries) replaced by 0, so that products with it stay finite."""
    return torch.where(torch.isneginf(x), torch.zeros((), dtype=x.dtype, device=x.device), x)


def reference_softmax(R: Tensor, x: Tensor, s: Tensor, dim: int) -> Tensor:
    """AttnLRP's softmax rule: ``R_x = x * (R - s * sum_dim R)``.

    ``R`` (B, M, ...) at the softmax output, ``x`` its input and ``s`` its output (B, ...); ``dim`` is the softmax
    axis of ``x``. ``-inf`` entries of ``x`` get 0.
    """
    if R.dim() != x.dim() + 1 or R.shape[2:] != x.shape[1:] or s.shape != x.shape:
        raise InputError(f"softmax rule: R must be (B, M, *x.shape[1:]) and s the shape of x, got R "
                         f"{tuple(R.shape)}, x {tuple(x.shape)}, s {tuple(s.shape)}")
    d = _map_dim(dim, x.dim())
    return _unmask(x).unsqueeze(1) * (R - s.unsqueeze(1) * R.sum(d, keepdim=True))


def _check_matmul(R: Tensor, A: Tensor, B: Tensor, y: Tensor) -> None:
    if not (A.dim() == B.dim() == y.dim() >= 3):
        raise InputError(f"matmul rule: A, B and y must be batched matrices (B, ..., n, k) of one rank, got A "
                         f"{tuple(A.shape)}, B {tuple(B.shape)}, y {tuple(y.shape)}; a product with a weight "
                         "is a linear layer")
    if A.shape[0] != y.shape[0] or B.shape[0] != y.shape[0]:
        raise InputError(f"matmul rule: A {tuple(A.shape)} and B {tuple(B.shape)} must have the output's batch "
                         f"axis ({y.shape[0]})")
    if R.dim() != y.dim() + 1 or R.shape[0] != y.shape[0] or R.shape[2:] != y.shape[1:]:
        raise InputError(f"matmul rule: R must be (B, M, *y.shape[1:]) for y {tuple(y.shape)}, got "
                         f"{tuple(R.shape)}")


def _rows(S: Tensor, right: Tensor) -> Tensor:
    """``S @ right`` for a map S (b, M, ..., n, m) and an activation ``right`` (b, ..., m, k), M folded into the
    rows: (b, M, ..., n, k)."""
    M, n, m = S.shape[1], S.shape[-2], S.shape[-1]
    St = S.movedim(1, -3)  # (b, ..., M, n, m)
    lead = St.shape[:-3]
    out = St.reshape(*lead, M * n, m) @ right
    return out.view(*out.shape[:-2], M, n, out.shape[-1]).movedim(-3, 1)


def _cols(left: Tensor, S: Tensor) -> Tensor:
    """``left @ S`` for an activation ``left`` (b, ..., k, n) and a map S (b, M, ..., n, m), M folded into the
    columns: (b, M, ..., k, m)."""
    M, n, m = S.shape[1], S.shape[-2], S.shape[-1]
    St = S.movedim(1, -2)  # (b, ..., n, M, m)
    lead = St.shape[:-3]
    out = left @ St.reshape(*lead, n, M * m)
    return out.view(*out.shape[:-1], M, m).movedim(-2, 1)


def _sum_to(R: Tensor, operand: Tensor) -> Tensor:
    """Sum a map tensor over the leading axes ``operand`` (B, ...) was broadcast along."""
    target = (R.shape[0], R.shape[1], *operand.shape[1:])
    return R if tuple(R.shape) == target else R.sum_to_size(target)


def reference_matmul_uniform(R: Tensor, A: Tensor, B: Tensor, y: Tensor,
                             eps: float = 1e-2) -> tuple[Tensor, Tensor]:
    """Uniform epsilon rule for ``y = A @ B``: with ``S = R / (2 stab(y))``, ``R_A = A * (S @ B^T)`` and
    ``R_B = B * (A^T @ S)``.

    ``R`` (b, M, ..., n, m); ``A`` (b, ..., n, k), ``B`` (b, ..., k, m), ``y`` (b, ..., n, m), leading axes
    broadcast as ``torch.matmul`` does (each relevance is summed back to its operand's shape).
    """
    _check_matmul(R, A, B, y)
    S = R / (2 * stabilize(y, eps)).unsqueeze(1)
    R_A = A.unsqueeze(1) * _rows(S, B.mT)
    R_B = B.unsqueeze(1) * _cols(A.mT, S)
    return _sum_to(R_A, A), _sum_to(R_B, B)


def reference_matmul_cp(R: Tensor, A: Tensor, B: Tensor, y: Tensor, eps: float = 1e-2) -> tuple[None, Tensor]:
    """CP-LRP for ``y = A @ B`` with ``A`` held constant: ``(None, R_B)``, ``R_B = B * (A^T @ (R / stab(y)))``,
    ``A`` detached (``y``'s gradient is the caller's)."""
    _check_matmul(R, A, B, y)
    S = R / stabilize(y, eps).unsqueeze(1)
    return None, _sum_to(B.unsqueeze(1) * _cols(A.detach().mT, S), B)


def attention_bias(attn_mask: Tensor | None, is_causal: bool, L: int, S: int, dtype: torch.dtype,
                   device: torch.device | str | None = None) -> Tensor | None:
    """The additive bias ``F.scaled_dot_product_attention`` applies to the scores: a boolean mask (True: the
    query attends to the key) becomes 0 / ``-inf``, a float mask is added as it is, ``is_causal`` masks keys
    after the query (upper-left aligned); None when there is neither."""
    bias = None
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=device).tril()
        bias = torch.zeros(L, S, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(
                ~attn_mask, float("-inf"))
        bias = attn_mask if bias is None else bias + attn_mask
    return bias


def sdpa_forward(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None,
                 is_causal: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``F.scaled_dot_product_attention`` without dropout, returning ``(out, p, scores)`` for the relevance:
    ``scores = scale * q @ k^T + bias``, ``p = softmax(scores, -1)``, ``out = p @ v``; ``scale`` defaults to
    ``1 / sqrt(E)``. ``q`` (B, ..., L, E), ``k`` (B, ..., S, E), ``v`` (B, ..., S, Ev). A float mask keeps its
    gradient (a learnt position bias trains as it does through ``F.scaled_dot_product_attention``). A query whose
    keys are all masked gets ``p = 0`` and ``out = 0``, as PyTorch's attention gives."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.mT) * scale
    bias = attention_bias(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.dtype, q.device)
    if bias is None:
        p = torch.softmax(scores, -1)
    else:
        scores = scores + bias
        dead = torch.isneginf(scores).all(-1, keepdim=True)  # a query that attends to no key: p = 0, as torch's
        p = torch.softmax(scores.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    return p @ v, p, scores


def reference_sdpa_relevance(
    R_out: Tensor, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, scale: float | None = None,
    rule: Literal["attnlrp", "cp"] = "attnlrp", eps: float = 1e-2, *, is_causal: bool = False,
    saved: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Relevance of ``q``, ``k``, ``v`` for scaled dot-product attention: ``(R_q, R_k, R_v)``.

    ``R_out`` (B, M, ..., L, Ev). ``rule="attnlrp"``: ``R_p, R_v`` by the uniform rule on ``out = p @ v``,
    ``R_scores`` by the softmax rule, ``R_q, R_k`` by the uniform rule on ``scores = (scale q) @ k^T + bias``
    with ``y = scores`` (the bias, detached there, keeps its share; it keeps its gradient through ``scores`` and
    ``p`` in the softmax rule). ``rule="cp"``: ``R_v`` by CP-LRP, ``R_q`` and
    ``R_k`` None. ``saved`` is :func:`sdpa_forward`'s ``(out, p, scores)`` from the forward pass (recomputed
    when None). No dropout (eval mode, or ``dropout_p = 0``).
    """
    if rule not in ("attnlrp", "cp"):
        raise InputError(f"attention rule {rule!r} is not one of ('attnlrp', 'cp')")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out, p, scores = saved if saved is not None else sdpa_forward(q, k, v, attn_mask, scale, is_causal)
    if rule == "cp":
        return None, None, reference_matmul_cp(R_out, p, v, out, eps)[1]
    R_p, R_v = reference_matmul_uniform(R_out, p, v, out, eps)
    R_scores = reference_softmax(R_p, scores, p, -1)
    z = scores
    bias = attention_bias(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.dtype, q.device)
    if bias is not None and bias.requires_grad:  # the bias enters the product's denominator detached
        live = _unmask(bias)
        z = scores - (live - live.detach())
    R_q, R_kt = reference_matmul_uniform(R_scores, q * scale, k.mT, _unmask(z), eps)
    return R_q, R_kt.mT, R_v
