"""Packages the tests compare against but the package does not need (zennit, LXT, torchvision), and the optional
ones whose features they test (Lightning, TensorBoard).

Where such a package is missing, the tests that need it are skipped with the reason, as on the GPU machines, whose
Python has no zennit or LXT. Where a run must have it (``make test`` sets ``ISNET_KERNELS_TEST_REQUIRE`` to the
packages the development environment installs), a missing one fails the run instead of skipping silently: an
independent comparison cannot vanish from CI.
"""

from __future__ import annotations

import importlib
import os
import types

import pytest

#: pip requirement of each optional package, as the development environment installs it (Makefile).
INSTALL = {"zennit": "--no-deps zennit==0.5.1", "lxt": "--no-deps lxt==2.1", "torchvision": "--no-deps torchvision",
           "lightning": "lightning==2.6.6 torch==<the installed version>", "tensorboard": "tensorboard==2.21.0",
           "timm": "timm==1.0.31 safetensors"}


def required() -> set[str]:
    """The top-level package names this run must have (``ISNET_KERNELS_TEST_REQUIRE``, comma-separated)."""
    return {name.strip() for name in os.environ.get("ISNET_KERNELS_TEST_REQUIRE", "").split(",") if name.strip()}


def require(module: str) -> types.ModuleType:
    """Import ``module``; when it is missing, skip the calling test module with the reason, or raise when its
    package is one this run requires."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        if package in required():
            raise ImportError(f"{module} is required in this run (ISNET_KERNELS_TEST_REQUIRE) but not importable: "
                              f"{exc}; install it with pip install {INSTALL.get(package, package)}") from exc
        pytest.skip(f"the package {package} is not installed here ({exc}); "
                    f"pip install {INSTALL.get(package, package)} runs these tests",
                    allow_module_level=True)
