"""Every Triton kernel test runs with ``ISNET_KERNELS_POISON=1``: outputs start as NaN, so an output element a
kernel forgets to write shows instead of passing as stale memory."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def poison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISNET_KERNELS_POISON", "1")
