"""Running a compiled relevance program: :class:`LRP` and :func:`explain`.

One forward pass (the model's own computation, run node by node, keeping only what the rules need) and one
relevance pass top-down, one call per node, with the M maps per image as a tensor axis. No Python loop over
samples or maps and no host synchronisation in either pass. :meth:`LRP.run` drives both, with the checks of the
input and of the classes explained, the chunking of the maps and the warnings, for every caller: :func:`explain`,
``LRP.__call__`` and the ISNet.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..backends import dispatch
from ..errors import InputError, InputTypeError, TargetError
from . import steps as S
from .chunking import auto_map_chunk, bytes_per_map, check_map_chunk, chunked_relevance
from .graph import Program, _ShapeNode, compile_model
from .rules import FIRST, HIDDEN

OUTPUT_RULES = ("logit", "selective", "all")
HIDDEN_RULES = ("epsilon", "zplus")
FIRST_LAYER_RULES = ("zb", "epsilon")
#: The rule of products with a gate (``LRP(product=...)``) and of attention (``LRP(attention=...)``).
PRODUCT_RULES = ("gate", "uniform")
ATTENTION_RULES = ("attnlrp", "cp")
#: How train-mode BatchNorm statistics enter the heatmap's gradient (``LRP(batch_stats=...)``).
BATCH_STATS = ("detached", "live")

_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict[bool, Program]] = weakref.WeakKeyDictionary()


def get_program(model: nn.Module) -> Program:
    """The compiled relevance program of ``model``, compiled on first use and kept for the model's lifetime.

    Weights, BatchNorm statistics and the train/eval mode of modules are read live at every call, so training
    between calls needs no recompiling. A forward that reads ``self.training`` itself (``F.dropout(x, p,
    self.training)``) is traced with the value it had, so one program is kept per mode of the root module.
    After replacing a submodule, call :func:`clear_cache`.
    """
    per_mode = _PROGRAMS.get(model)
    if per_mode is None:
        per_mode = _PROGRAMS[model] = {}
    program = per_mode.get(model.training)
    if program is None:
        program = per_mode[model.training] = compile_model(model)
    return program


def clear_cache() -> None:
    """Forget every compiled program (needed only after changing a model's structure)."""
    _PROGRAMS.clear()


#: The classes to explain: a LongTensor (B, M), ``"all"``, a function choosing them from the logits, or None.
TargetsLike = Tensor | str | Callable[[Tensor], Tensor] | None


@dataclass
class Relevance:
    """What :meth:`LRP.run` returns."""

    logits: Tensor  # (B, K), the model's
    heatmaps: Tensor  # (B, M, C, H, W), NaN for the maps of out-of-range accelerator targets
    targets: Tensor | None  # (B, M) the classes explained (out-of-range ones as 0); None for output="all"
    captured: dict[str, Tensor]  # the relevance at the steps asked for, (B, M, ...), by step name
    map_chunk: int  # maps per chunk of the pass (M when not chunked)


@dataclass
class ForwardState:
    """What a forward pass leaves for the relevance pass: the program that ran and each step's saved tensors."""

    program: Program
    saved: dict[str, Any]
    logits: Tensor | None = None


BoundsLike = tuple[float | Tensor, float | Tensor] | Sequence[float | Tensor]


def _bound_tensor(value: float | Tensor, x: Tensor, which: str) -> Tensor:
    """A bound as a 0-d tensor (scalar) or expanded to (1, C, H, W) (per channel or per pixel)."""
    t = torch.as_tensor(value, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    if t.dim() == 0:
        return t
    C = x.shape[1]
    if t.dim() == 1:
        if t.shape[0] != C:
            raise InputError(f"{which} bound has {t.shape[0]} entries but the input has {C} channels; give one "
                             "value per channel, shape (C,), or a scalar")
        t = t.view(1, C, 1, 1)
    try:
        return t.expand(1, *x.shape[1:])
    except RuntimeError as exc:
        raise InputError(f"{which} bound of shape {tuple(t.shape)} does not broadcast to the input's "
                         f"{tuple(x.shape[1:])}; give a scalar or one value per channel, shape (C,)") from exc


def check_eps(eps: Any) -> float:
    """``eps`` as a float, after checking that it is a positive finite number (``stab(z) = z + eps * sign(z)``
    divides by ``z`` itself when ``eps`` is 0: zero pre-activations then give NaN heatmaps)."""
    value = float(eps) if isinstance(eps, numbers.Real) and not isinstance(eps, bool) else math.nan
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"eps must be a positive number, got {eps!r}: the rules divide by each pre-activation "
                         "plus a stabiliser of this size, so without one a zero pre-activation gives NaN heatmaps; "
                         "the default is 1e-2 (a small positive value such as 1e-9 gives near-exact rules)",
                         param="eps")
    return value


def check_bounds(bounds: Any) -> tuple[Any, Any]:
    """``(low, high)`` of the Z^B rule, after checking that both are finite and ``low <= high`` everywhere (the
    rule's root point lies in the box ``low <= x <= high``). One host synchronisation for accelerator tensors."""
    if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise InputError(f"bounds must be (low, high), got {bounds!r}", param="bounds")
    low, high = bounds
    try:
        lo = torch.as_tensor(low).detach().to("cpu", torch.float64)
        hi = torch.as_tensor(high).detach().to("cpu", torch.float64)
        above = bool((lo > hi).any())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"bounds must be (low, high): numbers or tensors of one value per channel that broadcast "
                         f"together, got {bounds!r} ({exc})", param="bounds") from None
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        raise InputError(f"bounds must be finite, got {bounds!r}", param="bounds")
    if above:
        raise InputError(f"bounds must have low <= high (the Z^B rule assumes low <= x <= high for every input "
                         f"value), got low = {lo.tolist()}, high = {hi.tolist()}; pass (low, high) in that order, "
                         "e.g. (0.0, 1.0) for images in [0, 1]", param="bounds")
    return low, high


