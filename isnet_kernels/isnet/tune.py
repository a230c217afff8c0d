"""Choosing the foreground bounds C1 and C2 of the heatmap loss (docs/isnet.md#choosing-c1-and-c2).

Train the classifier without the heatmap loss for a few epochs; over the last epoch collect, per image, the total
absolute relevance ``T = sum |H|`` (over channels and pixels, averaged over the maps of the original variant, kept
per map for the dual variant, and per deep-supervision level), with a streaming mean ``mu`` and standard deviation
``sigma``; then

    C1 = max(mu / 5, mu - 3 sigma),    C2 = min(25 C1, mu + 3 sigma).

The ISNet itself is then trained from scratch with these values (:func:`tune_cut` works on a copy by default).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .wrapper import ISNet


class RunningMoments:
    """Streaming mean and variance of a stream of (N, G) samples per group G (Chan et al.'s parallel update), kept
    on the samples' device in float64: no host synchronisation until :meth:`result`."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, values: Tensor) -> None:
        values = values.detach().double()
        if values.dim() == 1:
            values = values.unsqueeze(1)
        n = values.shape[0]
        if n == 0:
            return
        batch_mean = values.mean(0)
        batch_m2 = ((values - batch_mean) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, batch_mean, batch_m2
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[list[float], list[float]]:
        """Per group: the mean and the population standard deviation."""
        if self.mean is None:
            raise InputError("no samples were seen")
        std = torch.sqrt(self.m2 / self.count)
        return self.mean.tolist(), std.tolist()


def cuts_from_moments(mu: float, sigma: float) -> tuple[float, float]:
    """``C1 = max(mu / 5, mu - 3 sigma)``, ``C2 = min(25 C1, mu + 3 sigma)``."""
    c1 = max(mu / 5, mu - 3 * sigma)
    return c1, min(25 * c1, mu + 3 * sigma)


def heatmap_totals(heatmaps: Tensor, per_map: bool) -> Tensor:
    """Per image, ``sum |H|`` over (C, H, W): (B, M) per map, or (B, 1) averaged over the maps."""
    totals = heatmaps.detach().abs().sum((2, 3, 4))
    return totals if per_map else totals.mean(1, keepdim=True)


@dataclass
class CutResult:
    """C1 and C2 per level (``"input"`` and each deep-supervision module), each a number or one per map (dual).

    ``ISNetLoss(C1=result.C1, C2=result.C2)`` takes them as they are.
    """

    C1: dict[str, float | list[float]] = field(default_factory=dict)
    C2: dict[str, float | list[float]] = field(default_factory=dict)
    mean: dict[str, list[float]] = field(default_factory=dict)
    std: dict[str, list[float]] = field(default_factory=dict)
    samples: int = 0


class CutTuner:
    """Accumulates heatmap totals of :class:`ISNet` outputs and turns them into C1/C2 (module docstring)."""

    def __init__(self, per_map: bool = False):
        self.per_map = per_map
        self.moments: dict[str, RunningMoments] = {}

    def update(self, heatmaps: Tensor, intermediate: dict[str, Tensor] | None = None) -> None:
        levels = {"input": heatmaps, **(intermediate or {})}
        for name, maps in levels.items():
            self.moments.setdefault(name, RunningMoments()).update(heatmap_totals(maps, self.per_map))

    def result(self) -> CutResult:
        out = CutResult()
        for name, moments in self.moments.items():
            mus, sigmas = moments.result()
            pairs = [cuts_from_moments(m, s) for m, s in zip(mus, sigmas)]
            if not all(math.isfinite(c) and c > 0 for pair in pairs for c in pair):
                raise InputError(f"the heatmaps at level '{name}' have total relevance mean {mus} and std {sigmas}: "
                                 "no positive, finite C1/C2 follow (an untrained or diverged model?)")
            c1 = [p[0] for p in pairs]
            c2 = [p[1] for p in pairs]
            out.C1[name] = c1 if self.per_map else c1[0]
            out.C2[name] = c2 if self.per_map else c2[0]
            out.mean[name], out.std[name] = mus, sigmas
            out.samples = moments.count
        return out


def _unpack(batch: Iterable) -> tuple[Tensor, Tensor]:
    items = list(batch) if isinstance(batch, (list, tuple)) else None
    if items is None or len(items) not in (2, 3):
        raise InputError("the loader must yield (images, labels) or (images, masks, labels) batches")
    return items[0], items[-1]


def tune_cut(isnet: ISNet, loader: Iterable, *, epochs: int = 5, lr: float = 1e-2, momentum: float = 0.9,
             clip: float | None = 1.0, optimizer: torch.optim.Optimizer | None = None, copy_model: bool = True,
             progress: bool = True) -> CutResult:
    """C1/C2 for :class:`~isnet_kernels.ISNetLoss` by the procedure of docs/isnet.md#choosing-c1-and-c2 (module
    docstring).

    Trains ``isnet``'s classifier (a deep copy when ``copy_model``, the default, so the ISNet to be trained stays
    untouched) with cross-entropy only for ``epochs`` epochs (SGD with ``lr``, ``momentum`` and gradient-norm clip
    ``clip``, or the ``optimizer`` given, which must then hold the parameters of the model that is trained, so
    ``copy_model=False``), collecting the heatmap totals over the last epoch. ``epochs=0`` collects them in one pass
    without training (a model trained already). ``loader`` yields (images, labels) or (images, masks, labels).
    """
    from tqdm.auto import tqdm

    if optimizer is not None and copy_model:
        raise InputError("an optimizer holds the parameters of one model: pass copy_model=False with it")
    if epochs < 0:
        raise InputError(f"epochs must be >= 0, got {epochs}")
    net = copy.deepcopy(isnet) if copy_model else isnet
    device = next(net.parameters()).device
    if optimizer is None and epochs > 0:
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    tuner = CutTuner(per_map=net.variant == "dual")
    was_training = net.training
    net.train()
    for epoch in range(max(epochs, 1)):
        last = epoch == max(epochs, 1) - 1
        bar = tqdm(loader, desc=f"tune C1/C2, epoch {epoch + 1}/{max(epochs, 1)}", disable=not progress,
                   leave=False)
        for batch in bar:
            x, labels = _unpack(batch)
            x, labels = x.to(device), labels.to(device)
            if epochs == 0:
                with torch.no_grad():
                    out = net(x, labels, heatmaps=True)
            else:
                out = net(x, labels, heatmaps=last)
                loss = F.cross_entropy(out.logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                optimizer.step()
            if last:
                tuner.update(out.heatmaps, out.intermediate)
    net.train(was_training)
    return tuner.result()
