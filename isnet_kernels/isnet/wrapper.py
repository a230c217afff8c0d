"""The ISNet: a classifier whose LRP heatmaps are computed in training, so that a loss can keep them inside masks.

Variants (ISNET.md §3), by the maps M each image gets:

- ``"original"``: M = K, one map per class logit (logit rule); the cost grows linearly with K.
- ``"selective"`` (Faster ISNet): M = 1, the selective output rule for one class per image, chosen by ``select``:
  ``"lowest"`` logit (the reference code's choice), ``"highest"`` or the ``"label"``.
- ``"stochastic"``: M = 1, the logit rule for, per image, the argmax logit with probability 5/11 and otherwise a
  class drawn uniformly from the K - 1 others (from ``generator`` when given, for reproducibility).
- ``"dual"``: M = 2, both explaining all logits together (relevance starts as the logit vector): map 0 with the
  z+ rule in the hidden layers (its output layer's logits are those of the positive weights, ``W+ a + b+``), map 1
  with epsilon; both with the first-layer rule.

With ``deep_supervision`` the relevance at intermediate layers is returned too (ResNet stage outputs, DenseNet
transitions and final features, the outputs of VGG-style max-pools, or the modules named), for the loss to
penalise. A forward that is not asked for heatmaps (eval mode, by default) is exactly the classifier's forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..lrp.engine import LRP, BoundsLike, ForwardState, check_input
from ..lrp.graph import Program, module_output
from .output import ISNetOutput

VARIANTS = ("original", "selective", "stochastic", "dual")
SELECTIONS = ("lowest", "highest", "label")
#: Probability that the stochastic variant explains an image's argmax logit (the reference code's 5 of 11).
STOCHASTIC_ARGMAX_P = 5 / 11


def default_supervision(model: nn.Module) -> list[str]:
    """The layers deep supervision penalises by default, from the input side to the output side (ISNET.md §3).

    ResNet-like (``layer1`` .. ``layer4``): the four stage outputs. DenseNet-like (``transition*`` modules): the
    transitions and ``features``. Otherwise every ``nn.MaxPool2d`` (VGG, :class:`~isnet_kernels.models.SmallCNN`).
    """
    names = dict(model.named_modules())
    stages = [f"layer{i}" for i in range(1, 5)]
    if all(s in names for s in stages):
        return stages
    transitions = [n for n in names if n.rsplit(".", 1)[-1].startswith("transition")]
    if transitions:
        return transitions + (["features"] if "features" in names else [])
    pools = [n for n, m in names.items() if isinstance(m, nn.MaxPool2d)]
    if pools:
        return pools
    raise ValueError(f"{type(model).__name__} has no layers deep supervision knows to pick (ResNet stages, DenseNet "
                     "transitions, max-pools); pass deep_supervision=[module names] instead")


class ISNet(nn.Module):
    """Wrap a classifier for ISNet training (Bassi et al. 2024; Faster ISNet).

    Parameters
    ----------
    model : the classifier, (B, C, H, W) -> (B, K), built from the layers the LRP engine supports.
    variant : ``"original"``, ``"selective"`` (default), ``"stochastic"`` or ``"dual"`` (module docstring).
    eps : the rules' stabiliser.
    first_layer : ``"zb"`` (Z^B, default) or ``"epsilon"`` for the layers reading the input.
    bounds : ``(low, high)`` of the input values for Z^B: floats or per-channel tensors (normalised inputs).
    deep_supervision : False, True (the default layers, :func:`default_supervision`) or a list of module names.
    select : the selective variant's class: ``"lowest"`` logit, ``"highest"`` or ``"label"``.
    generator : a ``torch.Generator`` for the stochastic variant's draws.
    backend : the relevance backend (``None``/"auto", "reference", "cpp", "triton"; see :mod:`isnet_kernels.dispatch`).
    batch_stats : ``"detached"`` (default, the reference: train-mode BatchNorm statistics are constants in the
        heatmap's gradient) or ``"live"`` (they keep their gradient, as in the classifier's forward; :class:`LRP`).
        With ``"detached"`` the heatmap loss has a gradient along the weights before a BatchNorm that the
        classifier is blind to, and those weights grow in training; ``"live"`` removes it.

    ``isnet(x, labels=None, heatmaps=None)`` returns an :class:`ISNetOutput`. ``heatmaps`` defaults to
    ``self.training``: training calls return logits and heatmaps (B, M, C, H, W); eval calls cost one plain forward.
    """

    def __init__(self, model: nn.Module, variant: str = "selective", *, eps: float = 1e-2, first_layer: str = "zb",
                 bounds: BoundsLike = (0.0, 1.0), deep_supervision: bool | Sequence[str] = False,
                 select: str = "lowest", generator: torch.Generator | None = None, backend: str | None = None,
                 batch_stats: str = "detached"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.model = model
        self.variant, self.select, self.generator = variant, select, generator
        self.lrp = LRP(model, eps=eps, first_layer=first_layer, bounds=bounds, check_input=False, backend=backend,
                       batch_stats=batch_stats)
        if deep_supervision is True:
            self.supervised = default_supervision(model)
        elif deep_supervision is False or deep_supervision is None:
            self.supervised = []
        else:
            self.supervised = list(deep_supervision)
        self._capture: dict[int, list[str]] = {}
        self._capture_steps(self.lrp.program)  # unknown module names fail here

    @property
    def maps_per_image(self) -> int | None:
        """M: 1 (selective, stochastic), 2 (dual), or None for the original variant (M = K)."""
        return {"selective": 1, "stochastic": 1, "dual": 2}.get(self.variant)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, select={self.select!r}, eps={self.lrp.eps}, "
                f"first_layer={self.lrp.first_layer!r}, batch_stats={self.lrp.batch_stats!r}, "
                f"deep_supervision={self.supervised}")

    def _capture_steps(self, program: Program) -> list[str]:
        steps = self._capture.get(id(program))
        if steps is None:
            steps = self._capture[id(program)] = [module_output(program, name) for name in self.supervised]
        return steps

    def choose_classes(self, logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The classes the maps explain, (B, M), for the original, selective and stochastic variants."""
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
            raise ValueError("select='label' explains each image's label: call isnet(x, labels)")
        if labels.dim() != 1 or labels.shape[0] != B:
            raise ValueError(f"labels must have shape (B,) = ({B},), got {tuple(labels.shape)}")
        return labels.to(device=logits.device, dtype=torch.long).view(B, 1)

    def forward(self, x: Tensor, labels: Tensor | None = None, *, heatmaps: bool | None = None) -> ISNetOutput:
        want = self.training if heatmaps is None else heatmaps
        if not want:
            return ISNetOutput(self.model(x))
        check_input(x, check_finite=False)  # no host synchronisation: the loss catches non-finite values
        lrp = self.lrp
        logits, state = lrp.forward(x)
        capture = self._capture_steps(state.program)
        if self.variant == "dual":
            maps, inter = zip(*(self._relevance(state, None, "all", x, rule, capture)
                                for rule in ("zplus", "epsilon")))
            heat = torch.cat(maps, 1)
            levels = {name: torch.cat([part[step] for part in inter], 1)
                      for name, step in zip(self.supervised, capture)}
            return ISNetOutput(logits, heat, None, levels)
        targets = self.choose_classes(logits, labels)
        output = "selective" if self.variant == "selective" else "logit"
        heat, inter = self._relevance(state, targets, output, x, "epsilon", capture)
        return ISNetOutput(logits, heat, targets, {name: inter[step] for name, step in zip(self.supervised, capture)})

    def _relevance(self, state: ForwardState, targets: Tensor | None, output: str, x: Tensor, rule: str,
                   capture: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.lrp.relevance_at(state, targets, output, self.lrp.config(x, rule), capture)