def check_input(x: Any, check_finite: bool, model: nn.Module | None = None) -> None:
    """Raise a clear error for an input the engine cannot explain: not a tensor, not a 4-D floating batch, an
    empty batch, a floating dtype other than the model's parameters' (outside autocast; with ``model``), or (with
    ``check_finite``, one host synchronisation) holding NaN or Inf."""
    if not isinstance(x, Tensor):
        raise InputTypeError(f"input must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"input must be a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}; add a batch "
                         "axis with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise InputTypeError(f"input must be a floating-point tensor, got {x.dtype}; convert with x.float()")
    if x.shape[0] == 0:
        raise InputError(f"the input batch is empty (shape {tuple(x.shape)}); pass at least one image")
    if model is not None:
        check_dtype(x, model)
    if check_finite and not bool(torch.isfinite(x).all()):
        raise InputError("input contains NaN or Inf values; LRP heatmaps of non-finite inputs are meaningless. "
                         "Clean the data (torch.nan_to_num) or find where the non-finite values come from")


def check_dtype(x: Tensor, model: nn.Module) -> None:
    """Raise when ``x``'s dtype is not that of the model's floating parameters (when they share one) outside
    autocast, where the forward would fail inside torch."""
    if torch.is_autocast_enabled(x.device.type):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and x.dtype not in dtypes:
        (dtype,) = dtypes
        raise InputTypeError(f"the input is {x.dtype} but the model's parameters are {dtype}; convert the input "
                             f"(x.to({dtype})) or the model (model.to({x.dtype})), or run under torch.autocast")


def check_logits(logits: Any, batch: int) -> None:
    """Raise unless the model's output is a (B, K) tensor of logits: the output rules explain one logit per class."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] == 0:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InputError(f"the model must return logits of shape (B, K) = ({batch}, K) for a batch of {batch}, got "
                         f"{got}; LRP explains classifiers: end the model with a Linear layer, or flatten or pool "
                         "its output to one logit per class")


def check_in_bounds(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """A device bool: True when some input value lies outside ``[low, high]`` by more than rounding (a relative
    1e-5), which the Z^B rule's maths does not allow. No host synchronisation: the caller reads it."""
    tol = 1e-5 * (1 + torch.maximum(low.abs(), high.abs()))
    return ((x < low - tol) | (x > high + tol)).any()


