"""Compile one recorded request for a CUDA target and read the compiler's figures; results cached by content."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

#: Incremented when the figures read from a compile change, so cached results are not reused.
FIGURES_VERSION = 2


def _jit_function(module: str, name: str):
    import triton

    obj = getattr(importlib.import_module(module), name)
    while not isinstance(obj, triton.runtime.jit.JITFunction):
        obj = obj.fn
    return obj


def cache_key(module: str, kernel: str, specialization: str, capability: int) -> str:
    """A content hash of the request: the kernel's source (and the functions it calls), Triton's specialisation
    (signature, constexprs, attributes, options), the target, Triton's version and :data:`FIGURES_VERSION`."""
    import triton

    data = json.loads(specialization)
    data.pop("key", None)
    data.pop("target", None)
    text = json.dumps([_jit_function(module, kernel).cache_key, data, capability, triton.__version__,
                       FIGURES_VERSION], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _decode_constant(value):
    import triton.language as tl

    if isinstance(value, str) and tl.dtype.is_dtype(value):
        return tl.dtype(value)
    if isinstance(value, dict) and "constexpr" in value:
        return tl.constexpr(value["constexpr"])
    if isinstance(value, dict) and "jit_function" in value:
        module, name = value["jit_function"].split(":")
        return _jit_function(module, name)
    return value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _ptxas_figures(log: str) -> dict:
    figures = {}
    m = re.search(r"Used (\d+) registers", log)
    figures["registers"] = int(m.group(1)) if m else None
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    figures["stack"], figures["spill_stores"], figures["spill_loads"] = map(int, m.groups()) if m else (None,) * 3
    return figures


def _run_ptxas(ptx: str, capability: int) -> str:
    """``ptxas -v`` (Triton's own binary, Triton's flags) on ``ptx``; its log."""
    from triton import knobs

    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        done = subprocess.run([knobs.nvidia.ptxas.path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={arch}", str(src), "-o", str(Path(tmp, "kernel.cubin"))],
                              capture_output=True, text=True)
    return done.stderr + done.stdout


def dot_reductions(ir: str) -> list[int]:
    """The reduction length K of every ``tt.dot`` / ``ttng.warp_group_dot`` in a TTIR or TTGIR module: the last
    dimension of its first operand's type (``tensor<MxKx...>``). The TTIR holds every dot, the ones Triton's
    combine pass made from a broadcast multiply and sum included (the TTGIR lowers IEEE float32 dots to FMAs)."""
    ks = []
    for line in ir.splitlines():
        if re.search(r"\b(tt\.dot|ttng\.warp_group_dot)\b", line) and " : " in line:
            m = re.search(r":\s*(?:!ttg\.memdesc|tensor)<(\d+)x(\d+)x", line.split(" : ", 1)[1])
            if m:
                ks.append(int(m.group(2)))
    return ks


def tensor_core_instruction(ptx: str) -> str:
    """``"wgmma"`` (Hopper warp-group MMA), ``"mma"`` (``mma.sync``) or ``"none"``, from the PTX."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync\b", ptx):
        return "mma"
    return "none"


def compile_request(module: str, kernel: str, specialization: str, capability: int, cache_dir: str | None,
                    keep_ir: bool = False) -> dict:
    """Compile a request for ``sm_<capability>``; the figures as a dict (``ok``, ``error`` on failure).

    Reuses ``<cache_dir>/figures/<hash>.json`` when present; ``keep_ir`` adds the TTGIR and PTX to the result
    (not cached).
    """
    from .capture import ensure_compiled_mode

    ensure_compiled_mode()
    key = cache_key(module, kernel, specialization, capability)
    cached = Path(cache_dir, "figures", f"{key}.json") if cache_dir else None
    if cached is not None and cached.exists() and not keep_ir:
        return dict(json.loads(cached.read_text()), cached=True)

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    data = json.loads(specialization)
    fn = _jit_function(module, kernel)
    signature = {name: _tuples(v) for name, v in data["signature"].items()}
    constexprs = {tuple(k): _decode_constant(v) for k, v in zip(data["constant_keys"], data["constant_vals"])}
    attrs = {tuple(k): v for k, v in zip(data["attrs_keys"], data["attrs_vals"])}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in data["options"].items()}
    options.pop("arch", None)  # derived from the target
    result: dict = {"key": key}
    start = time.perf_counter()
    log = io.StringIO()
    try:
        triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints its own ptxas -v log when it runs ptxas
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", capability, 32), options=options)
    except Exception as exc:  # noqa: BLE001 - every compile error is a finding, reported in the table
        result.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[-3000:]}",
                      traceback=traceback.format_exc()[-4000:])
    else:
        ptx, ttir, ttgir = compiled.asm["ptx"], compiled.asm["ttir"], compiled.asm["ttgir"]
        ptxas_log = log.getvalue() if "Used" in log.getvalue() else _run_ptxas(ptx, capability)
        result.update(ok=True, shared=compiled.metadata.shared, num_warps=compiled.metadata.num_warps,
                      num_stages=compiled.metadata.num_stages, mma=tensor_core_instruction(ptx),
                      dot_k=sorted(set(dot_reductions(ttir))), **_ptxas_figures(ptxas_log))
        if keep_ir:
            result.update(ttir=ttir, ttgir=ttgir, ptx=ptx)
    result["compile_s"] = round(time.perf_counter() - start, 2)
    if cached is not None and not keep_ir:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(cached)
    return result
