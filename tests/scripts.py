"""Loading the example programs of ``python/`` as modules, for their end-to-end tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PYTHON = Path(__file__).resolve().parents[1] / "python"


def load_script(filename: str) -> ModuleType:
    """``python/<filename>`` imported as a fresh module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(Path(filename).stem, PYTHON / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
