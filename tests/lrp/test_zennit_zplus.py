"""The "all" output rule and the z+ rule (the dual ISNet's two maps) against zennit, float64, eval mode.

The VGG-11-with-BatchNorm case of ``test_zennit.py`` (every BatchNorm follows a Conv2d and is merged; the classifier
is Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear, no BatchNorm1d), first layer Z^B (zennit ``ZBox``, zero folded
first bias) or epsilon.

* epsilon, ``output="all"``: zennit's epsilon composite with the initial relevance = the logit vector itself.
* z+, ``output="all"``: ``zennit.rules.ZPlus`` on every Conv2d/Linear but the first layer, epsilon on the pools
  (average pooling has positive weights and no bias, so z+ and epsilon agree there; max-pool is winner-take-all
  either way), and the initial relevance = the last layer's z+ logits ``W'+ a + b'+`` (``a`` captured with a
  forward hook on the canonized model). zennit's ZPlus splits inputs by sign (alpha1-beta0); every z+ layer here
  reads a non-negative input (after ReLU or max-pool), where it is ``W+ a + b+``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optional import require

require("zennit")

from zennit.core import Composite
from zennit.rules import ZPlus

import isnet_kernels as ik

from .test_zennit import EPS, TOL, Case, _build, _inputs
from .zennit_utils import MERGED, Epsilon, ZBox, merged_batchnorms, rel_err, zennit_copy

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _composite(case: Case, first_rule, hidden: str) -> Composite:
    """``first_rule`` on the first layer; Epsilon (``hidden="epsilon"``) or ZPlus (``"zplus"``) on the other
    Conv2d/Linear layers; Epsilon on the pools; nothing on merged BatchNorms, ReLU and dropout."""

    def module_map(ctx, name, module):
        if name == case.first:
            return first_rule
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert getattr(module, MERGED, False), f"BatchNorm {name} is not merged"
            return None
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return ZPlus(stabilizer=EPS) if hidden == "zplus" else Epsilon(epsilon=EPS)
        if isinstance(module, _POOLS):
            return Epsilon(epsilon=EPS)
        return None

    return Composite(module_map=module_map, canonizers=case.canonizers())


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _zennit_all(case: Case, x: Tensor, first_rule, hidden: str) -> Tensor:
    """zennit's heatmap (B, C, H, W) of all logits together: initial relevance = the logits (epsilon) or the last
    layer's z+ logits (z+)."""
    zmodel = zennit_copy(case.model)
    composite = _composite(case, first_rule, hidden)
    x = x.detach().clone().requires_grad_(True)
    captured: dict[str, Tensor] = {}
    with composite.context(zmodel) as modified:
        assert merged_batchnorms(modified) == case.merged
        last = _last_linear(modified)
        handle = last.register_forward_hook(lambda mod, inp, out: captured.__setitem__("a", inp[0].detach()))
        try:
            out = modified(x)
        finally:
            handle.remove()
        if hidden == "zplus":
            a = captured["a"]
            assert a.min() >= 0, "the last layer's input must be non-negative for z+ = W+ a + b+"
            start = F.linear(a, last.weight.detach().clamp(min=0), last.bias.detach().clamp(min=0))
        else:
            start = out.detach()
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=start)
    with torch.no_grad():
        expected = case.model(x)
    assert rel_err(out, expected) < 1e-12, "the canonized zennit model computes another function"
    return relevance.detach()


def _setup(first_layer: str) -> tuple[Case, Tensor, object]:
    case = _build("vgg_bn", first_bias="zero" if first_layer == "zb" else "random")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in case.model.modules())
    x = _inputs(case, 2, normalised=False)
    first_rule = ZBox(0.0, 1.0, stabilizer=EPS) if first_layer == "zb" else Epsilon(epsilon=EPS)
    return case, x, first_rule


def _ours(case: Case, x: Tensor, hidden: str, first_layer: str) -> Tensor:
    return ik.explain(case.model, x, output="all", rule=hidden, first_layer=first_layer, bounds=(0.0, 1.0), eps=EPS)


@pytest.mark.parametrize("first_layer", ["zb", "epsilon"])
def test_epsilon_all_logits_against_zennit(first_layer: str) -> None:
    """Epsilon everywhere (Z^B or epsilon first), relevance starting as the logit vector."""
    case, x, first_rule = _setup(first_layer)
    ours = _ours(case, x, "epsilon", first_layer)
    assert ours.shape == x.shape
    err = rel_err(ours, _zennit_all(case, x, first_rule, "epsilon"))
    assert err < TOL, f"first layer {first_layer}: relative error {err:.3g}"


def test_zplus_all_logits_against_zennit() -> None:
    """z+ in the hidden layers, Z^B first, relevance starting as the last layer's z+ logits; and the dual ISNet's
    two maps are these z+ and epsilon maps."""
    case, x, first_rule = _setup("zb")
    ref = _zennit_all(case, x, first_rule, "zplus")
    err = rel_err(_ours(case, x, "zplus", "zb"), ref)
    assert err < TOL, f"relative error {err:.3g}"
    ref_eps = _zennit_all(case, x, first_rule, "epsilon")
    assert rel_err(ref, ref_eps) > 1e-2  # the two rules differ: neither comparison is vacuous

    out = ik.ISNet(case.model, "dual", eps=EPS, first_layer="zb", bounds=(0.0, 1.0)).eval()(x, heatmaps=True)
    assert rel_err(out.heatmaps[:, 0], ref) < TOL
    assert rel_err(out.heatmaps[:, 1], ref_eps) < TOL


def test_zplus_all_logits_epsilon_first_layer_against_zennit() -> None:
    """z+ in the hidden layers with first_layer="epsilon": the first layer takes epsilon, as in the dual ISNet's
    epsilon map (zennit: Epsilon on the first layer, ZPlus on the others)."""
    case, x, first_rule = _setup("epsilon")
    err = rel_err(_ours(case, x, "zplus", "epsilon"), _zennit_all(case, x, first_rule, "zplus"))
    assert err < TOL, f"relative error {err:.3g}"
