"""timm models through ``explain`` and the selective ISNet: one model per family (``zoo.TIMM_SAMPLE``), with the
functions of ``python/zoo.py`` that check torchvision's zoo (tests/lrp/test_zoo.py); ``make zoo`` runs every model
of ``zoo.TIMM``. Random weights, randomised by ``zoo.randomise``, small inputs where the model allows.

- ``explain`` (eval mode, float32): heatmaps of the input's shape, finite, none all zero.
- Conservation: float64, eps = 1e-9, every bias, shift and BatchNorm running mean zeroed, the epsilon rule on the
  first layer: the input relevance sums to the explained logit within 1e-5 relative, for the families whose rules
  conserve (ResNet, ResNeSt's split attention, ConvNeXt, EfficientNet, MobileNetV3, RegNet); ViT, DeiT, LeViT and
  EfficientFormer absorb relevance by design (attention's softmax rule; position embeddings, class tokens and
  attention biases are added constants: ``Case.absorbs``).
- One selective ISNet training step (train mode, ``ISNetLoss``, backward): every gradient finite, not all zero.
- A model the engine cannot explain fails with an ``UnsupportedLayerError`` that says why and what to do.
"""

from __future__ import annotations

import pytest
import torch

import isnet_kernels as ik
from isnet_kernels.errors import UnsupportedLayerError

from ..optional import require
from .test_zoo import zoo

timm = require("timm")

#: The families the timm zoo must cover (the modules of timm.models that define them); hybrids of convolutions
#: and attention: EfficientFormer and LeViT.
FAMILIES = {"resnet", "resnest", "convnext", "efficientnet", "mobilenetv3", "regnet", "vision_transformer", "deit",
            "efficientformer", "levit"}
CONSERVING = [n for n in zoo.TIMM_SAMPLE if zoo.case(n).absorbs is None]


def test_the_sample_covers_every_family():
    cases = {c.name: c for c in zoo.timm_cases()}
    assert set(zoo.TIMM_SAMPLE) <= set(cases)
    assert {zoo.case(n).family for n in zoo.TIMM_SAMPLE} == FAMILIES
    assert FAMILIES <= {c.family for c in cases.values()}
    assert {n for n in zoo.TIMM_SAMPLE if zoo.case(n).absorbs is not None} == {
        "timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224", "timm:efficientformer_l1", "timm:levit_128s"}


@pytest.mark.parametrize("name", zoo.TIMM_SAMPLE)
def test_explain(name: str) -> None:
    zoo.check_explain(zoo.case(name))


@pytest.mark.parametrize("name", CONSERVING)
def test_conservation(name: str) -> None:
    err = zoo.conservation_error(zoo.case(name))
    assert err <= zoo.CONSERVATION_TOL, f"{name}: |sum R - logit| / |logit| = {err:.2e}"


@pytest.mark.parametrize("name", zoo.TIMM_SAMPLE)
def test_isnet_step(name: str) -> None:
    zoo.check_isnet_step(zoo.case(name))


def test_a_model_that_cannot_be_traced_says_why():
    """MobileViT's blocks branch on tensor sizes in Python: torch.fx cannot trace them, and the error says so and
    what to do (make zoo records it as "unsupported")."""
    model = timm.create_model("mobilevit_xxs", num_classes=10).eval()
    with pytest.raises(UnsupportedLayerError, match="could not trace") as info:
        ik.explain(model, torch.rand(1, 3, 64, 64))
    assert "register a rule" in str(info.value)
    row = zoo.run_case(zoo.Case("timm:mobilevit_xxs", "mobilevit_xxs", {"num_classes": 10}, source="timm"))
    assert row["status"] == "unsupported" and "UnsupportedLayerError" in row["error"]
