"""Shared test set-up: Triton's CPU interpreter, the real torchvision, a fixed seed, one thread.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set here, before
anything else is imported. torchvision is imported here, before zennit (which imports ``torchvision.models.resnet``
at import time): see :func:`import_torchvision`.
"""

import os
import types

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # the tests use tiny tensors: threads only add overhead


def import_torchvision() -> types.ModuleType:
    """Import torchvision and its classification models (both stacks the suite runs on install the torchvision
    built for their torch: torch 2.14.1 with torchvision 0.29.1, torch 2.11.0 with torchvision 0.26.0)."""
    import torchvision
    import torchvision.models  # noqa: F401

    return torchvision


import_torchvision()


@pytest.fixture(autouse=True)
def seed() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs with one intra-op thread, restored afterwards if the test changed it: the tensors are tiny,
    and on a busy machine OpenMP's spinning workers make small (dilated, float64) convolutions many times slower
    with 2 threads than with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A run in which no test executed (all deselected or skipped) must not pass silently.
_executed = 0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _executed
    if report.when == "call":
        _executed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and _executed == 0 and not session.config.option.collectonly:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
