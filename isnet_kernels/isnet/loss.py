"""The ISNet loss: cross-entropy plus the heatmap loss of docs/isnet.md#the-heatmap-loss (``LRPLossCEValleysGWRP``).

Heatmaps ``H`` (B, M, C, h, w), mask (1 = foreground) resized to (h, w) by adaptive average pooling and binarised
with ``!= 0`` (a cell is background only if it holds no foreground at all).

Global weighted ranked pooling, ``GWRP_d(v) = sum_i d^i v_(i) / sum_i d^i`` over ``v`` sorted descending (d = 0
is the max, d = 1 the mean), with the weights precomputed once per length.

Background term, per image b and map m::

    Hn = |H| / (mean of |H| over the foreground elements + 1e-10)
    S_c = GWRP_d(Hn_c * (1 - mask))                    per channel c, over the h*w positions
    L_bkg = mean_{m, c} -log(1 - min(S_c / (S_c + E), 1 - 1e-7))

Background-mass term (``mass`` > 0; off by default): the share of the relevance mass outside the mask,
per image b and map m, through the same saturation::

    f = sum(|H| * (1 - mask)) / (sum(|H| * (1 - mask)) + E * sum(|H| * mask))
    L_mass = -log(1 - min(f, 1 - 1e-7))

GWRP is a weighted *mean* of the background (``sum_i d^i = 1``): a faint relevance spread evenly over many
background pixels gives a small S whatever d is, though its mass (count x mean) may exceed the foreground's. The
mass term sees that total: ``f`` is the background fraction of the relevance (at ``E = 1``), the figure the
evaluation reports.

Foreground term on the raw map: ``F = sum(|H| * mask)`` per (b, m); left ``(min(F / C1, 1) - 1)^2`` (too little
relevance inside the mask), right ``((max(F, C2) - C2) / C1)^2`` ("l2"), or, "hybrid" (Faster ISNet), that l2
term while ``F <= C1 + C2`` (tested on a detached value) and ``F - C1 - C2 + 1`` beyond (the same value, 1, at the
seam; slope 2 / C1 on the quadratic side and 1 on the linear one, equal only for C1 = 2: the gradient stays bounded
for very large maps). ``L_fg = mean_m(left + right)``.

``L_heat = mean_b(A * L_bkg + mass * L_mass + B * L_fg)`` and ``L = (1 - P) * CE(logits, y) + P * L_heat``. With deep
supervision the heatmap losses of the input and of each supervised layer are combined by a 1-D GWRP with decay
``d_loss`` (largest first).

Multi-label classification (``task="multilabel"``, targets ``t`` (B, K) in {0, 1}): the classification term is
binary cross-entropy with logits summed over the labels of an image and averaged over the images,
``-mean_b sum_k(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z)))`` (the negative log-likelihood of the image's label
vector, whose gradient per logit, ``sigmoid(z) - t``, has the scale of cross-entropy's; a mean over the labels
would divide the classification step by K against the heatmap loss), and the heatmap
loss counts the maps whose weight (``ISNetOutput.weights``, (B, M)) is 1: per image the mean over its counted
maps, then the mean over the images with at least one (an image with no positive label adds no heatmap loss)::

    L_heat = sum_{b: W_b > 0} (sum_m w_bm l_bm / W_b) / #{b: W_b > 0},     W_b = sum_m w_bm

Everything is vectorised over (B, M, C): one sort per call, no Python loop over samples, maps or classes and no
host synchronisation, except the checks that ``nonfinite`` and ``check_masks`` ask for (documented there).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, InputTypeError, NonFiniteLossError, TargetError
from .output import ISNetOutput
from .presets import LOSS_PRESETS, preset_value

FOREGROUND_RULES = ("hybrid", "l2")
NONFINITE_POLICIES = ("raise", "skip", "propagate")
#: ``ISNetLoss(task=...)``: cross-entropy over classes (labels (B,)) or binary cross-entropy per class (targets (B, K)).
TASKS = ("multiclass", "multilabel")
NORM_EPS = 1e-10
SATURATION = 1 - 1e-7


@functools.lru_cache(maxsize=64)
def _gwrp_weights(n: int, d: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    w = torch.pow(torch.tensor(d, dtype=torch.float64), torch.arange(n, dtype=torch.float64))  # 0^0 = 1: d = 0 is max
    return (w / w.sum()).to(dtype=dtype, device=device)


def check_decay(d: float) -> None:
    """The GWRP decay must be in [0, 1] (0: max, 1: mean)."""
    if not 0 <= d <= 1:
        raise InputError(f"the GWRP decay d must be in [0, 1] (0: max, 1: mean), got {d}")


def gwrp(v: Tensor, d: float) -> Tensor:
    """Global weighted ranked pooling over the last axis: ``sum_i d^i v_(i) / sum_i d^i``, v sorted descending."""
    check_decay(d)
    n = v.shape[-1]
    ranked = v.sort(dim=-1, descending=True).values
    return ranked @ _gwrp_weights(n, float(d), v.dtype, v.device)


class BackgroundScore(torch.autograd.Function):
    """``S = GWRP_d(A (1 - m) / s)`` over the spatial axes of heatmap magnitudes ``A = |H|`` (B, M, C, h, w), masks
    ``m`` (B, 1, 1, h, w) and per-map scales ``s`` (B, M), keeping for the backward one value per element.

    With ``v = A (1 - m) / s`` and ``g_j = d^rank(j) / sum_i d^i`` (the GWRP weight of ``v_j``'s rank),
    ``S = sum_j g_j v_j``, so ``dS/dA_j = g_j (1 - m_j) / s`` and ``dS/ds = -S / s``. The forward computes ``S``
    exactly as :func:`gwrp` does (the same operations, the same values) and keeps ``g`` (one value per element);
    the autograd graph of the same expression keeps ``A`` and the sort's int64 indices (three values' worth per
    element). ``A`` itself is not kept: the caller's ``|H|`` (whose own backward keeps ``H``) takes the gradient.
    """

    @staticmethod
    def forward(ctx: Any, magnitudes: Tensor, mask: Tensor, scale: Tensor, d: float) -> Tensor:
        v = (magnitudes / scale[..., None, None, None] * (1 - mask)).flatten(-2)
        ranked, order = v.sort(dim=-1, descending=True)
        weights = _gwrp_weights(v.shape[-1], float(d), v.dtype, v.device)
        S = ranked @ weights
        del ranked
        g = torch.empty_like(v).scatter_(-1, order, weights.expand_as(v))  # g_j: the weight of v_j's rank
        ctx.save_for_backward(mask, scale, S, g)
        return S

    @staticmethod
    def backward(ctx: Any, dS: Tensor) -> tuple[Tensor | None, ...]:
        mask, scale, S, g = ctx.saved_tensors
        dA = ds = None
        if ctx.needs_input_grad[0]:
            dA = (dS[..., None] * g).view(*g.shape[:-1], *mask.shape[-2:]) * (1 - mask)
            dA = dA / scale[..., None, None, None]
        if ctx.needs_input_grad[2]:
            ds = -(dS * S).sum(-1) / scale
        return dA, None, ds, None


def background_score(heatmaps: Tensor, mask: Tensor, scale: Tensor, d: float, *,
                     magnitudes: Tensor | None = None) -> Tensor:
    """``GWRP_d(|H| (1 - m) / s)`` per (B, M, C) (:class:`BackgroundScore`): the value of ``gwrp((|H| / s * (1 -
    m)).flatten(-2), d)`` with the same gradient, keeping less for the backward. ``magnitudes``: ``|H|`` when the
    caller has it already (it is not computed again)."""
    check_decay(d)
    return BackgroundScore.apply(heatmaps.abs() if magnitudes is None else magnitudes, mask, scale, d)


def prepare_mask(masks: Tensor, batch: int, size: tuple[int, int], dtype: torch.dtype, device: torch.device,
                 check: bool = True, flags: list[Tensor] | None = None) -> Tensor:
    """Foreground masks as (B, 1, 1, h, w) of 0/1 in ``dtype``: resized by adaptive average pooling, binarised.

    Accepts (B, H, W) or (B, 1, H, W), bool or numeric with values in {0, 1}. CPU masks are checked at once; masks
    on an accelerator are checked without a host synchronisation: the check's result (a device bool, True when
    some value is not 0 or 1) is appended to ``flags`` for the caller to read when it synchronises anyway (the
    loss does, in its finiteness check), and is not checked when ``flags`` is None.
    """
    if not isinstance(masks, Tensor):
        raise InputTypeError(f"masks must be a torch.Tensor of shape (B, 1, H, W), got {type(masks).__name__}")
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise InputError(f"masks must have shape (B, 1, H, W) or (B, H, W), one foreground mask per image, got "
                         f"{tuple(masks.shape)}; reduce colour masks to one channel, e.g. masks.amax(1, keepdim=True)")
    if masks.shape[0] != batch:
        raise InputError(f"masks hold {masks.shape[0]} images but the batch has {batch}; pass one mask per image, "
                         "in the same order")
    if masks.dtype != torch.bool and check:
        bad = (masks != 0) & (masks != 1)
        if masks.device.type == "cpu":
            if bool(bad.any()):
                values = masks[bad].unique()[:5].tolist()
                raise InputError(f"masks must be binary (0 = background, 1 = foreground), found values such as "
                                 f"{values}; binarise them first, e.g. masks = (masks > 0.5).float()")
        elif flags is not None:  # no host synchronisation on accelerators: read with the loss's finiteness check
            flags.append(bad.any())
    m = masks.to(device=device, dtype=dtype)
    if tuple(m.shape[-2:]) != tuple(size):
        m = (F.adaptive_avg_pool2d(m, size) != 0).to(dtype)
    return m.unsqueeze(1)


def _per_map(value: float | Sequence[float] | Tensor, M: int, like: Tensor, name: str) -> Tensor:
    """A scalar or one value per map, as a tensor broadcasting against (B, M)."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    if t.dim() != 1 or t.shape[0] != M:
        raise InputError(f"{name} must be a number or one value per map ({M} here), got shape {tuple(t.shape)}")
    return t


