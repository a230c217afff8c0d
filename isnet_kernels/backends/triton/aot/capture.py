"""A stand-in Triton driver reporting a CUDA target, and a pre-compile hook recording each compile request."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch

from ....errors import StateError

#: Shared memory a block may use (the opt-in maximum), by compute capability: A100 (sm_80) 163 KiB, H100 227 KiB.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def ensure_compiled_mode() -> None:
    """Unset ``TRITON_INTERPRET`` (kernels must be defined as compiled functions); raise if a kernel module was
    imported already under the interpreter."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    triton.knobs.runtime.interpret = False
    utils = sys.modules.get("isnet_kernels.backends.triton.utils")
    if utils is not None and not isinstance(utils.stabilize, triton.runtime.jit.JITFunction):
        raise StateError("isnet_kernels.backends.triton was imported with TRITON_INTERPRET=1; run the compile check "
                         "in a fresh process without it")


@dataclass
class Request:
    """One compile request: the kernel, Triton's serialised specialisation, and where the launchers asked for it."""

    kernel: str
    module: str
    specialization: str  # Triton's serialize_specialization_data JSON
    num_warps: int
    num_stages: int
    constexprs: dict
    labels: list[dict] = field(default_factory=list)


class _StandInDriver:
    """Enough of a Triton driver for the launchers to bind, specialise and autotune without a GPU."""

    def __init__(self, capability: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **kwargs):
            kernel_call()  # the hook records the configuration's compile request
            return [1.0, 1.0, 1.0] if quantiles else 1.0

        return bench


class Recorder:
    """Install with :meth:`install`; :attr:`requests` maps Triton's cache key to a :class:`Request`.
    :attr:`label` is attached to every request made while it is set (launcher, model, layer, dtype)."""

    def __init__(self, capability: int) -> None:
        self.capability = capability
        self.requests: dict[str, Request] = {}
        self.label: dict = {}

    def _hook(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled) -> bool:
        request = self.requests.get(str(key))
        if request is None:
            jit = fn.jit_function
            names = [p.name for p in jit.params]
            constexprs = {names[path[0]]: _plain(value) for path, value in compile["constants"].items()}
            request = Request(kernel=fn.name, module=fn.module, specialization=compile["specialization_data"],
                              num_warps=compile["num_warps"], num_stages=compile["num_stages"], constexprs=constexprs)
            self.requests[str(key)] = request
        if self.label not in request.labels:
            request.labels.append(dict(self.label))
        return True  # skip the compile and the launch

    def install(self) -> None:
        import triton
        from triton.runtime.driver import driver

        ensure_compiled_mode()
        self._previous = driver._active  # None until a driver was needed
        driver.set_active(_StandInDriver(self.capability))
        triton.knobs.runtime.jit_cache_hook = self._hook

    def uninstall(self) -> None:
        import triton
        from triton.runtime.driver import driver

        triton.knobs.runtime.jit_cache_hook = None
        driver._active = self._previous


def _plain(value):
    """A constexpr as JSON: numbers, strings and booleans as they are, dtypes by name."""
    value = getattr(value, "value", value)
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def kernel_objects() -> list:
    """Every Triton kernel object of the package's kernel modules: JIT functions and their autotuners."""
    import triton

    from .. import conv, elementwise, pool

    found = []
    for module in (conv, elementwise, pool):
        for value in vars(module).values():
            for obj in (value.values() if isinstance(value, dict) else (value,)):
                if isinstance(obj, (triton.runtime.jit.JITFunction, triton.runtime.autotuner.Autotuner)):
                    found.append(obj)
    return found


def reset_kernels() -> None:
    """Forget every binder, compiled kernel and autotuning result, so a new target records all its requests."""
    import triton

    for obj in kernel_objects():
        if isinstance(obj, triton.runtime.autotuner.Autotuner):
            obj.cache.clear()
        else:
            obj.device_caches.clear()
