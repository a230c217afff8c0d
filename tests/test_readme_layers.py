"""The supported-layer table of docs/layers.md is the one the rule registry generates, and its custom-rule example
works."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import isnet_kernels as ik
from isnet_kernels.lrp import REGISTRY, RuleRegistry

PAGE = Path(__file__).resolve().parents[1] / "docs/layers.md"


def test_readme_table_is_generated_from_the_registry() -> None:
    text = PAGE.read_text()
    found = re.search(r"<!-- supported-layers:[^>]*-->\n(.*?)<!-- /supported-layers -->", text, re.S)
    assert found, "docs/layers.md has no generated supported-layer table"
    assert found.group(1) == REGISTRY.markdown(), "regenerate it with: python -m isnet_kernels.info --layers"
    for group, _ in REGISTRY.table():
        assert f"| {group} |" in found.group(1)


def test_readme_custom_rule_example(monkeypatch) -> None:
    """The example of docs/layers.md, run against a copy of the registry so that other tests see the package's rules."""
    block = re.search(r"### Adding a rule for your own layer\n\n```python\n(.*?)```", PAGE.read_text(), re.S)
    assert block
    registry = RuleRegistry()
    for name in ("modules", "functions", "methods", "by_name"):
        setattr(registry, name, dict(getattr(REGISTRY, name)))
    registry.entries = list(REGISTRY.entries)
    from isnet_kernels.lrp import graph
    from isnet_kernels.lrp import registry as registry_module

    monkeypatch.setattr(registry_module, "REGISTRY", registry)
    monkeypatch.setattr(graph, "REGISTRY", registry)
    namespace: dict = {}
    exec(compile(block.group(1), "PAGE", "exec"), namespace)  # noqa: S102 - the documented example itself
    swish = namespace["Swish2"]
    assert registry.module_entry(swish()) is not None and REGISTRY.module_entry(swish()) is None
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), swish(), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    model = model.double().eval()
    for layer in (model[0], model[3]):
        torch.nn.init.zeros_(layer.bias)
    heat = ik.explain(model, x, 1, eps=1e-12, first_layer="epsilon")
    # the identity rule on the activation, epsilon elsewhere, no biases: the heatmap sums to the logit
    torch.testing.assert_close(heat.sum((1, 2, 3)), model(x)[:, 1], rtol=1e-9, atol=1e-12)
    ik.lrp.clear_cache()
