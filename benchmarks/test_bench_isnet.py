"""One ISNet training step per variant and class count K, against one plain classifier step (issue 4, item 5).

Model: torchvision's ``resnet18(num_classes=K)`` with a fixed random
initialisation, train mode (batch statistics), float32, a batch of ``BATCH`` = 16 images 64x64 uniform in [0, 1],
labels uniform in [0, K), ``torch.set_num_threads(2)``. One pytest-benchmark group per K; in each:

* ``plain``: ``optimizer.zero_grad(set_to_none=True)``, ``loss = cross_entropy(model(x), y)``,
  ``loss.backward()``, ``optimizer.step()``;
* ``<variant>(<backend>)`` for ``selective``, ``stochastic``, ``dual``, ``original``:
  ``optimizer.zero_grad(set_to_none=True)``, ``out = isnet(x, y)`` (``ISNet(model, variant, preset="paper",
  backend=...)``, the authors' settings, in train mode: the forward and the differentiable relevance pass, M = 1,
  1, 2, K maps per image),
  ``loss = ISNetLoss()(out, y, masks).total`` (defaults: P = 0.7, GWRP background term, hybrid foreground term),
  ``loss.backward()``, ``optimizer.step()``.

The optimiser is ``SGD(lr=1e-2, momentum=0.9)`` (the reference code's ResNet settings, without its gradient
clipping); every round is a real step, so the weights move from round to round as in training. The masks are a
fixed central foreground box: the inner half of the image's side, the same for every image. Eps 1e-2, Z^B with
bounds (0, 1) on the first layer (the ISNet defaults). The cost model of docs/kernels.md puts a step with M maps at
about (3 + 3M)F against 3F for the plain step: 2.0x at M = 1, 3.0x at M = 2, 11x for the original ISNet at K = 10 and
101x at K = 100.

The original variant explains every logit (M = K): unchunked, its relevance tensors at K = 1000 would need about
30 GiB for the backward at batch 16 (docs/performance.md). ``ISNet`` runs its relevance pass in checkpointed chunks of
the map axis (``map_chunk``, chosen from the memory available; :mod:`isnet_kernels.lrp.chunking`), so it runs at
K = 1000 within the machine's memory; ``map_chunk`` in the JSON is the chunk the step used (M: not chunked).

Peak memory (``BENCH_MEMORY=0`` skips it): after the timing, one fresh subprocess per variant and K (this file run
as a script, ``python benchmarks/test_bench_isnet.py VARIANT K BACKEND``) builds the same state, makes one warm-up
step, resets the kernel's peak-RSS counter and makes a second step; ``peak_extra_mib`` is that step's peak RSS
minus the RSS before the warm-up (``memprobe.py``'s method and glibc settings; on CUDA the allocator's peak).
``saved_mib`` is the bytes of the tensors autograd keeps for the backward during the measured step (distinct
storages, parameters excluded): the relevance tensors and the forward's activations (a checkpointed chunk's
relevance tensors are not kept: the backward rebuilds them one chunk at a time, within the peak).
For the slow steps (more than 10 maps per image) ``BENCH_ISNET_SLOW_WARMUP=0`` skips the warm-up step, of the
timing and of the probe (whose peak then also holds the first step's gradient and momentum buffers, about twice
the parameters' bytes, and library initialisation: an upper bound); ``probe_warmup`` in the JSON records it.
``BENCH_ISNET_INLINE_MEMORY=1`` measures the slow steps' memory in the timed rounds themselves instead of in a
probe process (same fields, ``"memory_measured": "inline"``; before each round, outside the timing: a garbage
collection, the RSS read and the peak counter reset), so that a step of many minutes runs once, not twice;
run the process with ``memprobe.MALLOC_ENV`` in the environment for the same glibc settings.

Environment: ``BENCH_ISNET_ROUNDS`` (timed rounds, default 5), ``BENCH_ISNET_SLOW_ROUNDS`` (rounds of the steps
with more than 10 maps per image, i.e. the original variant at K >= 100; default 1), ``BENCH_ISNET_CLASSES``
(default ``10,100,1000``), ``BENCH_ISNET_VARIANTS`` (default ``plain,selective,stochastic,dual,original``; a
name ending in ``-live``, e.g. ``selective-live``, runs that variant with ``batch_stats="live"``),
``BENCH_ISNET_ORIGINAL_MAX_K`` (default 1000: the original variant is skipped above it, for time: a step at K
maps costs about K + 1 plain steps), ``BENCH_ISNET_MAP_CHUNK`` (default: automatic), ``BENCH_ISNET_SLOW_WARMUP``
(default 1), ``BENCH_ISNET_BACKENDS`` (default: the device's fused backend,
``cpp`` on CPU / ``triton`` on CUDA, else ``reference``; e.g. ``reference,cpp`` for both), ``BENCH_MEMORY``,
``BENCH_DEVICE``. Every step is warmed up once (program compilation, oneDNN primitives) before its timed rounds.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bench_common as bc
import memprobe
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import isnet_kernels

ROUNDS = int(os.environ.get("BENCH_ISNET_ROUNDS", "5"))
SLOW_ROUNDS = int(os.environ.get("BENCH_ISNET_SLOW_ROUNDS", "1"))
SLOW_MAPS = 10  # steps with more maps per image than this run SLOW_ROUNDS rounds
CLASSES = [int(k) for k in os.environ.get("BENCH_ISNET_CLASSES", "10,100,1000").split(",") if k]
VARIANTS = [v for v in os.environ.get("BENCH_ISNET_VARIANTS", "plain,selective,stochastic,dual,original").split(",")
            if v]
ORIGINAL_MAX_K = int(os.environ.get("BENCH_ISNET_ORIGINAL_MAX_K", "1000"))
MAP_CHUNK = int(os.environ["BENCH_ISNET_MAP_CHUNK"]) if os.environ.get("BENCH_ISNET_MAP_CHUNK") else None
SLOW_WARMUP = int(os.environ.get("BENCH_ISNET_SLOW_WARMUP", "1"))
INLINE_MEMORY = os.environ.get("BENCH_ISNET_INLINE_MEMORY", "0") == "1"
MEMORY = os.environ.get("BENCH_MEMORY", "1") != "0"
LR, MOMENTUM = 1e-2, 0.9
PROBE_TIMEOUT_S = 3600.0


def isnet_backends() -> list[str]:
    """``$BENCH_ISNET_BACKENDS``, else the device's fused backend if it runs, else the reference."""
    env = os.environ.get("BENCH_ISNET_BACKENDS")
    if env:
        return [b for b in env.split(",") if b]
    fused = bc.FUSED.get(bc.DEVICE.type)
    return [fused] if fused and bc.backend_available(fused) else ["reference"]


