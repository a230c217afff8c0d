"""Shared test set-up: Triton's CPU interpreter, the real torchvision, a fixed seed, one thread.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is defined, so it is set here, before
anything else is imported. torchvision (0.28.0, installed with ``--no-deps``) is imported here, before zennit
(which imports ``torchvision.models.resnet`` at import time): see :func:`import_torchvision`.
"""

import os
import sys
import types

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # the tests use tiny tensors: threads only add overhead


def import_torchvision() -> types.ModuleType:
    """Import the real torchvision, also beside a CPU build of torch it was not built for.

    A torchvision built for the installed torch (as torch 2.11.0 with torchvision 0.26.0 on the GPU machines'
    stack) imports as it is. PyPI's torchvision 0.28.0 beside the CPU build of torch 2.13.0 is a CUDA build: its
    compiled operators do not load there, and importing ``torchvision._meta_registrations`` (meta kernels for those
    operators) fails. Then an empty module in its place lets ``torchvision.models`` import; classification models
    need none of the compiled operators.
    """
    if "torchvision" in sys.modules:
        import torchvision

        return torchvision
    try:
        import torchvision
        import torchvision.models  # noqa: F401

        return torchvision
    except (ImportError, RuntimeError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))
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