Cut = float | tuple[float, ...]


def check_cut(value: float | Sequence[float] | dict[str, float | Sequence[float]], name: str
               ) -> Cut | dict[str, Cut]:
    """A C1/C2 value: a number, one number per map, or either per level (``{"input": ..., "layer2": ...}``)."""
    if isinstance(value, dict):
        if "input" not in value:
            raise InputError(f"{name} given per level must include the 'input' level, got levels {list(value)}")
        return {str(k): check_cut(v, f"{name}[{k!r}]") for k, v in value.items()}
    values = [value] if isinstance(value, (int, float)) else list(value)
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{name} must be positive: a number, one per map, or a dict of those per level; got {value!r}")
    return float(value) if isinstance(value, (int, float)) else tuple(float(v) for v in values)


def check_band(C1: Cut | dict[str, Cut], C2: Cut | dict[str, Cut]) -> None:
    """Raise unless ``C1 <= C2`` wherever both are given (per map and per level): the foreground term keeps the
    total relevance ``F`` in the band ``[C1, C2]``, its left side firing below C1 and its right side above C2, so
    with ``C1 > C2`` no ``F`` satisfies both and the loss cannot reach its minimum. (``C1 = C2`` is allowed: a
    band of one value, what :func:`~isnet_kernels.tune_cut` chooses for totals without spread.)"""
    levels = sorted(set(C1 if isinstance(C1, dict) else ()) | set(C2 if isinstance(C2, dict) else ())) or [None]
    for level in levels:
        c1 = C1.get(level) if isinstance(C1, dict) else C1
        c2 = C2.get(level) if isinstance(C2, dict) else C2
        if c1 is None or c2 is None:
            continue
        ones = c1 if isinstance(c1, tuple) else (c1,)
        twos = c2 if isinstance(c2, tuple) else (c2,)
        if len(ones) > 1 and len(twos) > 1 and len(ones) != len(twos):
            raise InputError(f"C1 and C2 give {len(ones)} and {len(twos)} values per map{_where(level)}; give the "
                             "same number (one per map) or a single number", param=("C1", "C2"))
        pairs = zip(ones * (len(twos) if len(ones) == 1 else 1), twos * (len(ones) if len(twos) == 1 else 1))
        for one, two in pairs:
            if one > two:
                raise InputError(f"C1 must not exceed C2{_where(level)}, got {one:g} > {two:g}: the foreground "
                                 "term keeps the total relevance between its lower bound C1 and its upper bound C2, "
                                 "which leaves no room when the lower is above the upper (the defaults are 1 and 1000; "
                                 "tune_cut chooses both from the data)", param=("C1", "C2"))


