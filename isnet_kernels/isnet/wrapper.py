"""The ISNet: a classifier whose LRP heatmaps are computed in training, so that a loss can keep them inside masks.

Variants (docs/isnet.md#variants), by the maps M each image gets:

- ``"original"``: M = K, one map per class logit (logit rule); the cost grows linearly with K.
- ``"selective"`` (Faster ISNet): M = 1, the selective output rule for one class per image, chosen by ``select``:
  the ``"label"`` (the default), the ``"lowest"`` logit (the reference code's choice, ``preset="paper"``) or the
  ``"highest"``.
- ``"stochastic"``: M = 1, the logit rule for, per image, the argmax logit with probability 5/11 and otherwise a
  class drawn uniformly from the K - 1 others (from ``generator`` when given, for reproducibility).
- ``"dual"``: M = 2, both explaining all logits together (relevance starts as the logit vector): map 0 with the
  z+ rule in the hidden layers (its output layer's logits are those of the positive weights, ``W+ a + b+``), map 1
  with epsilon; both with the first-layer rule.

With ``deep_supervision`` the relevance at intermediate layers is returned too (ResNet stage outputs, DenseNet
transitions and final features, the outputs of VGG-style max-pools, or the modules named), for the loss to
penalise. A forward that is not asked for heatmaps (eval mode, by default) is exactly the classifier's forward.

Heatmaps (``heatmap=``): ``"lrp"`` (default) or ``"gradinput"``, Grad x Input in place of LRP (the authors'
ablation): map m of image b is ``x_b * d y_{b, c_bm} / d x_b`` for the class ``c_bm`` the variant picks (the logit,
for the selective variant too), computed by autograd with ``create_graph=True`` so that a loss on it trains the
model (double backpropagation); at a supervised layer, its activation times the same gradient there. For a
piecewise-linear, bias-free network Grad x Input sums to the explained logit exactly (Euler's theorem for
positively homogeneous functions). In train mode with BatchNorm batch statistics the gradient of the batch's
summed logits includes the statistics' (order 1/B) dependence on the other images. The dual variant's two maps
are two LRP rules and have no Grad x Input counterpart.

Multi-label classification (``task="multilabel"``: the labels are 0/1 targets (B, K), one sigmoid per class,
docs/isnet.md#multi-label-classification): the selective variant with ``select="label"`` explains each positive
label of an image, one map each, with the logit rule. A sigmoid's log-odds, ``log p_c - log(1 - p_c)`` with
``p_c = sigmoid(z_c)``, is the logit ``z_c`` itself: the quantity the selective rule explains for a softmax
classifier is, for independent sigmoids, what the logit rule explains. A batch gets ``M = max_b P_b`` maps (``P_b``
the positives of image b, at least 1); ``ISNetOutput.weights`` (B, M) marks the maps that explain a positive label
(1) and the padding (0), which the loss leaves out; an image with no positive label has no map that counts.
``select="lowest"``/``"highest"`` explain one logit per image with the logit rule; the other variants choose
their maps without the labels and run as for a single-label classifier.

The original variant at large K: the relevance pass runs in chunks of ``map_chunk`` maps under activation
checkpointing (:mod:`isnet_kernels.lrp.chunking`), so that memory stays bounded; ``map_chunk=None`` chooses the
chunk from the memory available and does not chunk when all K maps fit.

A call with LRP heatmaps is one :meth:`LRP.run <isnet_kernels.lrp.engine.LRP.run>`, the driver :func:`explain`
and ``LRP.__call__`` use too: the same checks of the input and of the classes explained, and the same chunking.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError, TargetError
from ..lrp.chunking import check_map_chunk
from ..lrp.engine import (
    LRP,
    BoundsLike,
    check_bounds,
    check_eps,
    check_input,
    check_logits,
    checked_targets,
    mark_invalid,
)
from ..lrp.graph import Program, module_output
from .loss import check_multilabel_targets
from .output import ISNetOutput
from .presets import check_preset, preset_value

VARIANTS = ("original", "selective", "stochastic", "dual")
SELECTIONS = ("lowest", "highest", "label")
HEATMAPS = ("lrp", "gradinput")
#: ``ISNet(task=...)``: one class per image (softmax, labels (B,)) or several (sigmoids, 0/1 targets (B, K)).
TASKS = ("multiclass", "multilabel")
#: ``ISNet(memory=...)``: ``"default"`` keeps the relevance pass's graph for the backward; ``"low"`` recomputes it.
MEMORY_MODES = ("default", "low")
#: Probability that the stochastic variant explains an image's argmax logit (the reference code's 5 of 11).
STOCHASTIC_ARGMAX_P = 5 / 11


def default_supervision(model: nn.Module) -> list[str]:
    """The layers deep supervision penalises by default, from the input side to the output side
    (docs/isnet.md#deep-supervision).

    ResNet-like (``layer1`` .. ``layer4``): the four stage outputs. DenseNet-like (``transition*`` modules): the
    transitions and ``features``. Otherwise every ``nn.MaxPool2d`` (VGG, :class:`~isnet_kernels.models.SmallCNN`).
    """
    layers = _default_layers(model)
    if layers:
        return layers
    raise InputError(f"{type(model).__name__} has no layers deep supervision knows to pick (ResNet stages, DenseNet "
                     "transitions, max-pools); pass deep_supervision=[module names] instead")


def _default_layers(model: nn.Module) -> list[str] | None:
    """:func:`default_supervision`'s layers, or None when the model has none of the kinds it knows."""
    names = dict(model.named_modules())
    stages = [f"layer{i}" for i in range(1, 5)]
    if all(s in names for s in stages):
        return stages
    transitions = [n for n in names if n.rsplit(".", 1)[-1].startswith("transition")]
    if transitions:
        return transitions + (["features"] if "features" in names else [])
    pools = [n for n, m in names.items() if isinstance(m, nn.MaxPool2d)]
    return pools or None


def _label_targets(labels: Tensor, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """Labels (B,) as targets (B, 1) (long, on ``device``), checked: integer dtype, shape, and range (on the host
    for CPU labels, raising :class:`~isnet_kernels.errors.TargetError`). The range of accelerator labels is not
    read back here: :func:`~isnet_kernels.lrp.engine.checked_targets` masks them."""
    if not isinstance(labels, Tensor):
        raise InputTypeError(f"labels must be a LongTensor of shape (B,) = ({batch},), got {type(labels).__name__}",
                             param="labels")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise InputTypeError(f"labels must be an integer (Long) tensor of class indices, got {labels.dtype}",
                             param="labels")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise InputError(f"labels must have shape (B,) = ({batch},), got {tuple(labels.shape)}", param="labels")
    if labels.device.type == "cpu":
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise TargetError(f"label {low if low < 0 else high} is out of range for a model with {num_classes} "
                              f"classes (valid: 0 .. {num_classes - 1}); the model's last layer needs one output per "
                              "class of the data", param="labels")
    return labels.to(device=device, dtype=torch.long).view(batch, 1)


def multilabel_targets(labels: Tensor, batch: int, num_classes: int, device: torch.device
                       ) -> tuple[Tensor, Tensor]:
    """The positive labels of multi-label targets (B, K) in {0, 1} as classes to explain (B, M) and their weights
    (B, M): image b's positive classes in increasing order, then padding (a class of the image, weight 0) up to
    ``M = max(1, max_b P_b)``. Checked on the host (M is a shape, read back anyway): a tensor of shape (B, K) whose
    values are 0 or 1, else :class:`~isnet_kernels.errors.InputError` / :class:`~isnet_kernels.errors.TargetError`."""
    check_multilabel_targets(labels, batch, num_classes)
    positive = (labels != 0).to(device)
    counts = positive.sum(1)
    M = max(int(counts.max()) if batch else 0, 1)
    order = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)[:, :M]  # positives first, in class order
    weights = (torch.arange(M, device=device)[None, :] < counts[:, None])
    return order, weights


class _PerProgram:
    """Values computed for a compiled :class:`Program`, kept while that program lives.

    Keyed by the program's identity and holding only a weak reference to it: an entry dies with its program (after
    :func:`isnet_kernels.lrp.clear_cache`), so a new program that reuses the old one's ``id`` never meets a stale
    value. (A ``Program`` is a dataclass with value equality, hence unhashable: no ``WeakKeyDictionary``.)
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, list[str]]] = {}

    def __len__(self) -> int:
        return sum(ref() is not None for ref, _ in self._entries.values())

    def __getstate__(self) -> dict:  # weak references do not pickle; the values are recomputed on use
        return {"_entries": {}}

    def __deepcopy__(self, memo: dict) -> _PerProgram:  # a copied ISNet compiles its own program
        return _PerProgram()

    def get(self, program: Program) -> list[str] | None:
        entry = self._entries.get(id(program))
        if entry is None or entry[0]() is not program:
            return None
        return entry[1]

    def put(self, program: Program, value: list[str]) -> None:
        key, entries = id(program), self._entries

        def forget(ref: weakref.ref) -> None:
            if entries.get(key, (None,))[0] is ref:
                del entries[key]

        self._entries[key] = (weakref.ref(program, forget), value)


class ISNet(nn.Module):
    """Wrap a classifier for ISNet training (Bassi et al. 2024; Faster ISNet).

    Parameters
    ----------
    model : the classifier, (B, C, H, W) -> (B, K), built from the layers the LRP engine supports (any
        differentiable classifier with ``heatmap="gradinput"``).
    variant : ``"original"``, ``"selective"`` (default), ``"stochastic"`` or ``"dual"`` (module docstring).
    eps : the rules' stabiliser.
    preset : ``"default"`` or ``"paper"`` (the authors' settings): where ``first_layer``, ``deep_supervision``,
        ``select`` or ``batch_stats`` is not given (None), the preset's value (:mod:`isnet_kernels.isnet.presets`).
    first_layer : ``"epsilon"`` (default) or ``"zb"`` (Z^B, paper) for the layers reading the input.
    bounds : ``(low, high)`` of the input values for Z^B: floats or per-channel tensors (normalised inputs).
    deep_supervision : ``"auto"`` (default: the default layers, :func:`default_supervision`, when the model has
        them, else none), True (the default layers; an error when there are none), False (paper) or a list of
        module names.
    select : the selective variant's class: the ``"label"`` (default; ``isnet(x, labels)``), the ``"lowest"``
        logit (paper) or the ``"highest"``.
    generator : a ``torch.Generator`` for the stochastic variant's draws.
    backend : the relevance backend (``None``/"auto", "reference", "torch", "cpp", "triton", "cuda"; see
        :mod:`isnet_kernels.backends.dispatch`).
    batch_stats : ``"live"`` (default: train-mode BatchNorm statistics keep their gradient in the heatmap's graph,
        as in the classifier's forward; :class:`LRP`) or ``"detached"`` (paper: they are constants there).
        With ``"detached"`` the heatmap loss has a gradient along the weights before a BatchNorm that the
        classifier is blind to, and those weights grow in training; ``"live"`` removes it.
    heatmap : ``"lrp"`` (default) or ``"gradinput"`` (Grad x Input, module docstring; no LRP program is compiled
        and ``self.lrp`` is None; ``eps``, ``first_layer``, ``bounds``, ``backend`` and ``batch_stats`` are unused).
    map_chunk : maps per chunk of the relevance pass when an image has more than one map explaining one class
        each (the original variant): a positive int, or None (default) to choose it from the memory available
        (:func:`~isnet_kernels.lrp.chunking.auto_map_chunk`). Heatmaps and gradients do not depend on it.
    task : ``"multiclass"`` (default: labels (B,) of class indices) or ``"multilabel"`` (0/1 targets (B, K); the
        selective variant explains each positive label with the logit rule, module docstring).
    memory : ``"default"`` (autograd keeps the relevance pass's graph until the backward) or ``"low"``: the pass
        runs in ``ceil(sqrt(steps))`` segments under activation checkpointing (:meth:`LRP.relevance_at`), so
        that only the relevance at the segments' boundaries is kept and the backward rebuilds one segment at a
        time: one more relevance pass per step for a graph of about ``1 / sqrt(steps)`` of the default's
        (docs/kernels.md#memory). Heatmaps and gradients do not depend on it; it has no effect with
        ``heatmap="gradinput"`` or without autograd.

    Checks (:class:`~isnet_kernels.ISNetError`): ``eps`` and ``bounds`` here; in a call with heatmaps those of
    :meth:`LRP.run` without synchronisation: the input (:meth:`LRP.check`: the Z^B bounds for CPU inputs) and the
    classes explained (out-of-range CPU labels raise, accelerator labels give NaN maps; :meth:`choose_classes`).

    ``isnet(x, labels=None, heatmaps=None)`` returns an :class:`ISNetOutput`. ``heatmaps`` defaults to
    ``self.training``: training calls return logits and heatmaps (B, M, C, H, W); eval calls cost one plain forward.
    After each call with heatmaps, ``last_map_chunk`` holds the chunk size used (M when not chunked).
    """

    def __init__(self, model: nn.Module, variant: str = "selective", *, eps: float = 1e-2,
                 first_layer: str | None = None, bounds: BoundsLike = (0.0, 1.0),
                 deep_supervision: bool | str | Sequence[str] | None = None, select: str | None = None,
                 generator: torch.Generator | None = None, backend: str | None = None, batch_stats: str | None = None,
                 heatmap: str = "lrp", map_chunk: int | None = None, preset: str = "default",
                 memory: str = "default", task: str = "multiclass"):
        super().__init__()
        check_preset(preset)
        first_layer = preset_value(preset, "first_layer", first_layer)
        deep_supervision = preset_value(preset, "deep_supervision", deep_supervision)
        select = preset_value(preset, "select", select)
        batch_stats = preset_value(preset, "batch_stats", batch_stats)
        self.preset = preset
        if variant not in VARIANTS:
            raise InputError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if select not in SELECTIONS:
            raise InputError(f"select must be one of {SELECTIONS}, got {select!r}")
        if heatmap not in HEATMAPS:
            raise InputError(f"heatmap must be one of {HEATMAPS}, got {heatmap!r}")
        if memory not in MEMORY_MODES:
            raise InputError(f"memory must be one of {MEMORY_MODES}, got {memory!r}", param="memory")
        self.memory = memory
        if task not in TASKS:
            raise InputError(f"task must be one of {TASKS}, got {task!r}", param="task")
        self.task = task
        if heatmap == "gradinput" and variant == "dual":
            raise InputError("the dual variant's two maps are two LRP rules and have no Grad x Input counterpart; "
                             "use heatmap='lrp' with variant='dual', or another variant with heatmap='gradinput'")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputTypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        eps, bounds = check_eps(eps), check_bounds(bounds)  # checked for Grad x Input too, which does not use them
        self.model = model
        self.variant, self.select, self.generator, self.heatmap = variant, select, generator, heatmap
        self.map_chunk = check_map_chunk(map_chunk)
        self.last_map_chunk: int | None = None
        if deep_supervision is True:
            self.supervised = default_supervision(model)
        elif deep_supervision == "auto":
            self.supervised = _default_layers(model) or []
        elif deep_supervision is False:
            self.supervised = []
        elif isinstance(deep_supervision, str):
            raise InputError(f"deep_supervision must be True, False, 'auto' or a list of module names, got "
                             f"{deep_supervision!r}")
        else:
            self.supervised = list(deep_supervision)
        self._capture = _PerProgram()
        if heatmap == "lrp":
            self.lrp: LRP | None = LRP(model, eps=eps, first_layer=first_layer, bounds=bounds, check_input=False,
                                       backend=backend, batch_stats=batch_stats)
            self._capture_steps(self.lrp.program)  # unknown module names fail here
        else:
            self.lrp = None
            modules = dict(model.named_modules())
            unknown = [name for name in self.supervised if name not in modules]
            if unknown:
                raise InputError(f"deep_supervision names module(s) {unknown} that {type(model).__name__} does not "
                                 "have; give names from model.named_modules()")

    @property
    def maps_per_image(self) -> int | None:
        """M: 1 (selective, stochastic), 2 (dual), or None for the original variant (M = K)."""
        return {"selective": 1, "stochastic": 1, "dual": 2}.get(self.variant)

    def extra_repr(self) -> str:
        if self.lrp is None:
            return (f"variant={self.variant!r}, select={self.select!r}, heatmap='gradinput', "
                    f"deep_supervision={self.supervised}")
        return (f"variant={self.variant!r}, select={self.select!r}, eps={self.lrp.eps}, "
                f"first_layer={self.lrp.first_layer!r}, batch_stats={self.lrp.batch_stats!r}, "
                f"deep_supervision={self.supervised}, map_chunk={self.map_chunk}"
                + (f", memory={self.memory!r}" if getattr(self, "memory", "default") != "default" else "")
                + (", task='multilabel'" if self.multilabel else ""))

    @property
    def multilabel(self) -> bool:
        """Whether the labels are multi-label 0/1 targets (B, K) (``task="multilabel"``)."""
        return getattr(self, "task", "multiclass") == "multilabel"  # an ISNet pickled before the option: multiclass

    def _targets(self, logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The classes the maps explain (B, M), accelerator labels not yet range-checked
        (:func:`~isnet_kernels.lrp.engine.checked_targets` does), and, for a multi-label selective ISNet explaining
        the labels, the weights (B, M) of the maps that explain a positive label (None: every map counts)."""
        if self.multilabel and self.variant == "selective" and self.select == "label":
            if labels is None:
                raise InputError("select='label' explains each image's positive labels: call isnet(x, targets) "
                                 "with the 0/1 targets (B, K)", param="labels")
            targets, weights = multilabel_targets(labels, *logits.shape, logits.device)
            return targets, weights
        return self._classes(logits, labels), None

    def _capture_steps(self, program: Program) -> list[str]:
        """The program steps whose relevance is that of the supervised modules' outputs, computed once per program."""
        steps = self._capture.get(program)
        if steps is None:
            steps = [module_output(program, name) for name in self.supervised]
            self._capture.put(program, steps)
        return steps

    def choose_classes(self, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The classes the maps explain, (B, M), for the original, selective and stochastic variants.

        Labels (``select="label"``) are checked: an integer tensor (B,) of classes ``0 .. K - 1``. The range is
        checked at once on CPU (:class:`~isnet_kernels.errors.TargetError`); labels on an accelerator are not read
        back (no host synchronisation): out-of-range labels are replaced by class 0 here, and :meth:`forward` makes
        those images' heatmaps NaN, which the loss reports (no device-side assertion, which would end the process's
        use of the device)."""
        return checked_targets(self._classes(logits, labels), *logits.shape, logits.device, sync=False)[0]

    def _classes(self, logits: Tensor, labels: Tensor | None) -> Tensor:
        """:meth:`choose_classes` before the range of accelerator labels is checked."""
        B, K = logits.shape
        scores = logits.detach()
        if self.variant == "original":
            return torch.arange(K, device=logits.device).expand(B, K)
        if self.variant == "stochastic":
            top = scores.argmax(-1)
            device = self.generator.device if self.generator is not None else logits.device
            coin = torch.rand(B, generator=self.generator, device=device).to(logits.device)
            shift = torch.randint(1, max(K, 2), (B,), generator=self.generator, device=device).to(logits.device)
            other = (top + shift) % K  # uniform over the K - 1 classes that are not the argmax
            return torch.where(coin < STOCHASTIC_ARGMAX_P, top, other).view(B, 1)
        if self.select == "lowest":
            return scores.argmin(-1, keepdim=True)
        if self.select == "highest":
            return scores.argmax(-1, keepdim=True)
        if labels is None:
            raise InputError("select='label' explains each image's label: call isnet(x, labels)", param="labels")
        return _label_targets(labels, B, K, logits.device)

    def forward(self, x: Tensor, labels: Tensor | None = None, *, heatmaps: bool | None = None) -> ISNetOutput:
        want = self.training if heatmaps is None else heatmaps
        if not want:
            return ISNetOutput(self.model(x))
        if self.lrp is None:
            check_input(x, check_finite=False, model=self.model)
            return self._gradinput(x, labels)
        capture = self._capture_steps(self.lrp.program)
        segments = "auto" if getattr(self, "memory", "default") == "low" else 1  # pickled before the option: default
        if self.variant == "dual":
            result = self.lrp.run(x, None, output="all", rule=("zplus", "epsilon"), capture=capture,
                                  segments=segments)
            weights = None
        else:
            chosen: dict[str, Tensor | None] = {}

            def classes(logits: Tensor) -> Tensor:
                targets, chosen["weights"] = self._targets(logits, labels)
                return targets

            # a sigmoid's log-odds is its logit: multi-label maps use the logit rule (module docstring)
            output = "selective" if self.variant == "selective" and not self.multilabel else "logit"
            result = self.lrp.run(x, classes, output=output, capture=capture, segments=segments,
                                  map_chunk="auto" if self.map_chunk is None else self.map_chunk)
            weights = chosen["weights"]
        self.last_map_chunk = result.map_chunk
        levels = {name: result.captured[step] for name, step in zip(self.supervised, capture)}
        return ISNetOutput(result.logits, result.heatmaps, result.targets, levels, weights)

    def _gradinput(self, x: Tensor, labels: Tensor | None) -> ISNetOutput:
        """Grad x Input maps (module docstring), (B, M, C, H, W), and the same at the supervised layers."""
        record = torch.is_grad_enabled()
        modules = dict(self.model.named_modules())
        acts: dict[str, Tensor] = {}
        hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: acts.__setitem__(name, out))
                 for name in self.supervised]
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            try:
                logits = self.model(xg)
            finally:
                for hook in hooks:
                    hook.remove()
            check_logits(logits, x.shape[0])
            targets, weights = self._targets(logits, labels)
            targets, valid = checked_targets(targets, *logits.shape, logits.device, sync=False)
            inputs = [xg, *(acts[name] for name in self.supervised)]
            maps: list[list[Tensor]] = [[] for _ in inputs]
            M = targets.shape[1]
            for m in range(M):
                explained = logits.gather(1, targets[:, m:m + 1]).sum()
                grads = torch.autograd.grad(explained, inputs, create_graph=record, retain_graph=record or m < M - 1)
                for store, a, g in zip(maps, inputs, grads):
                    store.append(a * g)
            heat, *inter = (torch.stack(store, 1) for store in maps)
        heat, *inter = mark_invalid([heat, *inter], valid)
        if not record:
            logits, heat, inter = logits.detach(), heat.detach(), [t.detach() for t in inter]
        self.last_map_chunk = 1
        return ISNetOutput(logits, heat, targets, dict(zip(self.supervised, inter)), weights)
