"""The relevance pass in chunks of the map axis (``LRP.run(..., map_chunk=...)``), for many maps per image: the
original ISNet at large class counts.

The original variant explains every logit: M = K maps per image. Autograd keeps, for the backward, every
relevance tensor of the pass, M times the size of the forward's activations, so the memory of one training step
grows with K (about 30 GiB for a ResNet-18 at 64x64, batch 16, K = 1000). :func:`chunked_relevance` runs the
pass on chunks of ``chunk`` maps, each under activation checkpointing (``torch.utils.checkpoint``,
``use_reentrant=False``): a chunk's relevance tensors are freed as soon as its maps are computed, and the backward
rebuilds them, one chunk at a time, from the forward's state (which every chunk shares and which is kept once).
The maps, their gradients and the step's arithmetic are those of one unchunked pass; the cost is one more
relevance pass (the recomputation), so a step with K maps costs about (3 + 4K) forwards instead of (3 + 3K)
(docs/kernels.md's cost model), still linear in K, and its memory is bounded by the chunk's instead of K's.

Chunk size (``map_chunk="auto"``): :func:`auto_map_chunk` divides a share of the memory available (``MemAvailable`` of
``/proc/meminfo`` on Linux CPUs, ``torch.cuda.mem_get_info`` on CUDA) by an estimate of one map's relevance
graph, :func:`bytes_per_map`. Without autograd (inference, ``torch.no_grad``) nothing is kept and the chunks only
bound the pass's transient tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..errors import InputError

#: The share of the available memory one chunk's relevance graph may take (the heatmaps, the loss on them, their
#: gradients and other processes need the rest).
MEMORY_SHARE = 0.25
#: Bytes autograd keeps per map, relative to the bytes of the forward's saved activations (per image batch):
#: the tensors saved for the backward of the relevance pass over the forward's saved tensors measured 0.8 to 0.9
#: (cpp backend) and 1.4 (reference) on ResNet-18 and SmallCNN, rounded up for the backward's gradient temporaries.
GRAPH_FACTOR = 2.5
#: The memory assumed available where it cannot be read (neither Linux nor CUDA).
FALLBACK_AVAILABLE = 2 * 2**30


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory available for new tensors on ``device``: free GPU memory on CUDA (``mem_get_info``),
    ``MemAvailable`` of ``/proc/meminfo`` on the CPU (Linux); None where neither can be read."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def saved_activation_bytes(saved: dict[str, Any], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct tensors the forward keeps for the relevance pass (``ForwardState.saved``), the
    tensors in ``exclude`` (the parameters) left out."""
    skip = {t.data_ptr() for t in exclude}
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in _tensors(saved):
        key = (t.data_ptr(), t.numel())
        if t.data_ptr() in skip or key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def bytes_per_map(saved: dict[str, Any], exclude: Iterable[Tensor] = ()) -> int:
    """The estimated bytes one map adds to a chunk's relevance graph: ``GRAPH_FACTOR`` times the forward's saved
    activations (each relevance tensor has the shape of an activation, per map)."""
    return max(1, int(GRAPH_FACTOR * saved_activation_bytes(saved, exclude)))


def auto_map_chunk(maps: int, per_map: int, device: torch.device, available: int | None = None) -> int:
    """The number of maps per chunk: ``MEMORY_SHARE`` of the available memory over ``per_map`` bytes, at least 1
    and at most ``maps`` (``maps``: no chunking)."""
    if available is None:
        available = available_memory(device)
    if available is None:
        available = FALLBACK_AVAILABLE
    return int(min(maps, max(1, (MEMORY_SHARE * available) // per_map)))


def check_map_chunk(map_chunk: int | None) -> int | None:
    """Validate ``ISNet(map_chunk=...)``: None (automatic) or a positive int."""
    if map_chunk is None:
        return None
    if isinstance(map_chunk, bool) or not isinstance(map_chunk, int) or map_chunk < 1:
        raise InputError(f"map_chunk must be a positive number of maps per chunk, or None to choose it from the "
                         f"memory available; got {map_chunk!r}")
    return map_chunk


RelevanceFn = Callable[[Tensor], tuple[Tensor, ...]]


def chunked_relevance(fn: RelevanceFn, targets: Tensor, chunk: int) -> tuple[Tensor, ...]:
    """``fn(targets)`` computed on chunks of ``chunk`` columns of ``targets`` (B, M) and concatenated along the map
    axis (1) of every output.

    ``fn`` maps targets (B, m) to a tuple of tensors (B, m, ...): the heatmaps and the relevance at the supervised
    layers. With ``chunk >= M`` it is one plain call. Otherwise, when autograd records, each chunk runs under
    non-reentrant activation checkpointing (module docstring): its outputs carry the gradient of a plain call.
    """
    M = targets.shape[1]
    if chunk >= M:
        return tuple(fn(targets))
    record = torch.is_grad_enabled()
    parts = []
    for start in range(0, M, chunk):
        t = targets[:, start:start + chunk]
        parts.append(tuple(checkpoint(fn, t, use_reentrant=False) if record else fn(t)))
    return tuple(torch.cat(group, 1) for group in zip(*parts))
