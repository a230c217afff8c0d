"""torchvision's classifiers through ``explain`` and the selective ISNet (the functions of ``python/zoo.py``).

Every classification builder of ``torchvision.models.list_models(module=torchvision.models)`` is a case of
``python/zoo.py`` (``make zoo`` runs all of them and writes ``python/results/zoo/zoo.md``); CI runs a fixed
sample, one builder per family (``zoo.SAMPLE``), because the whole zoo takes far longer than the test budget.
Models are randomised (``zoo.randomise``: torchvision's initialisation makes some logits vanish in eval mode).

- ``explain`` (eval mode, float32): heatmaps of the input's shape, finite, none all zero.
- Conservation: float64, eps = 1e-9, every bias, BatchNorm shift and running mean zeroed, the epsilon rule on the
  first layer: the input relevance sums to the explained logit within 1e-5 relative. Not checked where the rules
  absorb relevance by design (``Case.absorbs``): ViT, Swin and MaxViT (the softmax rule of attention; position
  embeddings, class tokens and relative position biases are added constants), and GoogLeNet / Inception V3 with
  ``transform_input=True`` (a constant shift per input channel). Those two builders' ``transform_input=False``
  forms are checked.
- One selective ISNet training step (train mode, ``ISNetLoss``, backward): every gradient finite, not all zero.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from tests.scripts import PYTHON


def _load_zoo():
    """``python/zoo.py`` as the module ``zoo`` (registered in ``sys.modules``: its dataclasses need that)."""
    if "zoo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("zoo", PYTHON / "zoo.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["zoo"] = module
        spec.loader.exec_module(module)
    return sys.modules["zoo"]


zoo = _load_zoo()

# Explain and train on the transform_input forms of GoogLeNet and Inception V3 (they hold every layer of the
# plain forms); conservation on the plain forms (the input transform's shift absorbs relevance).
EXPLAIN_SAMPLE = [n for n in zoo.SAMPLE if n not in ("googlenet", "inception_v3")]
CONSERVING_SAMPLE = [n for n in zoo.SAMPLE if zoo.case(n).absorbs is None]


def _params(names: list[str], conservation: bool = False) -> list:
    out = []
    for name in names:
        out.append(pytest.param(name, id=name))
    return out


def test_cases_cover_every_builder() -> None:
    """Every classification builder is a case (GoogLeNet and Inception V3 twice); the sample holds a builder of
    every family; the builders left out of ``make zoo`` by default say why."""
    tv = zoo.import_torchvision()
    builders = tv.models.list_models(module=tv.models)
    cases = [c for c in zoo.cases() if c.source == "torchvision"]  # the timm models: tests/lrp/test_timm_zoo.py
    assert sorted({c.builder for c in cases}) == sorted(builders)
    assert len(cases) == len(builders) + 2
    assert {c.family for c in cases} == {zoo.case(n).family for n in zoo.SAMPLE}
    assert all(zoo.case(n).heavy is None for n in zoo.SAMPLE)
    assert {c.name for c in cases if c.heavy} == set(zoo.HEAVY) and all(zoo.HEAVY.values())
    assert {c.name for c in cases if "transform_input" in c.name} == {"googlenet+transform_input",
                                                                       "inception_v3+transform_input"}


def test_randomise_gives_every_model_live_logits() -> None:
    """The randomisation that the checks rely on: ViT-B/32's zero-initialised head and MNASNet's vanishing
    eval-mode activations give logits of ordinary size after :func:`zoo.randomise` (not before)."""
    tv = zoo.import_torchvision()
    for name in ("vit_b_32", "mnasnet0_5"):
        c = zoo.case(name)
        x = zoo.inputs(c, 2)
        torch.manual_seed(0)
        plain = tv.models.get_model(c.builder, weights=None, **c.kwargs).eval()
        with torch.no_grad():
            before = float(plain(x).abs().max())
            after = float(zoo.build(c)(x).abs().max())
        assert before < 1e-4, f"{name}: torchvision's own logits are no longer tiny ({before:.1e})"
        assert after > 1e-2, f"{name}: randomised logits {after:.1e}"


@pytest.mark.parametrize("name", _params(EXPLAIN_SAMPLE))
def test_explain(name: str) -> None:
    zoo.check_explain(zoo.case(name))


@pytest.mark.parametrize("name", _params(CONSERVING_SAMPLE, conservation=True))
def test_conservation(name: str) -> None:
    err = zoo.conservation_error(zoo.case(name))
    assert err <= zoo.CONSERVATION_TOL, f"{name}: |sum R - logit| / |logit| = {err:.2e}"


@pytest.mark.parametrize("name", _params(EXPLAIN_SAMPLE))
def test_isnet_step(name: str) -> None:
    zoo.check_isnet_step(zoo.case(name))