def method_name(variant: str, backend: str | None) -> str:
    return "plain" if variant == "plain" else f"{variant}({backend})"


def _cases() -> list[tuple[int, str, str | None]]:
    cases = []
    for K in CLASSES:
        for variant in VARIANTS:
            if variant == "plain":
                cases.append((K, variant, None))
            else:
                cases += [(K, variant, b) for b in isnet_backends()]
    return cases


def make_inputs(K: int) -> tuple[Tensor, Tensor, Tensor]:
    """The batch (bench_common's images), labels in [0, K) and the foreground masks (B, 1, H, W): 1 inside the
    central box of half the image's side."""
    x, _ = bc.make_inputs()
    y = torch.randint(0, K, (bc.BATCH,), generator=torch.Generator().manual_seed(2)).to(bc.DEVICE)
    masks = torch.zeros(bc.BATCH, 1, bc.SIZE, bc.SIZE, device=bc.DEVICE)
    lo, hi = bc.SIZE // 4, bc.SIZE - bc.SIZE // 4
    masks[..., lo:hi, lo:hi] = 1
    return x, y, masks


def make_step(variant: str, K: int, backend: str | None
              ) -> tuple[Callable[[], tuple[Tensor, int]], list[Tensor], isnet_kernels.ISNet | None]:
    """A fresh model and optimiser: a no-argument function making one training step (it returns the loss, a 0-d
    tensor, and the maps per image it computed), the model's parameters and the ISNet (None for plain)."""
    torch.manual_seed(0)
    model = bc.import_torchvision().models.resnet18(num_classes=K).float().to(bc.DEVICE).train()
    x, y, masks = make_inputs(K)
    if variant == "plain":
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach(), 0

        return step, list(model.parameters()), None

    base = variant.removesuffix("-live")
    gen = torch.Generator(device=bc.DEVICE).manual_seed(0) if base == "stochastic" else None
    net = isnet_kernels.ISNet(model, base, preset="paper", eps=bc.EPS, bounds=bc.BOUNDS, generator=gen,
                              backend=backend, batch_stats="live" if variant.endswith("-live") else "detached",
                              map_chunk=MAP_CHUNK).train()
    criterion = isnet_kernels.ISNetLoss()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(x, y)
        loss = criterion(out, y, masks).total
        loss.backward()
        opt.step()
        return loss.detach(), out.heatmaps.shape[1]

    return step, list(model.parameters()), net