def _where(level: str | None) -> str:
    return "" if level is None else f" at level {level!r}"


def check_labels(labels: Tensor, logits: Tensor, flags: list[Tensor] | None = None) -> Tensor:
    """Labels (B,) for ``logits`` (B, K), checked: an integer tensor of classes ``0 .. K - 1``.

    CPU labels are checked at once (:class:`~isnet_kernels.errors.TargetError`). Labels on an accelerator are not
    read back (no host synchronisation, and no device-side assertion, which would end the process's use of the
    device): out-of-range labels are replaced by class 0, their images' losses made NaN, and the check's result
    (a device bool, True when some label is out of range) appended to ``flags`` for the caller to read when it
    synchronises anyway. Returns the labels to use.
    """
    B, K = logits.shape
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != B:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InputError(f"labels must be a LongTensor of shape (B,) = ({B},), got {shape}", param="labels")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputTypeError(f"labels must be an integer (Long) tensor of class indices, got {labels.dtype}",
                             param="labels")
    if labels.device.type == "cpu":
        if B and (int(labels.min()) < 0 or int(labels.max()) >= K):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise TargetError(f"label {bad} is out of range for a model with {K} classes (valid: 0 .. {K - 1}); the "
                              "model's last layer needs one output per class of the data", param="labels")
        return labels
    valid = (labels >= 0) & (labels < K)
    if flags is not None:
        flags.append(~valid.all())
    return torch.where(valid, labels, 0)


