"""Shared test set-up: Triton's CPU interpreter, torchvision stubs for zennit, a fixed seed, one thread.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set here, before
anything else is imported. zennit imports ``torchvision.models.resnet`` at import time, and PyPI's torchvision
does not work with the pinned torch, so when torchvision cannot be imported, small stand-in modules are put
in ``sys.modules`` first (zennit only needs ``BasicBlock`` and ``Bottleneck`` from it).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from isnet_kernels._torchvision_stub import install_torchvision_stub  # noqa: E402

torch.set_num_threads(1)  # the tests use tiny tensors: threads only add overhead


install_torchvision_stub()


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