def mem_total_mib() -> float | None:
    """The memory the step's tensors live in: the GPU's on CUDA, else the machine's (``MemTotal``)."""
    if bc.DEVICE.type == "cuda":
        return torch.cuda.get_device_properties(bc.DEVICE).total_memory / 2.0**20
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.parametrize(("K", "variant", "backend"), _cases(),
                         ids=[f"K{k}-{method_name(v, b)}" for k, v, b in _cases()])
def test_isnet_step(benchmark, K: int, variant: str, backend: str | None) -> None:
    method = method_name(variant, backend)
    if variant.removesuffix("-live") == "original" and K > ORIGINAL_MAX_K:
        pytest.skip(f"original at K = {K} (M = {K} maps per image, a step of about {K + 1} plain steps) skipped for "
                    f"time; BENCH_ISNET_ORIGINAL_MAX_K={K} runs it")
    fn, _, net = make_step(variant, K, backend)
    M = 0 if net is None else net.maps_per_image or K
    benchmark.group = f"isnet K={K} (resnet18, B={bc.BATCH}, {bc.SIZE}x{bc.SIZE}, {bc.describe_device()})"
    benchmark.name = method
    benchmark.extra_info.update(suite="isnet", model="resnet18", classes=K, variant=variant, backend=backend,
                                method=method, maps=M, batch=bc.BATCH, image_size=bc.SIZE,
                                threads=torch.get_num_threads(), device=str(bc.DEVICE), mode="train",
                                optimizer=f"SGD(lr={LR}, momentum={MOMENTUM})", mem_total_mib=mem_total_mib())

    step = bc.timed(fn)
    slow = M > SLOW_MAPS
    rounds, warmup = (SLOW_ROUNDS, SLOW_WARMUP) if slow else (ROUNDS, 1)
    inline = _InlineMemory(step, list(net.parameters()) if net else []) if MEMORY and slow and INLINE_MEMORY else None
    loss, maps = benchmark.pedantic(inline or step, setup=inline.setup if inline else None, rounds=rounds,
                                    iterations=1, warmup_rounds=warmup)
    benchmark.extra_info.update(loss_last=float(loss), warmup_rounds=warmup,
                                map_chunk=None if net is None else net.last_map_chunk)
    assert maps == M and bool(torch.isfinite(loss))
    del step, fn, net
    gc.collect()

    if inline is not None:
        benchmark.extra_info.update({k: round(v, 2) if isinstance(v, float) else v for k, v in inline.result.items()})
    elif MEMORY:
        mem = run_probe(variant, K, backend, warmup=bool(warmup))
        benchmark.extra_info.update({k: round(v, 2) if isinstance(v, float) else v for k, v in mem.items()})