def check_multilabel_targets(targets: Tensor, batch: int, num_classes: int, *, values: bool = True) -> None:
    """Multi-label targets: a real tensor (B, K) = (``batch``, ``num_classes``) of 0 and 1 (the values read on the
    host only where ``values``). Raises :class:`~isnet_kernels.errors.InputTypeError`,
    :class:`~isnet_kernels.errors.InputError` or :class:`~isnet_kernels.errors.TargetError` naming the problem."""
    if not isinstance(targets, Tensor):
        raise InputTypeError(f"multi-label targets must be a tensor of shape (B, K) = ({batch}, {num_classes}) of 0 "
                             f"and 1, got {type(targets).__name__}", param="labels")
    if targets.dim() != 2 or tuple(targets.shape) != (batch, num_classes):
        raise InputError(f"multi-label targets must have shape (B, K) = ({batch}, {num_classes}), one 0/1 entry per "
                         f"class, got {tuple(targets.shape)}", param="labels")
    if targets.is_complex():
        raise InputTypeError(f"multi-label targets must be real 0/1 values, got {targets.dtype}", param="labels")
    if values:
        bad = (targets != 0) & (targets != 1)
        if bool(bad.any()):
            raise TargetError(f"multi-label targets must be 0 or 1, found {targets[bad].unique()[:5].tolist()}; "
                              "one entry per class, 1 where the class is present", param="labels")


