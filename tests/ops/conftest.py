"""Shared settings for the relevance-op tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """The ops tests use tiny float64 tensors: intra-op threads only add overhead, and on a busy machine spinning
    OpenMP workers make small (dilated, float64) convolutions orders of magnitude slower. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