# --- peak memory, in a fresh process ---------------------------------------------------------------------------------
class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves for the backward (parameters excluded)."""

    def __init__(self, params) -> None:
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t


class _InlineMemory:
    """A timed step that also measures its peak memory and saved bytes (``BENCH_ISNET_INLINE_MEMORY``): ``setup``
    runs before each round, outside the timing; the last round's figures are in ``result``."""

    def __init__(self, step: Callable[[], tuple[Tensor, int]], params: list[Tensor]) -> None:
        self.step, self.params, self.result = step, params, {}
        self.loaded = 0

    def setup(self) -> None:
        gc.collect()
        if bc.DEVICE.type == "cuda":
            self.loaded = torch.cuda.memory_allocated(bc.DEVICE)
            torch.cuda.reset_peak_memory_stats(bc.DEVICE)
        else:
            self.loaded = memprobe._status_kib("VmRSS")
            memprobe._reset_peak()

    def __call__(self) -> tuple[Tensor, int]:
        counter = _SavedBytes(self.params)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            out = self.step()
        cuda = bc.DEVICE.type == "cuda"
        peak = torch.cuda.max_memory_allocated(bc.DEVICE) if cuda else memprobe._status_kib("VmHWM")
        mib = 2.0**20 if cuda else 1024.0
        self.result = {"peak_extra_mib": (peak - self.loaded) / mib, "loaded_rss_mib": self.loaded / mib,
                       "peak_rss_mib": peak / mib, "saved_mib": counter.bytes / 2.0**20, "memory_measured": "inline",
                       "memory": "cuda_allocated" if cuda else "rss"}
        return out


def probe(variant: str, K: int, backend: str | None, warmup: bool = True) -> dict[str, float | str | None]:
    """Build the step, warm up once (unless ``warmup`` is False), measure one step (in this process)."""
    torch.set_num_threads(bc.THREADS)
    cuda = bc.DEVICE.type == "cuda"
    if not cuda and not os.path.exists("/proc/self/status"):
        return dict.fromkeys(memprobe.FIELDS)
    fn, params, _ = make_step(variant, K, backend)
    step = bc.timed(fn)
    counter = _SavedBytes(params)
    mib = 2.0**20 if cuda else 1024.0
    gc.collect()
    loaded = torch.cuda.memory_allocated(bc.DEVICE) if cuda else memprobe._status_kib("VmRSS")
    if warmup:
        step()
    gc.collect()
    if cuda:
        before = torch.cuda.memory_allocated(bc.DEVICE)
        torch.cuda.reset_peak_memory_stats(bc.DEVICE)
    else:
        if not memprobe._reset_peak():
            return dict.fromkeys(memprobe.FIELDS)
        before = memprobe._status_kib("VmRSS")
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        step()
    peak = torch.cuda.max_memory_allocated(bc.DEVICE) if cuda else memprobe._status_kib("VmHWM")
    out = {"peak_extra_mib": (peak - loaded) / mib, "retained_mib": (before - loaded) / mib,
           "loaded_rss_mib": loaded / mib, "peak_rss_mib": peak / mib, "saved_mib": counter.bytes / 2.0**20,
           "probe_warmup": int(warmup)}
    if cuda:
        out["memory"] = "cuda_allocated"
    return out


def run_probe(variant: str, K: int, backend: str | None, warmup: bool = True) -> dict[str, float | str | None]:
    """:func:`probe` in a fresh interpreter with ``memprobe``'s glibc settings; ``{}`` if that fails."""
    env = {**os.environ, **memprobe.MALLOC_ENV}
    cmd = [sys.executable, str(Path(__file__).resolve()), variant, str(K), backend or "-", str(int(warmup))]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"isnet memory probe {variant} K={K} {backend} failed: {exc} {detail[-2000:]}", file=sys.stderr)
        return {}


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: python benchmarks/test_bench_isnet.py VARIANT K BACKEND [WARMUP]  (BACKEND '-' for plain; "
                 "WARMUP 0 measures the first step)")
    bc.import_torchvision()
    _variant, _K, _backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    _warmup = len(sys.argv) == 4 or sys.argv[4] != "0"
    print(json.dumps(probe(_variant, _K, None if _backend == "-" else _backend, _warmup)))