def check_targets(targets: Tensor, logits: Tensor) -> Tensor:
    """Multi-label targets (B, K) for ``logits`` (B, K), checked (:func:`check_multilabel_targets`; the values on CPU
    only, so that an accelerator step needs no host synchronisation). Returns them in the logits' dtype."""
    check_multilabel_targets(targets, *logits.shape, values=targets.device.type == "cpu")
    return targets.to(logits.dtype)


def classification_loss(logits: Tensor, labels: Tensor, task: str = "multiclass",
                        reduction: str = "mean") -> Tensor:
    """The classification term: cross-entropy of ``logits`` (B, K) against class indices (B,) (``"multiclass"``), or
    binary cross-entropy with logits against 0/1 targets (B, K) (``"multilabel"``) summed over the K classes of an
    image (the negative log-likelihood of its label vector, as cross-entropy is of its class);
    ``reduction`` ``"mean"`` (over images) or ``"sum"`` (over images). Labels are not checked here."""
    if task == "multilabel":
        per_image = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").sum(1)
        return per_image.mean() if reduction == "mean" else per_image.sum()
    return F.cross_entropy(logits, labels, reduction=reduction)


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """``values`` (B, M): the mean over m then b, or with ``weights`` (B, M) per image the weighted mean over its
    maps and then the mean over the images whose weights are not all 0 (0 when there are none)."""
    if weights is None:
        return values.mean(1).mean()
    w = weights.to(values.dtype)
    total = w.sum(1)
    per_image = torch.where(w > 0, values, 0).mul(w).sum(1) / total.clamp(min=1)
    return per_image.sum() / (total > 0).sum().clamp(min=1)


def nan_where_invalid(loss: Tensor, labels: Tensor, K: int) -> Tensor:
    """``loss`` (a scalar) made NaN when some accelerator label is out of range (:func:`check_labels`)."""
    if labels.device.type == "cpu":
        return loss
    return torch.where(((labels >= 0) & (labels < K)).all(), loss, float("nan"))


def _at_level(value: Cut | dict[str, Cut], level: str) -> Cut:
    if not isinstance(value, dict):
        return value
    if level not in value:
        raise InputError(f"C1/C2 are given per level but not for '{level}' (levels given: {list(value)})")
    return value[level]


@dataclass
class HeatmapLossParts:
    """The heatmap loss of one set of maps: its value and its two terms, each averaged over the batch."""

    heatmap: Tensor
    background: Tensor
    foreground: Tensor


