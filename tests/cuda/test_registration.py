"""The CUDA extension ``isnet_kernels._C_cuda`` loads without a GPU and registers a CUDA kernel for every operator
that ``isnet_kernels._C`` defines, with the schema the CPU kernels have: what ``make gpu-dry-run`` checks on a CPU
machine with the GPU machines' stack (a CUDA build of torch and nvcc), before any GPU has run it.

Skipped, with the reason, where the extension is not built (a CPU build of torch, as in the development
environment); a run that sets ``ISNET_KERNELS_TEST_REQUIRE=_C_cuda`` (the dry run) fails instead.
"""

from __future__ import annotations

import pytest
import torch

from isnet_kernels.backends import cpp, cuda

from ..optional import required


@pytest.fixture(scope="module")
def extension() -> None:
    ok, why = cuda.built()
    if not ok:
        if "_C_cuda" in required():
            pytest.fail(f"isnet_kernels._C_cuda must be built and load here (ISNET_KERNELS_TEST_REQUIRE): {why}")
        pytest.skip(f"isnet_kernels._C_cuda is not built or does not load here: {why}")


def _registered(key: str) -> set[str]:
    return {name for name in torch._C._dispatch_get_registrations_for_dispatch_key(key)
            if name.startswith("isnet_kernels::")}


def test_every_operator_has_a_cuda_kernel(extension) -> None:
    cuda_ops = _registered("CUDA")
    assert cuda_ops == {f"isnet_kernels::{name}" for name in cpp.OPS}
    assert cuda_ops == _registered("CPU")


@pytest.mark.parametrize("name", cpp.OPS)
def test_schema_lists_the_operator(extension, name: str) -> None:
    schema = str(getattr(torch.ops.isnet_kernels, name).default._schema)
    assert schema.startswith(f"isnet_kernels::{name}(")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"isnet_kernels::{name}", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"isnet_kernels::{name}", "CPU")


def test_without_a_gpu_the_backend_says_why(extension) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the backend is available here")
    ok, why = cuda.available()
    assert not ok and "no CUDA device" in why