def out_of_bounds_error(x: Tensor, low: Tensor, high: Tensor) -> InputError:
    """The error for inputs outside the Z^B bounds, naming the values found and the fix."""
    lo, hi = float(low.amin()), float(high.amax())
    return InputError(f"input values lie outside the Z^B bounds (low, high): the input spans [{float(x.amin()):.4g}, "
                      f"{float(x.amax()):.4g}] and the bounds [{lo:.4g}, {hi:.4g}]; the first-layer rule assumes low "
                      "<= x <= high. Pass the bounds of your data (bounds=(low, high), per channel for normalised "
                      "inputs: ((0 - mean) / std, (1 - mean) / std)), or first_layer='epsilon'", param="bounds")


def checked_targets(targets: Tensor, batch: int, num_classes: int, device: torch.device, sync: bool
                    ) -> tuple[Tensor, Tensor | None]:
    """``targets`` (B, M) as class indices (long) on ``device``, after checking their type, shape and range.

    The range is read on the host for CPU targets (and for any targets with ``sync``, one host synchronisation):
    a class outside ``0 .. num_classes - 1`` raises :class:`~isnet_kernels.errors.TargetError`, and the second
    value is None. Accelerator targets without ``sync`` are not read back: out-of-range classes become class 0
    and the second value is the device mask (B, M) of the valid ones, for :func:`mark_invalid` (no
    synchronisation, and no device-side assertion, which an out-of-range index would raise and which poisons the
    CUDA context)."""
    if targets.dtype not in (torch.int64, torch.int32):
        raise InputTypeError(f"targets must be an integer (Long) tensor of class indices, got {targets.dtype}")
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise InputError(f"targets must have shape (B, M) = ({batch}, M), one row of M class indices per image, "
                         f"got {tuple(targets.shape)}; for one class per image use targets.view(-1, 1)")
    if targets.numel() == 0:
        raise InputError("targets is empty: ask for at least one map per image (M >= 1)")
    if targets.device.type == "cpu" or sync:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise TargetError(f"target class {low if low < 0 else high} is out of range for a model with "
                              f"{num_classes} classes (valid: 0 .. {num_classes - 1})")
        return targets.to(device=device, dtype=torch.long), None
    valid = (targets >= 0) & (targets < num_classes)
    return torch.where(valid, targets.to(device=device, dtype=torch.long), 0), valid


def mark_invalid(maps: Sequence[Tensor], valid: Tensor | None) -> list[Tensor]:
    """``maps`` (each (B, M, ...)) with NaN where ``valid`` (B, M) is False: the maps of out-of-range accelerator
    targets (:func:`checked_targets`), which the caller reports when it synchronises anyway (no device-side
    assertion, which would end the process's use of the device). Unchanged for ``valid`` None."""
    if valid is None:
        return list(maps)
    return [torch.where(valid.view(*valid.shape, *([1] * (m.dim() - 2))), m, float("nan")) for m in maps]


def relevance_dtype(logits: Tensor) -> torch.dtype:
    """The dtype of the relevance pass: float32 for half-precision forwards (autocast, bf16/fp16 models: relevance
    is accumulated in float32), else the forward's own (float32, float64). The heatmaps have this dtype."""
    return torch.promote_types(logits.dtype, torch.float32)