def heatmap_loss(heatmaps: Tensor, masks: Tensor, *, d: float = 0.9, E: float = 1.0, A: float = 1.0,
                 B: float = 3.0, C1: float | Sequence[float] | Tensor = 1.0,
                 C2: float | Sequence[float] | Tensor = 25.0, foreground: str = "hybrid",
                 check_masks: bool = True, flags: list[Tensor] | None = None, mass: float = 0.0,
                 weights: Tensor | None = None) -> HeatmapLossParts:
    """``L_heat = mean_b(A * L_bkg + mass * L_mass + B * L_fg)`` of heatmaps (B, M, C, h, w) against foreground
    masks (module doc).

    ``C1`` and ``C2`` are numbers or one value per map (the dual variant's two maps have their own). ``weights``
    (B, M), 0 or 1: only the maps of weight 1 count, per image their mean, then the mean over the images that have
    one (module doc, multi-label); None: every map.
    """
    if heatmaps.dim() != 5:
        raise InputError(f"heatmaps must have shape (B, M, C, H, W), got {tuple(heatmaps.shape)}")
    if foreground not in FOREGROUND_RULES:
        raise InputError(f"foreground must be one of {FOREGROUND_RULES}, got {foreground!r}")
    if not E > 0:
        raise InputError(f"E must be positive, got {E}")
    Bsz, M, C, h, w = heatmaps.shape
    mask = prepare_mask(masks, Bsz, (h, w), heatmaps.dtype, heatmaps.device, check_masks, flags)  # (B, 1, 1, h, w)
    absH = heatmaps.abs()
    fg = (absH * mask).sum((2, 3, 4))  # (B, M): F, the raw foreground relevance
    count = mask.sum((2, 3, 4)) * C  # foreground elements of one map
    scale = fg / count.clamp(min=1) + NORM_EPS
    S = background_score(heatmaps, mask, scale, d, magnitudes=absH)  # (B, M, C): GWRP of |H| / scale outside
    bkg_all = -torch.log1p(-(S / (S + E)).clamp(max=SATURATION))  # (B, M, C)
    if mass:
        out = (absH * (1 - mask)).sum((2, 3, 4))  # (B, M): the background's relevance mass
        share = out / (out + E * fg + NORM_EPS)
        mass_bm = -torch.log1p(-share.clamp(max=SATURATION))  # (B, M)
    else:
        mass_bm = torch.zeros_like(fg)
    c1, c2 = _per_map(C1, M, fg, "C1"), _per_map(C2, M, fg, "C2")
    left = ((fg / c1).clamp(max=1) - 1) ** 2
    right = ((torch.maximum(fg, c2.expand_as(fg)) - c2) / c1) ** 2
    if foreground == "hybrid":
        right = torch.where(fg.detach() <= c1 + c2, right, fg - c1 - c2 + 1)
    if weights is not None:
        if tuple(weights.shape) != (Bsz, M):
            raise InputError(f"map weights must have shape (B, M) = ({Bsz}, {M}), got {tuple(weights.shape)}")
        weights = weights.to(heatmaps.device)
        bkg_bm = bkg_all.mean(2)  # (B, M)
        fg_bm = left + right
        return HeatmapLossParts(_weighted_mean(A * bkg_bm + mass * mass_bm + B * fg_bm, weights),
                                _weighted_mean(bkg_bm, weights), _weighted_mean(fg_bm, weights))
    bkg = bkg_all.mean((1, 2))
    bkg_mass = mass_bm.mean(1)
    fgl = (left + right).mean(1)
    return HeatmapLossParts((A * bkg + mass * bkg_mass + B * fgl).mean(), bkg.mean(), fgl.mean())


@dataclass
class ISNetLossOutput:
    """The ISNet loss and its parts (batch means).

    ``total = (1 - P) * classification + P * heatmap``; ``heatmap`` combines the levels of deep supervision
    (``levels``, input first); ``background`` and ``foreground`` are the input-level terms (before A and B).
    ``finite`` is False when the loss was not finite and ``nonfinite="skip"`` replaced it by a zero loss with no
    gradient (``optimizer.step()`` then leaves every parameter, and its momentum, unchanged).
    """

    total: Tensor
    classification: Tensor
    heatmap: Tensor
    background: Tensor
    foreground: Tensor
    levels: list[Tensor] = field(default_factory=list)
    finite: bool = True


