"""The steps of a compiled relevance program: one per traced node that carries relevance.

Each step runs its node's forward computation (``forward``), keeps exactly what its rule needs (``saved``,
references to tensors the forward produced, never copies), and, in the relevance pass, maps the relevance at
its output, shape (B, M, ...), to relevance at its tensor inputs (``relevance``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


@dataclass
class RuleConfig:
    """Run-time settings of a relevance pass."""

    eps: float
    first_layer: str  # "zb" or "epsilon"
    rule: str = "epsilon"  # the hidden layers' rule: "epsilon" or "zplus" (the dual ISNet's z+ map)
    live_stats: bool = False  # train-mode BatchNorm statistics keep their gradient (ops.batchnorm docstring)
    low: Tensor | None = None  # bounds broadcast to (1, C, H, W) of the input, for Z^B
    high: Tensor | None = None
    prims: ops.TorchPrimitives | None = None  # the backend's kernels; None: the autograd reference ops


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn(x)`` normalises with the batch's statistics (train mode, or no running statistics kept)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def batch_norm_forward(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``bn`` on ``x`` exactly as ``bn(x)`` would (running-statistics update included) and also return the
    mean and inverse standard deviation it normalised with: the batch's (biased variance) when it uses batch
    statistics, the running ones otherwise."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = uses_batch_stats(bn)
    track = not bn.training or bn.track_running_stats
    y, mean, invstd = torch.native_batch_norm(
        x, bn.weight, bn.bias, bn.running_mean if track else None, bn.running_var if track else None,
        use_batch_stats, momentum, bn.eps)
    if not use_batch_stats:
        mean, invstd = bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
    return y, mean, invstd


class Step:
    """One node of the relevance program."""

    name: str  # the fx node's name
    inputs: list[str]  # names of the tensor nodes it reads, in the order ``relevance`` returns them

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:  # pragma: no cover - interface
        """Compute the node's value from the values of earlier nodes; return it and what ``relevance`` needs."""
        raise NotImplementedError

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> Sequence[Tensor | None]:  # pragma: no cover
        raise NotImplementedError


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """The numeric, symmetric padding of a convolution (``"valid"`` is 0; ``"same"`` must be symmetric)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError("asymmetric 'same' padding")
        return (total[0] // 2, total[1] // 2)
    return _pair(conv.padding)


class LinearBlock(Step):
    """A ``Conv2d`` or ``Linear`` with an optional BatchNorm folded into it (the ReLU after it passes relevance).

    The forward runs the layer without its bias, adds the bias, then the BatchNorm, as the modules would; it keeps
    the layer input ``a``, the bias-free output ``x0`` and the normalisation statistics, from which the rule's
    pre-activation ``z`` (value = the forward's, gradient as the rule defines) is built in the relevance pass.
    """

    def __init__(self, name: str, input_name: str, layer: nn.Conv2d | nn.Linear, bn: nn.Module | None):
        self.name, self.inputs = name, [input_name]
        self.layer, self.bn = layer, bn
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.first = False  # takes the Z^B rule when the config asks for it
        self.output = False  # produces the logits: relevance starts here
        if self.is_conv:
            self.stride, self.dilation = _pair(layer.stride), _pair(layer.dilation)
            self.padding, self.groups = conv_padding(layer), layer.groups
            self.geom = ops.Geometry(False, self.stride, self.padding, self.dilation, self.groups)
        else:
            self.geom = ops.Geometry(linear=True)

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        a = env[self.inputs[0]]
        layer = self.layer
        if self.is_conv:
            x0 = F.conv2d(a, layer.weight, None, self.stride, self.padding, self.dilation, self.groups)
        else:
            x0 = F.linear(a, layer.weight)
        x = x0 if layer.bias is None else x0 + layer.bias.view(-1, *([1] * (x0.dim() - 2)))
        mean = invstd = None
        y = x if self.bn is None else None
        batch = False
        if self.bn is not None:
            batch = uses_batch_stats(self.bn)
            y, mean, invstd = batch_norm_forward(self.bn, x)
        if torch.is_grad_enabled():
            return y, (a, x0, mean, invstd, None, batch)
        return y, (a, None, mean, invstd, y, batch)  # no gradient will be asked for: z is the forward's own output

    def statistics(self, saved: Any, cfg: RuleConfig) -> tuple[Tensor | None, Tensor | None, bool]:
        """``(mu, 1 / sigma, live)``: the BatchNorm's statistics as the rule uses them; with ``cfg.live_stats`` and
        batch statistics, recomputed from the live layer output so that they keep their gradient."""
        _, x0, mean, invstd, _, batch = saved
        if not (cfg.live_stats and batch and x0 is not None):
            return mean, invstd, False
        b = self.layer.bias
        x = x0 if b is None else x0 + b.detach().view(-1, *([1] * (x0.dim() - 2)))
        mean, invstd = ops.batchnorm.batch_statistics(x, self.bn.eps)
        return mean, invstd, True

    def folded(self, saved: Any, cfg: RuleConfig,
               stats: tuple[Tensor | None, Tensor | None, bool] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(z, W', b')``: the rule pre-activation and the folded weight and (detached) bias; ``stats`` as
        :meth:`statistics` returns them (computed here when not given)."""
        a, x0, _, _, y, _ = saved
        w, b = self.layer.weight, self.layer.bias
        if self.bn is None:
            z = y if y is not None else ops.rule_preactivation(x0, b)
            return z, w, None if b is None else b.detach()
        gamma, beta = self.bn.weight, self.bn.bias
        mean, invstd, live = stats if stats is not None else self.statistics(saved, cfg)
        z = y if y is not None else ops.rule_preactivation(x0, b, gamma, beta, mean, invstd, live)
        w, b = ops.fold_batchnorm(w, b, gamma, beta, mean, invstd, live)
        return z, w, b

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a = saved[0]
        stats = self.statistics(saved, cfg) if self.bn is not None else None
        z, w, b = self.folded(saved, cfg, stats)
        if self.first and cfg.first_layer == "zb":
            low = cfg.low.reshape(1, *a.shape[1:]) if cfg.low.dim() > 0 else cfg.low
            high = cfg.high.reshape(1, *a.shape[1:]) if cfg.high.dim() > 0 else cfg.high
            return [ops.zbox(R, a, z, w, b, low, high, self.geom, cfg.eps, cfg.prims)]
        if cfg.rule == "zplus" and not self.first:  # the layers reading the input keep the first-layer rule
            return [ops.zplus(R, a, w, b, self.geom, cfg.eps, cfg.prims)]
        if cfg.prims is not None and self.bn is not None and self.layer.weight.numel() > R.numel():
            # W'^T (R / t) = W^T (R gamma/sigma / t): scaling the (small) relevance costs less than folding the
            # (large) weight; the same value and gradient.
            _, invstd, live = stats
            scale = ops.batchnorm.batchnorm_scale(self.bn.weight, invstd, live)
            R = R * scale.view(-1, *([1] * (R.dim() - 3)))
            w = self.layer.weight
        return [ops.epsilon(R, a, z, w, self.geom, cfg.eps, cfg.prims)]

    def start(self, saved: Any, targets: Tensor | None, rule: str, cfg: RuleConfig) -> Tensor:
        """Relevance at this (logit-producing, linear) layer's input for the output rule ``rule``.

        ``"all"`` explains all logits together (one map, R_out = the logit vector); under the z+ rule the logits
        are those of the positive layer, ``z+ = a W'+^T + b'+``.
        """
        a = saved[0]
        z, w, b = self.folded(saved, cfg)
        if rule == "all":
            if cfg.rule == "zplus":
                w = w.clamp(min=0)
                z = F.linear(a, w, None if b is None else b.clamp(min=0))
            return ops.all_logits_output(a, z, w, cfg.eps)
        if rule == "selective":
            return ops.reference_selective_output(a, z, w, targets, cfg.eps)
        return ops.reference_logit_output(a, z, w, targets, cfg.eps)


class BatchNormStep(Step):
    """A BatchNorm with no linear layer before it: epsilon rule with diagonal weights ``gamma / sigma``."""

    def __init__(self, name: str, input_name: str, bn: nn.Module):
        self.name, self.inputs, self.bn = name, [input_name], bn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        (a,) = args
        batch = uses_batch_stats(self.bn)
        y, mean, invstd = batch_norm_forward(self.bn, a)
        return y, (a, mean, invstd, batch)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, mean, invstd, batch = saved
        live = cfg.live_stats and batch and torch.is_grad_enabled()
        if live:
            mean, invstd = ops.batchnorm.batch_statistics(a, self.bn.eps)
        if cfg.rule == "zplus":  # diagonal weights: W+ = max(gamma / sigma, 0), b+ = max(beta - mu gamma / sigma, 0)
            scale = ops.batchnorm.batchnorm_scale(self.bn.weight, invstd, live)
            shift = -mean.detach() * scale.detach()
            if self.bn.bias is not None:
                shift = shift + self.bn.bias.detach()
            w_pos, b_pos = scale.clamp(min=0), shift.clamp(min=0)
            view = (-1, *([1] * (a.dim() - 2)))
            z = a * w_pos.view(view) + b_pos.view(view)
            return [a.unsqueeze(1) * w_pos.view(view) * R / ops.stabilize(z, cfg.eps).unsqueeze(1)]
        z = ops.rule_preactivation(a, None, self.bn.weight, self.bn.bias, mean, invstd, live)
        return [ops.batchnorm_epsilon(R, a, z, self.bn.weight, invstd, cfg.eps, cfg.prims, live)]


class PassStep(Step):
    """ReLU, dropout, identity, ``contiguous``: relevance passes unchanged (ISNET.md §2)."""

    def __init__(self, name: str, input_name: str, fn: Callable[[Tensor], Tensor]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        return self.fn(args[0]), None

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        return [R]


class ReshapeStep(Step):
    """``flatten``, ``view``, ``reshape``: the relevance takes the input's shape back.

    ``fn`` evaluates the node from the environment (its sizes may come from shape nodes such as ``x.size(0)``).
    """

    def __init__(self, name: str, input_name: str, fn: Callable[[dict[str, Any]], Tensor]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out = self.fn(env)
        if out.shape[0] != args[0].shape[0]:
            raise ValueError(f"node '{self.name}' reshapes the batch axis ({tuple(args[0].shape)} -> "
                             f"{tuple(out.shape)}); relevance needs the batch axis kept first")
        return out, args[0].shape

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        return [R.reshape(*R.shape[:2], *saved[1:])]


class MaxPoolStep(Step):
    """``max_pool2d`` / ``adaptive_max_pool2d``: winner-take-all at the forward's argmax indices."""

    def __init__(self, name: str, input_name: str, fn: Callable[[Tensor], tuple[Tensor, Tensor]]):
        self.name, self.inputs, self.fn = name, [input_name], fn

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out, indices = self.fn(args[0])
        return out, (out, indices, args[0].shape[-2:])

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        out, indices, size = saved
        return [ops.maxpool(R, out, indices, size, cfg.eps, cfg.prims)]


class AvgPoolStep(Step):
    """``avg_pool2d``: epsilon rule with the exact adjoint of the pooling."""

    def __init__(self, name: str, input_name: str, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
                 count_include_pad: bool, divisor_override: int | None):
        self.name, self.inputs = name, [input_name]
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None or stride == [] or stride == () else _pair(stride)
        self.padding, self.ceil_mode = _pair(padding), ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        a = args[0]
        out = F.avg_pool2d(a, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                           self.divisor_override)
        return out, (a, out)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, out = saved
        return [ops.avgpool(R, a, out, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override, cfg.eps, cfg.prims)]


class AdaptiveAvgPoolStep(Step):
    """``adaptive_avg_pool2d``: epsilon rule with the exact adjoint of the pooling."""

    def __init__(self, name: str, input_name: str, output_size: Any):
        self.name, self.inputs, self.output_size = name, [input_name], output_size

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out = F.adaptive_avg_pool2d(args[0], self.output_size)
        return out, (args[0], out)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        return [ops.adaptive_avgpool(R, *saved, eps=cfg.eps, prims=cfg.prims)]


class MeanStep(Step):
    """``x.mean(dims)`` over spatial axes (global average pooling written by hand): epsilon rule."""

    def __init__(self, name: str, input_name: str, dims: Sequence[int], keepdim: bool):
        self.name, self.inputs, self.dims, self.keepdim = name, [input_name], tuple(dims), keepdim

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        a = args[0]
        dims = tuple(sorted(d % a.dim() for d in self.dims))
        if 0 in dims:
            raise ValueError(f"node '{self.name}' averages over the batch axis; relevance needs it kept")
        out = a.mean(dims, keepdim=self.keepdim)
        return out, (a, out, dims)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> list[Tensor]:
        a, out, dims = saved
        return [ops.mean(R, a, out, dims, cfg.eps, cfg.prims)]


class AddStep(Step):
    """Residual addition ``y = x + f``: relevance split in proportion to the summands."""

    def __init__(self, name: str, inputs: list[str]):
        self.name, self.inputs = name, inputs

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        x, f = args
        if x.shape != f.shape:
            raise ValueError(f"node '{self.name}' adds tensors of shapes {tuple(x.shape)} and {tuple(f.shape)}; "
                             "the residual rule needs equal shapes")
        y = operator.add(x, f)
        return y, (x, f, y)

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> tuple[Tensor, Tensor]:
        if cfg.rule == "zplus":  # the positive parts of the summands: R_x = x+ / stab(x+ + f+) R
            x, f, _ = saved
            x, f = x.clamp(min=0), f.clamp(min=0)
            return ops.residual_split(R, x, f, x + f, eps=cfg.eps, prims=cfg.prims)
        return ops.residual_split(R, *saved, eps=cfg.eps, prims=cfg.prims)


class CatStep(Step):
    """``torch.cat(parts, dim)``: the relevance is split back into the parts."""

    def __init__(self, name: str, inputs: list[str], dim: int):
        self.name, self.inputs, self.dim = name, inputs, dim

    def forward(self, env: dict[str, Any]) -> tuple[Tensor, Any]:
        args = [env[n] for n in self.inputs]
        out = torch.cat(args, self.dim)
        return out, [t.shape[self.dim] for t in args]

    def relevance(self, R: Tensor, saved: Any, cfg: RuleConfig) -> tuple[Tensor, ...]:
        return ops.reference_concat_split(R, saved, self.dim)
