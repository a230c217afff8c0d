"""What an :class:`~isnet_kernels.ISNet` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ISNetOutput:
    """The result of ``isnet(x, labels)``.

    Attributes
    ----------
    logits : (B, K) the classifier's logits.
    heatmaps : (B, M, C, H, W) LRP heatmaps at the input, M maps per image (see the variants of
        :class:`~isnet_kernels.ISNet`), differentiable w.r.t. the parameters; ``None`` when not asked for (eval
        mode by default), in which case the call cost one plain forward.
    targets : (B, M) the classes the maps explain (``None`` for the dual variant, whose two maps explain all
        logits together, and when there are no heatmaps).
    intermediate : with deep supervision, the relevance at each supervised layer, by module name, each
        (B, M, C', H', W'), ordered from the input side to the output side.
    weights : (B, M) 1 for a map the loss counts and 0 for padding: a multi-label selective ISNet explains each
        image's positive labels, and a batch holds as many maps per image as its image with the most (None: every
        map counts).
    """

    logits: Tensor
    heatmaps: Tensor | None = None
    targets: Tensor | None = None
    intermediate: dict[str, Tensor] = field(default_factory=dict)
    weights: Tensor | None = None