class ISNetLoss(nn.Module):
    """``L = (1 - P) * CE(logits, y) + P * L_heat`` (docs/isnet.md#the-heatmap-loss; the reference code's constants but
    ``C2``, which the preset gives).

    Parameters
    ----------
    P : weight of the heatmap loss (0: a plain classifier's loss).
    d : GWRP decay of the background term (0: the maximum, 1: the mean).
    E : background saturation constant in ``S / (S + E)``.
    A, B : weights of the background and foreground terms.
    mass : weight of the background-mass term (the share of the relevance outside the mask; 0, the default: off).
    C1, C2 : foreground bounds (see :func:`~isnet_kernels.tune_cut`): numbers, one per map for the dual variant
        (z+ map first), or a dict of those per level (``"input"`` and each deep-supervision module name), as
        :func:`~isnet_kernels.tune_cut` returns them. ``C2`` not given: the preset's (1000 by default, in effect
        no upper bound; the authors' 25 with ``preset="paper"``; docs/isnet.md, section "C2").
    foreground : ``"hybrid"`` (Faster ISNet: linear beyond ``C1 + C2``) or ``"l2"``.
    d_loss : GWRP decay combining the input's and the deep-supervision layers' heatmap losses (1: their mean).
    nonfinite : what a non-finite loss does: ``"raise"`` (FloatingPointError, one host synchronisation per call),
        ``"skip"`` (a zero loss with no gradient and ``finite=False``; one synchronisation) or ``"propagate"``
        (no check, no synchronisation).
    check_masks : check that masks are binary: CPU masks at once (:class:`~isnet_kernels.errors.InputError`);
        accelerator masks without a host synchronisation, the result read with the ``nonfinite`` check's (which
        raises InputError for non-binary masks; unchecked with ``nonfinite="propagate"``, which reads nothing).
    task : ``"multiclass"`` (labels (B,), cross-entropy) or ``"multilabel"`` (0/1 targets (B, K), binary
        cross-entropy; the heatmap loss counts the maps of ``output.weights``, module doc).
    preset : ``"default"`` or ``"paper"`` (:mod:`~isnet_kernels.isnet.presets`): where ``C2`` is not given.

    Call as ``loss(output, labels, masks)`` with the :class:`~isnet_kernels.isnet.output.ISNetOutput` of an ISNet
    (in training mode, or called with ``heatmaps=True``), labels (B,) and masks (B, 1, H, W) or (B, H, W).
    Returns an :class:`ISNetLossOutput`.
    """

    def __init__(self, P: float = 0.7, d: float = 0.9, E: float = 1.0, A: float = 1.0, B: float = 3.0,
                 C1: float | Sequence[float] | dict = 1.0, C2: float | Sequence[float] | dict | None = None,
                 foreground: str = "hybrid",
                 d_loss: float = 1.0, nonfinite: str = "raise", check_masks: bool = True, mass: float = 0.0,
                 task: str = "multiclass", preset: str = "default"):
        super().__init__()
        C2 = preset_value(preset, "C2", C2, LOSS_PRESETS)
        if task not in TASKS:
            raise InputError(f"task must be one of {TASKS}, got {task!r}", param="task")
        self.task = task
        if not 0 <= P <= 1:
            raise InputError(f"P must be in [0, 1], got {P}")
        for name, value in (("d", d), ("d_loss", d_loss)):
            if not 0 <= value <= 1:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if foreground not in FOREGROUND_RULES:
            raise InputError(f"foreground must be one of {FOREGROUND_RULES}, got {foreground!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise InputError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        self.C1, self.C2 = check_cut(C1, "C1"), check_cut(C2, "C2")
        check_band(self.C1, self.C2)
        if not (isinstance(mass, (int, float)) and math.isfinite(mass) and mass >= 0):
            raise InputError(f"mass (the background-mass weight) must be a number >= 0, got {mass!r}", param="mass")
        self.P, self.d, self.E, self.A, self.B = float(P), float(d), float(E), float(A), float(B)
        self.mass = float(mass)
        self.foreground, self.d_loss, self.nonfinite, self.check_masks = foreground, float(d_loss), nonfinite, \
            check_masks

    def extra_repr(self) -> str:
        return (f"P={self.P}, d={self.d}, E={self.E}, A={self.A}, B={self.B}, mass={self.mass}, C1={self.C1}, "
                f"C2={self.C2}, "
                f"foreground={self.foreground!r}, d_loss={self.d_loss}, nonfinite={self.nonfinite!r}"
                + (", task='multilabel'" if getattr(self, "task", "multiclass") == "multilabel" else ""))

    def heatmap_parts(self, heatmaps: Tensor, masks: Tensor, level: str = "input",
                      flags: list[Tensor] | None = None, weights: Tensor | None = None) -> HeatmapLossParts:
        """The heatmap loss of one level: ``"input"`` or a supervised module's name (for per-level C1/C2)."""
        return heatmap_loss(heatmaps, masks, d=self.d, E=self.E, A=self.A, B=self.B, C1=_at_level(self.C1, level),
                            C2=_at_level(self.C2, level), foreground=self.foreground, check_masks=self.check_masks,
                            flags=flags, mass=self.mass, weights=weights)

    def forward(self, output: ISNetOutput, labels: Tensor, masks: Tensor) -> ISNetLossOutput:
        if not isinstance(output, ISNetOutput):
            raise InputTypeError(f"the first argument must be the ISNetOutput of an ISNet call, got "
                                 f"{type(output).__name__}")
        logits = output.logits
        label_flags: list[Tensor] = []  # accelerator labels' range, read with the finiteness check
        if getattr(self, "task", "multiclass") == "multilabel":
            ce = classification_loss(logits, check_targets(labels, logits), "multilabel")
        else:
            checked = check_labels(labels, logits, label_flags)
            ce = nan_where_invalid(F.cross_entropy(logits, checked), labels, logits.shape[1])
        if self.P == 0:
            zero = ce.new_zeros(())
            return self.finish(ISNetLossOutput(ce, ce, zero, zero, zero), labels=label_flags,
                               classes=logits.shape[1])
        if output.heatmaps is None:
            raise InputError("the ISNet output carries no heatmaps: call the ISNet in training mode (isnet.train()) "
                             "or with heatmaps=True")
        flags: list[Tensor] = []  # accelerator masks' validity, read with the finiteness check
        weights = output.weights
        first = self.heatmap_parts(output.heatmaps, masks, flags=flags, weights=weights)
        levels = [first.heatmap] + [self.heatmap_parts(h, masks, name, weights=weights).heatmap
                                    for name, h in output.intermediate.items()]
        heat = levels[0] if len(levels) == 1 else gwrp(torch.stack(levels), self.d_loss)
        total = (1 - self.P) * ce + self.P * heat
        return self.finish(ISNetLossOutput(total, ce, heat, first.background, first.foreground, levels), flags[:1],
                           label_flags, logits.shape[1])

    def finish(self, out: ISNetLossOutput, flags: Sequence[Tensor] = (), labels: Sequence[Tensor] = (),
               classes: int = 0) -> ISNetLossOutput:
        """Apply the non-finite policy to a loss (and raise for the non-binary accelerator masks in ``flags`` and
        the out-of-range accelerator labels in ``labels``, read in the same synchronisation)."""
        if self.nonfinite == "propagate":
            return out
        finite, *bad = torch.stack([torch.isfinite(out.total), *flags, *labels]).tolist()  # one synchronisation
        bad_masks, bad_labels = bad[:len(flags)], bad[len(flags):]
        if any(bad_labels):
            raise TargetError(f"a label is out of range for a model with {classes} classes; the model's last "
                              "layer needs one output per class of the data", param="labels")
        if any(bad_masks):
            raise InputError("masks must be binary (0 = background, 1 = foreground); binarise them first, e.g. "
                             "masks = (masks > 0.5).float()")
        if finite:
            return out
        if self.nonfinite == "raise":
            parts = {k: float(v.detach()) for k, v in (("classification", out.classification), ("heatmap", out.heatmap),
                                              ("background", out.background), ("foreground", out.foreground))}
            raise NonFiniteLossError(
                f"the ISNet loss is not finite ({parts}); non-finite logits or heatmaps (a diverging model, a "
                "too-high learning rate, non-finite inputs). Lower the learning rate, clip gradients, check the "
                "data, or pass nonfinite='skip' to skip such steps")
        zero = out.total.new_zeros((), requires_grad=True)
        return ISNetLossOutput(zero, out.classification.detach(), out.heatmap.detach(), out.background.detach(),
                               out.foreground.detach(), [v.detach() for v in out.levels], finite=False)
