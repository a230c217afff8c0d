"""Fixtures of the tests of :mod:`isnet_kernels.lightning`: a tiny masked image folder per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..train.helpers import write_tiny_folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 classes of 8x8 grey images: 8 per class in train, 4 in val, 2 in test_biased and test_unbiased."""
    return write_tiny_folder(tmp_path_factory.mktemp("tiny") / "data")
