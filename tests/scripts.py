"""Loading the example programs of ``python/`` as modules, for their end-to-end tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PYTHON = Path(__file__).resolve().parents[1] / "python"


def load_script(filename: str) -> ModuleType:
    """``python/<filename>`` imported as a fresh module (its ``main`` is not run), registered under its name (as
    dataclasses and pickling need) with ``python/`` on the path (as worker processes that unpickle its objects
    need)."""
    if str(PYTHON) not in sys.path:
        sys.path.insert(0, str(PYTHON))
    spec = importlib.util.spec_from_file_location(Path(filename).stem, PYTHON / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
