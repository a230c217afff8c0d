"""README's Python examples run as written: explaining a torchvision classifier, and an ISNet training loop
(given a one-batch ``loader``); its Lightning example: tests/pl/test_readme_example.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from .optional import require

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(heading: str) -> str:
    block = re.search(rf"## {heading}\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, f"README has no Python example under '## {heading}'"
    return block.group(1)


def test_explain_example_writes_the_heatmaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("torchvision")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_example("Explain a classifier"), "README", "exec"), scope)  # noqa: S102 - the example as written
    assert scope["heatmaps"].shape == scope["x"].shape and torch.isfinite(scope["heatmaps"]).all()
    assert (tmp_path / "heatmaps.png").stat().st_size > 0


def test_training_example_trains_the_isnet() -> None:
    require("torchvision")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1
    scope: dict = {"loader": [(x, masks, torch.tensor([1, 7]))]}
    code = _example("Train an ISNet")
    exec(compile(code, "README", "exec"), scope)  # noqa: S102 - the example as written
    isnet, loss = scope["isnet"], scope["loss"]
    assert torch.isfinite(loss.total) and loss.background.item() >= 0
    assert scope["criterion"].C2 == 1000.0  # the default the comment states
    assert scope["logits"].shape == (2, 10) and not isnet.training
    assert all(p.grad is not None for p in isnet.parameters() if p.requires_grad)