def upcast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (a tensor, or tuples, lists and dicts of them) with half-precision floating tensors cast to
    ``dtype`` (differentiably; the forward's own tensors are left as they are)."""
    if isinstance(value, Tensor):
        if value.is_floating_point() and value.dtype != dtype and torch.finfo(value.dtype).bits < 32:
            return value.to(dtype)
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(upcast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: upcast(v, dtype) for k, v in value.items()}
    return value


def logits_relevance(logits: Tensor, targets: Tensor | None, output: str, eps: float) -> Tensor:
    """Relevance at the logits (B, M, K) of a head that is not one ``Linear`` (docs/rules.md#output-rules).

    ``"logit"``: ``R = z_c e_c``. ``"all"``: ``R = z`` (one map). ``"selective"``: the class-contrastive rule at the
    logits, through the difference layer ``z_cc' = z_c - z_c'`` under epsilon: ``R_z = z * (e_c sum(q) - q)`` with
    ``q_c' = R_cc' / stab(z_cc')`` (the same ``q`` as for a ``Linear`` head, whose exact form it equals as eps -> 0).
    """
    z = logits
    if output == "all":
        return z.unsqueeze(1)
    if output == "logit":
        return torch.zeros(*targets.shape, z.shape[-1], dtype=z.dtype, device=z.device).scatter(
            2, targets.unsqueeze(-1), z.gather(1, targets).unsqueeze(-1))
    from .. import ops

    q = ops.selective_relevance(z, targets, eps)
    s = (-q).scatter_add(2, targets.unsqueeze(-1), q.sum(-1, keepdim=True))
    return z.unsqueeze(1) * s


def _warn_if_zero(heatmaps: Tensor, logits: Tensor, targets: Tensor | None) -> None:
    """Warn when a heatmap is identically zero although the logit it explains is not (one host synchronisation)."""
    flat = heatmaps.flatten(2)
    zero = (flat == 0).all(-1)  # (B, M)
    explained = logits.detach().abs() if targets is None else logits.detach().gather(1, targets).abs()
    if targets is None:
        explained = explained.amax(-1, keepdim=True)
    bad = zero & (explained > 0)
    if bool(bad.any()):
        count = int(bad.sum())
        warnings.warn(f"{count} heatmap(s) are identically zero although the logit they explain is not: the "
                      "activations vanish somewhere in the model, so the stabiliser absorbed all relevance (check the "
                      "model's weights and input scale, or lower eps)", RuntimeWarning, stacklevel=3)


def _step_bytes(saved: Any) -> int:
    """Bytes of the tensors a step keeps (each counted once per step): the weight of the step's relevance work."""
    if isinstance(saved, Tensor):
        return saved.numel() * saved.element_size()
    if isinstance(saved, (tuple, list)):
        return sum(_step_bytes(v) for v in saved)
    if isinstance(saved, dict):
        return sum(_step_bytes(v) for v in saved.values())
    return 0


def auto_segments(n_steps: int) -> int:
    """The number of checkpointed segments of a relevance pass over ``n_steps`` steps: ``ceil(sqrt(n))``, which
    balances the relevance tensors kept at the boundaries (one set per segment) against the graph of the one
    segment rebuilt at a time in the backward (Chen et al. 2016, sublinear memory)."""
    return max(1, math.ceil(math.sqrt(n_steps)))


def relevance_segments(order: Sequence[Any], saved: dict[str, Any], segments: int) -> list[list[Any]]:
    """``order`` (the steps in relevance-pass order) cut into at most ``segments`` consecutive runs of about equal
    weight, a step weighing the bytes of what its forward kept (:func:`_step_bytes`: the relevance tensors its rule
    makes and saves scale with them), so that the segment rebuilt in the backward is about ``1 / segments`` of the
    pass's graph."""
    weights = [max(1, _step_bytes(saved.get(step.name))) for step in order]
    total, segments = sum(weights), max(1, min(segments, len(order)))
    parts: list[list[Any]] = [[]]
    acc = 0
    for step, w in zip(order, weights):
        if parts[-1] and acc >= total * len(parts) / segments and len(parts) < segments:
            parts.append([])
        parts[-1].append(step)
        acc += w
    return parts


class LRP:
    """Layer-wise Relevance Propagation of a classifier, compiled once.

    Parameters
    ----------
    model : the classifier: an ``nn.Module`` mapping (B, C, H, W) images to (B, K) logits, built from the layers
        listed in docs/layers.md (``isnet_kernels.lrp.SUPPORTED``, from the rule registry). Traced with ``torch.fx`` at
        construction;
        unsupported layers raise :class:`~isnet_kernels.UnsupportedLayerError` here.
    eps : the stabiliser of every rule, ``stab(z) = z + eps * sign(z)``: a positive number (0 would divide by zero
        pre-activations: NaN heatmaps).
    first_layer : ``"zb"`` for the Z^B rule on the layers that read the input, ``"epsilon"`` for epsilon there too.
    bounds : ``(low, high)`` of the input values for Z^B: floats, or tensors of shape (C,) for normalised inputs;
        finite, with ``low <= high``. Inputs outside them are refused (:meth:`check`).
    check_input : check the input for NaN/Inf and, for Z^B, the bounds (one host synchronisation per call; without
        it the bounds are checked for CPU inputs only). The input's dtype must be the model's (outside autocast),
        the batch not empty, and the model's output (B, K) logits: checked always, without synchronisation.
    backend : ``"auto"`` (default; or ``$ISNET_KERNELS_BACKEND``), ``"reference"``, ``"torch"``, ``"cpp"``,
        ``"triton"`` or ``"cuda"``: which kernels compute the relevance ops (see
        :mod:`isnet_kernels.backends.dispatch`).
    batch_stats : how train-mode BatchNorm statistics enter the heatmap's gradient: ``"detached"`` (default, the
        reference semantics of docs/rules.md#batch_stats: constants) or ``"live"`` (functions of the weights and
        the batch, as in the classifier's own forward; see :mod:`isnet_kernels.ops.batchnorm`). The heatmap's
        value is the same; eval mode (running statistics) is unaffected.
    product : the rule of a product with a gate (``x * sigmoid(...)``): ``"gate"`` (signal takes all, default) or
        ``"uniform"`` (AttnLRP's rule, half to each factor, as for products of two activations).
    attention : ``"attnlrp"`` (softmax and matrix-product rules, default) or ``"cp"`` (attention weights held
        constant: all relevance to the values).

    Calling ``lrp(x, targets, output="logit")`` returns ``(logits, heatmaps)``: the model's logits (B, K) and
    heatmaps (B, M, C, H, W), differentiable w.r.t. the parameters and the input in train and eval mode.
    """

    def __init__(self, model: nn.Module, *, eps: float = 1e-2, first_layer: str = "zb",
                 bounds: BoundsLike = (0.0, 1.0), check_input: bool = True, backend: str | None = None,
                 batch_stats: str = "detached", product: str = "gate", attention: str = "attnlrp"):
        if first_layer not in FIRST_LAYER_RULES:
            raise InputError(f"first_layer must be one of {FIRST_LAYER_RULES}, got {first_layer!r}")
        eps = check_eps(eps)
        bounds = check_bounds(bounds)
        self.model = model
        self.eps, self.first_layer, self.bounds = eps, first_layer, tuple(bounds)
        self.check_input = check_input
        if backend is not None and backend not in dispatch.BACKENDS:
            raise InputError(f"backend must be one of {dispatch.BACKENDS}, got {backend!r}")
        self.backend = backend
        if batch_stats not in BATCH_STATS:
            raise InputError(f"batch_stats must be one of {BATCH_STATS}, got {batch_stats!r}")
        self.batch_stats = batch_stats
        if product not in PRODUCT_RULES:
            raise InputError(f"product must be one of {PRODUCT_RULES}, got {product!r}")
        if attention not in ATTENTION_RULES:
            raise InputError(f"attention must be one of {ATTENTION_RULES}, got {attention!r}")
        self.product, self.attention = product, attention
        self._configs: dict[tuple, S.RuleConfig] = {}
        get_program(model)  # compile now, so that unsupported layers fail here

    @property
    def program(self) -> Program:
        """The compiled program for the model's current train/eval mode."""
        return get_program(self.model)

    def __repr__(self) -> str:
        return (f"LRP({type(self.model).__name__}, eps={self.eps}, first_layer={self.first_layer!r}, "
                f"steps={len(self.program.steps)})")

    def check(self, x: Tensor, sync: bool) -> None:
        """Check an input (:func:`check_input`, with the model's dtype) and, for the Z^B rule, that its values lie
        within the bounds. With ``sync`` both NaN/Inf and the bounds are checked in one host synchronisation;
        without, the bounds are checked for CPU inputs only (where reading a result costs no synchronisation)."""
        check_input(x, False, self.model)
        zb = self.first_layer == "zb" and (sync or x.device.type == "cpu")
        if not (sync or zb):
            return
        low = _bound_tensor(self.bounds[0], x, "low") if zb else None
        high = _bound_tensor(self.bounds[1], x, "high") if zb else None
        flags = ([~torch.isfinite(x).all()] if sync else []) + ([check_in_bounds(x, low, high)] if zb else [])
        found = torch.stack(flags).tolist()  # one synchronisation
        if sync and found[0]:
            check_input(x, True)  # raises the NaN/Inf error
        if zb and found[-1]:
            raise out_of_bounds_error(x, low, high)

    def config(self, x: Tensor, rule: str = "epsilon") -> S.RuleConfig:
        """The settings of a relevance pass over ``x`` with hidden-layer rule ``rule``: the rule objects, the input
        bounds and the backend's kernels, resolved once per device, dtype and input shape (later calls reuse it)."""
        key = (x.device, x.dtype, tuple(x.shape[1:]), rule, os.environ.get(dispatch.ENV_VAR))
        cfg = self._configs.get(key)
        if cfg is None:
            cfg = S.RuleConfig(self.eps, FIRST[self.first_layer], HIDDEN[rule], live_stats=self.batch_stats == "live",
                               product=self.product, attention=self.attention,
                               prims=dispatch.primitives(dispatch.resolve(self.backend, x.device)))
            if self.first_layer == "zb":
                cfg.low = _bound_tensor(self.bounds[0], x, "low")
                cfg.high = _bound_tensor(self.bounds[1], x, "high")
            self._configs[key] = cfg
        return cfg

    def forward(self, x: Tensor) -> tuple[Tensor, ForwardState]:
        """Run the model's forward, returning the logits and what the relevance pass needs."""
        program = self.program
        env: dict[str, Any] = {program.input_name: x}
        saved: dict[str, Any] = {}
        for step, frees in zip(program.steps, program.frees):
            if isinstance(step, _ShapeNode):
                env[step.name] = step.fn(env)
            else:
                env[step.name], saved[step.name] = step.forward(env)
            for name in frees:  # free values no later node reads (the saved ones stay referenced)
                env.pop(name, None)
        logits = env[program.output_name]
        check_logits(logits, x.shape[0])
        return logits, ForwardState(program, saved, logits)

    def relevance(self, state: ForwardState, targets: Tensor | None, output: str, cfg: S.RuleConfig) -> Tensor:
        """The relevance pass: from the output rule at the logits down to the input, (B, M, C, H, W)."""
        return self.relevance_at(state, targets, output, cfg)[0]

    def relevance_at(self, state: ForwardState, targets: Tensor | None, output: str, cfg: S.RuleConfig,
                     capture: Sequence[str] = (), segments: int = 1) -> tuple[Tensor, dict[str, Tensor]]:
        """The relevance pass, also returning the relevance at the steps named in ``capture`` (their outputs'
        relevance, all contributions summed), by step name.

        ``segments`` > 1 (when autograd records) runs the pass in that many consecutive segments of steps, each
        under non-reentrant activation checkpointing (:func:`relevance_segments`): autograd then keeps only the
        relevance tensors at the segments' boundaries and rebuilds one segment's graph at a time in the backward
        (one more relevance pass). The values and gradients are those of one plain pass.

        The pass runs outside autocast, in the relevance dtype (:func:`relevance_dtype`); each step's saved
        tensors are cast to it as the step runs (:func:`upcast`), so that a half-precision forward's float32 copies
        live only as long as the ops that save them (and are rebuilt with their segment under ``segments``).
        """
        program, saved = state.program, state.saved
        start = program.logits_step
        dtype = relevance_dtype(state.logits)
        wanted = set(capture)

        def head() -> dict[str, Tensor]:
            if start is not None:  # a Linear head: the output rules, exactly, at its input
                return {start.inputs[0]: start.start(upcast(saved[start.name], dtype), targets, output, cfg)}
            # any other head: relevance starts at the logits themselves
            return {program.output_name: logits_relevance(logits, targets, output, cfg.eps)}

        def walk(steps: Sequence[S.Step], R: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
            R = dict(R)
            captured: dict[str, Tensor] = {}
            for step in steps:
                r = R.pop(step.name, None)
                if r is None:
                    continue
                if step.name in wanted:
                    captured[step.name] = r
                for name, part in zip(step.inputs, step.relevance(r, upcast(saved[step.name], dtype), cfg)):
                    if part is not None:
                        R[name] = part if name not in R else R[name] + part
            return R, captured

        order = [s for s in reversed(program.steps[:program.logits_index]) if not isinstance(s, _ShapeNode)]
        with torch.autocast(state.logits.device.type, enabled=False):
            logits = upcast(state.logits, dtype)
            if segments <= 1 or not torch.is_grad_enabled():
                R, captured = walk(order, head())
            else:
                parts = relevance_segments(order, saved, segments)
                R, captured = head(), {}
                for part in parts:
                    R, found = checkpoint(walk, part, R, use_reentrant=False)
                    captured.update(found)
        missing = wanted - captured.keys()
        if missing:
            raise InputError(f"no relevance reached step(s) {sorted(missing)}: they are not between the input and "
                             "the logits layer")
        return R[program.input_name], captured

    def run(self, x: Tensor, targets: TargetsLike, *, output: str = "logit", rule: str | Sequence[str] = "epsilon",
            capture: Sequence[str] = (), segments: int | str = 1, map_chunk: int | str | None = None,
            sync: bool = False) -> Relevance:
        """The relevance pass of ``x``, from the input's checks to the heatmaps: the one driver that
        :func:`explain`, ``LRP.__call__`` and :class:`~isnet_kernels.ISNet` go through.

        1. Checks ``x`` (:meth:`check`, with one host synchronisation when ``check_input`` or ``sync``), ``output``,
           ``rule`` and the type of ``targets``.
        2. Runs the model's forward (:meth:`forward`; the logits must be (B, K)).
        3. The classes to explain, (B, M): ``targets`` itself (a LongTensor (B, M)), ``"all"`` (M = K, class k in
           column k), or ``targets(logits)`` for a callable that chooses them from the logits (the argmax, a
           label); none with ``output="all"`` (M = 1, all logits together). They are checked
           (:func:`checked_targets`): out of range, they raise :class:`~isnet_kernels.errors.TargetError`, read
           on the host for CPU targets and with ``sync``; accelerator targets without ``sync`` are not read back,
           their maps come out NaN instead (:func:`mark_invalid`, no device-side assertion).
        4. The relevance pass (:meth:`relevance_at`), once per hidden-layer rule in ``rule`` (a name, or several,
           whose maps are concatenated along the map axis in that order: the dual ISNet's z+ and epsilon maps), on
           chunks of ``map_chunk`` maps (None: all M at once; an int; ``"auto"``: from the memory available,
           :func:`~isnet_kernels.lrp.chunking.auto_map_chunk`), each chunk under activation checkpointing when
           autograd records (:func:`~isnet_kernels.lrp.chunking.chunked_relevance`), and in ``segments``
           checkpointed segments of steps (an int, or ``"auto"``: :func:`auto_segments`). Neither changes the maps
           or their gradients.
        5. With ``sync``, warns (``RuntimeWarning``, one host synchronisation) when a heatmap is identically zero
           although the logit it explains is not.

        Returns a :class:`Relevance`: the logits (B, K), the heatmaps (B, M, C, H, W), the classes explained, the
        relevance at the steps named in ``capture`` (B, M, ...) and the chunk size used.
        """
        self.check(x, self.check_input or sync)
        if output not in OUTPUT_RULES:
            raise InputError(f"output must be one of {OUTPUT_RULES}, got {output!r}")
        rules = tuple(rule) if isinstance(rule, (tuple, list)) else (rule,)
        for name in rules or (rule,):  # an empty sequence of rules is refused as it is
            if name not in HIDDEN_RULES:
                raise InputError(f"rule must be one of {HIDDEN_RULES}, got {name!r}")
        if output != "all" and not callable(targets):
            if isinstance(targets, str) and targets != "all":
                raise InputError(f"targets must be a LongTensor (B, M) or 'all', got {targets!r}")
            if not isinstance(targets, (Tensor, str)):
                raise InputTypeError(f"targets must be a LongTensor (B, M) or 'all', got {type(targets).__name__}")
        if map_chunk is not None and map_chunk != "auto":
            check_map_chunk(map_chunk)
        logits, state = self.forward(x)
        B, K = logits.shape
        valid = None
        if output == "all":
            targets = None
        else:
            if isinstance(targets, str):
                targets = torch.arange(K, device=x.device).expand(B, K)
            elif callable(targets):
                targets = targets(logits)
            targets, valid = checked_targets(targets, B, K, x.device, sync)
        if segments == "auto":
            segments = auto_segments(len(state.saved))
        maps = 1 if targets is None else targets.shape[1]
        if maps == 1 or map_chunk is None:
            chunk = maps
        elif map_chunk == "auto":
            chunk = auto_map_chunk(maps, bytes_per_map(state.saved, self.model.parameters()), x.device)
        else:
            chunk = min(map_chunk, maps)
        per_rule = []
        for name in rules:
            cfg = self.config(x, name)
            if chunk >= maps:
                heat, found = self.relevance_at(state, targets, output, cfg, capture, segments)
                per_rule.append((heat, *(found[step] for step in capture)))
            else:
                def part(t: Tensor, cfg: S.RuleConfig = cfg) -> tuple[Tensor, ...]:
                    heat, found = self.relevance_at(state, t, output, cfg, capture, segments)
                    return (heat, *(found[step] for step in capture))

                per_rule.append(chunked_relevance(part, targets, chunk))
        heat, *inter = per_rule[0] if len(per_rule) == 1 else [torch.cat(group, 1) for group in zip(*per_rule)]
        if valid is not None:
            heat, *inter = mark_invalid([heat, *inter], valid)
        if sync:
            _warn_if_zero(heat, logits, targets)
        return Relevance(logits, heat, targets, dict(zip(capture, inter)), chunk)

    def __call__(self, x: Tensor, targets: Tensor | str | None, output: str = "logit",
                 rule: str = "epsilon") -> tuple[Tensor, Tensor]:
        """Logits (B, K) and heatmaps (B, M, C, H, W): :meth:`run` with these arguments.

        ``targets``: a LongTensor (B, M) of classes to explain, or ``"all"`` (M = K maps, one per class); with
        ``output="all"`` (one map explaining all logits together) it is ignored and may be None. ``rule`` is the
        hidden layers' rule: ``"epsilon"`` or ``"zplus"`` (z+, with positive weights; meant for non-negative
        layer inputs, as after ReLUs). Out-of-range CPU targets raise; accelerator targets are not read back, and
        their maps are NaN.
        """
        result = self.run(x, targets, output=output, rule=rule)
        return result.logits, result.heatmaps


def explain(model: nn.Module, x: Tensor, target: int | Tensor | None = None, *, eps: float = 1e-2,
            first_layer: str = "zb", bounds: BoundsLike = (0.0, 1.0), output: str = "logit",
            rule: str = "epsilon", backend: str | None = None) -> Tensor:
    """The LRP heatmap of one class per image, (B, C, H, W).

    An inference call: nothing is recorded for autograd and the result carries no graph. To train through
    heatmaps, use :class:`LRP`, whose heatmaps are differentiable. It runs :meth:`LRP.run` with ``sync``: the input
    (NaN/Inf, the Z^B bounds) and the target's range are read on the host and raise, and an identically zero
    heatmap warns.

    Parameters
    ----------
    model : a classifier the engine supports (see :class:`LRP`); its compiled program is kept, so repeated calls
        cost no tracing.
    x : (B, C, H, W) input batch.
    target : the class to explain: an int (the same for every image), a LongTensor (B,), or None for each
        image's predicted class (the argmax logit).
    eps, first_layer, bounds : as for :class:`LRP`.
    output : ``"logit"`` (relevance starts as the logit's value), ``"selective"`` (the class-contrastive rule
        of the Faster ISNet) or ``"all"`` (all logits together, at their values; ``target`` is ignored).
    rule : the hidden layers' rule, ``"epsilon"`` or ``"zplus"`` (the dual ISNet's z+ map).
    backend : as for :class:`LRP`.
    """
    lrp = LRP(model, eps=eps, first_layer=first_layer, bounds=bounds, backend=backend)
    classes = functools.partial(_target_classes, target=target, device=x.device)
    with torch.no_grad():
        return lrp.run(x, classes, output=output, rule=rule, sync=True).heatmaps[:, 0]


def _target_classes(logits: Tensor, target: int | Tensor | None, device: torch.device) -> Tensor:
    """:func:`explain`'s ``target`` as classes (B, 1): the argmax logit for None, the int for every image, or the
    tensor (B,) (or a scalar tensor, for every image); their range is checked by :meth:`LRP.run`."""
    B = logits.shape[0]
    if target is None:
        return logits.detach().argmax(-1, keepdim=True)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise InputTypeError(f"target must be an int, a LongTensor of shape (B,), or None, got {type(target).__name__}")
    if isinstance(target, int):
        return torch.full((B, 1), target, dtype=torch.long, device=device)
    if target.dim() == 0:
        target = target.expand(B)
    if target.dim() != 1 or target.shape[0] != B:
        raise InputError(f"target must be an int or a LongTensor of shape (B,) = ({B},), got shape "
                         f"{tuple(target.shape)}")
    return target.to(device).view(B, 1)
