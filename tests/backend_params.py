"""pytest parameters for the relevance backends: an unavailable backend's tests show as skipped with the reason,
never vanish from the count (``.ci/run`` asserts that the compiled backends are available before tests start)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from isnet_kernels.backends import dispatch

#: The backends that run the hand-written Functions (``reference`` runs plain autograd).
FUNCTION_BACKENDS = ("torch", "cpp", "triton")


def unavailable(name: str) -> pytest.MarkDecorator:
    """A skip mark for tests of backend ``name`` when it cannot run here, with the reason it cannot."""
    ok, why = dispatch.backend_status()[name]
    return pytest.mark.skipif(not ok, reason=f"backend {name!r} is not available: {why}")


def backend_params(names: Iterable[str] = FUNCTION_BACKENDS) -> list[Any]:
    """``pytest.param(name)`` for each backend, skipped with the reason where it is not available."""
    return [pytest.param(name, marks=unavailable(name), id=name) for name in names]


def backend_cases(cases: Iterable[tuple[str, Any]]) -> list[Any]:
    """``pytest.param(backend, value)`` for each ``(backend, value)`` pair, skipped where the backend is not."""
    return [pytest.param(backend, value, marks=unavailable(backend), id=f"{backend}-{value}")
            for backend, value in cases]
