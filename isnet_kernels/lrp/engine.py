"""Running a compiled relevance program: :class:`LRP` and :func:`explain`.

One forward pass (the model's own computation, run node by node, keeping only what the rules need) and one
relevance pass top-down, one call per node, with the M maps per image as a tensor axis. No Python loop over
samples or maps and no host synchronisation in either pass.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import dispatch
from . import steps as S
from .graph import Program, _ShapeNode, compile_model

OUTPUT_RULES = ("logit", "selective", "all")
HIDDEN_RULES = ("epsilon", "zplus")
FIRST_LAYER_RULES = ("zb", "epsilon")
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


@dataclass
class ForwardState:
    """What a forward pass leaves for the relevance pass: the program that ran and each step's saved tensors."""

    program: Program
    saved: dict[str, Any]


BoundsLike = tuple[float | Tensor, float | Tensor] | Sequence[float | Tensor]


def _bound_tensor(value: float | Tensor, x: Tensor, which: str) -> Tensor:
    """A bound as a 0-d tensor (scalar) or expanded to (1, C, H, W) (per channel or per pixel)."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t
    C = x.shape[1]
    if t.dim() == 1:
        if t.shape[0] != C:
            raise ValueError(f"{which} bound has {t.shape[0]} entries but the input has {C} channels; give one "
                             "value per channel, shape (C,), or a scalar")
        t = t.view(1, C, 1, 1)
    try:
        return t.expand(1, *x.shape[1:])
    except RuntimeError as exc:
        raise ValueError(f"{which} bound of shape {tuple(t.shape)} does not broadcast to the input's "
                         f"{tuple(x.shape[1:])}; give a scalar or one value per channel, shape (C,)") from exc


def _check_input(x: Any, check_finite: bool) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"input must be a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}; add a batch "
                         "axis with x.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype}; convert with x.float()")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError("input contains NaN or Inf values; LRP heatmaps of non-finite inputs are meaningless. "
                         "Clean the data (torch.nan_to_num) or find where the non-finite values come from")


def _check_targets(targets: Tensor, batch: int, num_classes: int) -> None:
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be an integer (Long) tensor of class indices, got {targets.dtype}")
    if targets.dim() != 2 or targets.shape[0] != batch:
        raise ValueError(f"targets must have shape (B, M) = ({batch}, M), one row of M class indices per image, "
                         f"got {tuple(targets.shape)}; for one class per image use targets.view(-1, 1)")
    if targets.numel() == 0:
        raise ValueError("targets is empty: ask for at least one map per image (M >= 1)")
    if targets.device.type == "cpu":
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise IndexError(f"target class {low if low < 0 else high} is out of range for a model with "
                             f"{num_classes} classes (valid: 0 .. {num_classes - 1})")
    else:  # no host sync on accelerators: checked on the device
        torch._assert_async(((targets >= 0) & (targets < num_classes)).all(), "target class out of range")


class LRP:
    """Layer-wise Relevance Propagation of a classifier, compiled once.

    Parameters
    ----------
    model : the classifier: an ``nn.Module`` mapping (B, C, H, W) images to (B, K) logits, built from the layers
        listed in README (``isnet_kernels.lrp.graph.SUPPORTED``). Traced with ``torch.fx`` at construction;
        unsupported layers raise :class:`~isnet_kernels.UnsupportedLayerError` here.
    eps : the stabiliser of every rule, ``stab(z) = z + eps * sign(z)``.
    first_layer : ``"zb"`` for the Z^B rule on the layers that read the input, ``"epsilon"`` for epsilon there too.
    bounds : ``(low, high)`` of the input values for Z^B: floats, or tensors of shape (C,) for normalised inputs.
    check_input : check the input for NaN/Inf (one host synchronisation per call).
    backend : ``"auto"`` (default; or ``$ISNET_KERNELS_BACKEND``), ``"reference"``, ``"cpp"`` or ``"triton"``:
        which kernels compute the relevance ops (see :mod:`isnet_kernels.dispatch`).
    batch_stats : how train-mode BatchNorm statistics enter the heatmap's gradient: ``"detached"`` (default, the
        reference semantics of ISNET.md §2: constants) or ``"live"`` (functions of the weights and the batch, as in
        the classifier's own forward; see :mod:`isnet_kernels.ops.batchnorm`). The heatmap's value is the same;
        eval mode (running statistics) is unaffected.

    Calling ``lrp(x, targets, output="logit")`` returns ``(logits, heatmaps)``: the model's logits (B, K) and
    heatmaps (B, M, C, H, W), differentiable w.r.t. the parameters and the input in train and eval mode.
    """

    def __init__(self, model: nn.Module, *, eps: float = 1e-2, first_layer: str = "zb",
                 bounds: BoundsLike = (0.0, 1.0), check_input: bool = True, backend: str | None = None,
                 batch_stats: str = "detached"):
        if first_layer not in FIRST_LAYER_RULES:
            raise ValueError(f"first_layer must be one of {FIRST_LAYER_RULES}, got {first_layer!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be a non-negative number, got {eps}")
        if len(bounds) != 2:
            raise ValueError(f"bounds must be (low, high), got {bounds!r}")
        self.model = model
        self.eps, self.first_layer, self.bounds = float(eps), first_layer, tuple(bounds)
        self.check_input = check_input
        if backend is not None and backend not in dispatch.BACKENDS:
            raise ValueError(f"backend must be one of {dispatch.BACKENDS}, got {backend!r}")
        self.backend = backend
        if batch_stats not in BATCH_STATS:
            raise ValueError(f"batch_stats must be one of {BATCH_STATS}, got {batch_stats!r}")
        self.batch_stats = batch_stats
        get_program(model)  # compile now, so that unsupported layers fail here

    @property
    def program(self) -> Program:
        """The compiled program for the model's current train/eval mode."""
        return get_program(self.model)

    def __repr__(self) -> str:
        return (f"LRP({type(self.model).__name__}, eps={self.eps}, first_layer={self.first_layer!r}, "
                f"steps={len(self.program.steps)})")

    def _config(self, x: Tensor, rule: str = "epsilon") -> S.RuleConfig:
        cfg = S.RuleConfig(self.eps, self.first_layer, rule, live_stats=self.batch_stats == "live",
                           prims=dispatch.primitives(dispatch.resolve(self.backend, x.device)))
        if self.first_layer == "zb":
            cfg.low = _bound_tensor(self.bounds[0], x, "low")
            cfg.high = _bound_tensor(self.bounds[1], x, "high")
        return cfg

    def forward(self, x: Tensor) -> tuple[Tensor, ForwardState]:
        """Run the model's forward, returning the logits and what the relevance pass needs."""
        program = self.program
        env: dict[str, Any] = {program.input_name: x}
        saved: dict[str, Any] = {}
        last_use = program.last_use
        for i, step in enumerate(program.steps):
            if isinstance(step, _ShapeNode):
                env[step.name] = step.fn(env)
            else:
                env[step.name], saved[step.name] = step.forward(env)
            for name in step.inputs:  # free activations no later node reads (the saved ones stay referenced)
                if last_use.get(name) == i and name != program.output_name:
                    env.pop(name, None)
        return env[program.output_name], ForwardState(program, saved)

    def relevance(self, state: ForwardState, targets: Tensor | None, output: str, cfg: S.RuleConfig) -> Tensor:
        """The relevance pass: from the output rule at the logits down to the input, (B, M, C, H, W)."""
        return self.relevance_at(state, targets, output, cfg)[0]

    def relevance_at(self, state: ForwardState, targets: Tensor | None, output: str, cfg: S.RuleConfig,
                     capture: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """The relevance pass, also returning the relevance at the steps named in ``capture`` (their outputs'
        relevance, all contributions summed), by step name."""
        program, saved = state.program, state.saved
        start = program.logits_step
        R: dict[str, Tensor] = {start.inputs[0]: start.start(saved[start.name], targets, output, cfg)}
        wanted = set(capture)
        captured: dict[str, Tensor] = {}
        for step in reversed(program.steps[:program.logits_index]):
            if isinstance(step, _ShapeNode):
                continue
            r = R.pop(step.name, None)
            if r is None:
                continue
            if step.name in wanted:
                captured[step.name] = r
            for name, part in zip(step.inputs, step.relevance(r, saved[step.name], cfg)):
                if part is not None:
                    R[name] = part if name not in R else R[name] + part
        missing = wanted - captured.keys()
        if missing:
            raise ValueError(f"no relevance reached step(s) {sorted(missing)}: they are not between the input and "
                             "the logits layer")
        return R[program.input_name], captured

    def __call__(self, x: Tensor, targets: Tensor | str | None, output: str = "logit",
                 rule: str = "epsilon") -> tuple[Tensor, Tensor]:
        """Logits (B, K) and heatmaps (B, M, C, H, W).

        ``targets``: a LongTensor (B, M) of classes to explain, or ``"all"`` (M = K maps, one per class); with
        ``output="all"`` (one map explaining all logits together) it is ignored and may be None. ``rule`` is the
        hidden layers' rule: ``"epsilon"`` or ``"zplus"`` (z+, with positive weights; meant for non-negative
        layer inputs, as after ReLUs).
        """
        _check_input(x, self.check_input)
        if output not in OUTPUT_RULES:
            raise ValueError(f"output must be one of {OUTPUT_RULES}, got {output!r}")
        if rule not in HIDDEN_RULES:
            raise ValueError(f"rule must be one of {HIDDEN_RULES}, got {rule!r}")
        if output != "all":
            if isinstance(targets, str) and targets != "all":
                raise ValueError(f"targets must be a LongTensor (B, M) or 'all', got {targets!r}")
            if not isinstance(targets, (Tensor, str)):
                raise TypeError(f"targets must be a LongTensor (B, M) or 'all', got {type(targets).__name__}")
        logits, state = self.forward(x)
        B, K = logits.shape[0], logits.shape[-1]
        if output == "all":
            targets = None
        elif isinstance(targets, str):
            targets = torch.arange(K, device=x.device).expand(B, K)
        else:
            _check_targets(targets, B, K)
            targets = targets.to(device=x.device, dtype=torch.long)
        heatmaps = self.relevance(state, targets, output, self._config(x, rule))
        return logits, heatmaps


def explain(model: nn.Module, x: Tensor, target: int | Tensor | None = None, *, eps: float = 1e-2,
            first_layer: str = "zb", bounds: BoundsLike = (0.0, 1.0), output: str = "logit",
            rule: str = "epsilon", backend: str | None = None) -> Tensor:
    """The LRP heatmap of one class per image, (B, C, H, W).

    An inference call: nothing is recorded for autograd and the result carries no graph. To train through
    heatmaps, use :class:`LRP`, whose heatmaps are differentiable.

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
    _check_input(x, True)
    if output not in OUTPUT_RULES:
        raise ValueError(f"output must be one of {OUTPUT_RULES}, got {output!r}")
    if rule not in HIDDEN_RULES:
        raise ValueError(f"rule must be one of {HIDDEN_RULES}, got {rule!r}")
    with torch.no_grad():
        return _explain(lrp, x, target, output, rule)


def _explain(lrp: LRP, x: Tensor, target: int | Tensor | None, output: str, rule: str) -> Tensor:
    logits, state = lrp.forward(x)
    B, K = logits.shape[0], logits.shape[-1]
    if output == "all":
        return lrp.relevance(state, None, output, lrp._config(x, rule))[:, 0]
    if target is None:
        targets = logits.detach().argmax(-1, keepdim=True)
    elif isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"target must be an int, a LongTensor of shape (B,), or None, got {type(target).__name__}")
    elif isinstance(target, int):
        targets = torch.full((B, 1), target, dtype=torch.long, device=x.device)
        _check_targets(targets, B, K)
    else:
        if target.dim() == 0:
            target = target.expand(B)
        if target.dim() != 1 or target.shape[0] != B:
            raise ValueError(f"target must be an int or a LongTensor of shape (B,) = ({B},), got shape "
                             f"{tuple(target.shape)}")
        targets = target.to(x.device).view(B, 1)
        _check_targets(targets, B, K)
    return lrp.relevance(state, targets.long(), output, lrp._config(x, rule))[:, 0]
