"""Where the memory of a selective ISNet training step goes: the tensors autograd keeps for the backward, by phase.

For one model (``stepmem.py``'s configurations, batch ``--batch``, default 2: every figure is linear in the batch,
so the table gives MiB per image), one ISNet step (``ISNet(model, memory=...)``, default preset, ``ISNetLoss``) is
run under ``torch.autograd.graph.saved_tensors_hooks`` whose pack hook records every tensor saved for the backward
and the phase that saved it:

* ``forward``: the model's forward (autograd's own saves: layer inputs, BatchNorm inputs, ReLU outputs, ...);
* ``kept for the relevance pass``: the tensors of ``ForwardState.saved`` that the forward's autograd does not also
  keep (e.g. a ``Conv2d``'s bias-free output when the next BatchNorm's input is a different tensor);
* one row per relevance-step kind (``conv (+BN)``, ``linear``, ``residual add``, ...): what its ops save, split
  into tensors of the forward (already counted, no new memory), relevance tensors passed between steps (the
  ``R`` each op reads), and the op's own intermediates (stabilised pre-activations ``z``, ``c = W^T s``, the
  relevance scaled by ``gamma / sigma``, recomputed BatchNorm statistics);
* ``deep supervision``: the relevance captured at the supervised layers (kept as outputs for the loss);
* ``loss``: what ``ISNetLoss`` saves.

Each storage is counted once, in the first phase that saves it. The sum is the memory the graph holds when the
backward starts (the parameters, their gradients and the backward's temporaries not included): the step's peak
minus those. (``tracemalloc`` does not see tensor memory; the hooks see every saved tensor.)

Usage: ``python benchmarks/memwhere.py [--models resnet50 convnext_tiny vit_b_16] [--batch 2] [--memory default]``
prints a markdown table (MiB per image).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _kind(step) -> str:
    """A short name of a relevance step's kind."""
    name = type(step).__name__
    if name == "LinearBlock":
        return ("conv" if step.is_conv else "linear") + (" + BN" if step.bn is not None else "")
    return {"AddStep": "residual add", "PassStep": "pass-through", "ReshapeStep": "reshape"}.get(name, name)


def analyse(model_name: str, batch: int, memory: str) -> dict[str, dict[str, float]]:
    """MiB per image saved for the backward, by phase and kind of tensor (module docstring)."""
    import stepmem
    import torch

    from isnet_kernels import ISNet, ISNetLoss

    torch.set_num_threads(1)
    stepmem.BATCH = batch
    model, x, y, masks = stepmem.build(model_name)
    isnet = ISNet(model, "selective", memory=memory).train()
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen: set[int] = set()
    forward: set[int] = set()
    passed: set[int] = set()
    phase = ["forward"]

    def key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def nbytes(t: torch.Tensor) -> float:
        return t.untyped_storage().nbytes() / 2**20 / batch

    params = {key(p) for p in model.parameters()}
    shared_in: set[tuple[str, int]] = set()

    def pack(t: torch.Tensor):
        k, where = key(t), phase[0]
        if k in params:  # the weights: kept anyway
            return t
        if k in forward and where != "forward":  # a forward tensor read again: no new memory
            if (where, k) not in shared_in:
                shared_in.add((where, k))
                table[where]["forward tensors"] += nbytes(t)
            return t
        if k in seen:
            return t
        seen.add(k)
        if where == "forward":
            forward.add(k)
            table["forward (autograd)"]["new"] += nbytes(t)
        elif k in passed:
            table[where]["relevance R"] += nbytes(t)
        else:
            table[where]["intermediates"] += nbytes(t)
        return t

    plain: dict[int, int] = {}

    def pack_plain(t: torch.Tensor):
        if key(t) not in params:
            plain[key(t)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_plain, lambda t: t):  # the plain step, for comparison
        logits = model(x)
    table["plain step's forward (autograd), for comparison"]["new"] = sum(plain.values()) / 2**20 / batch
    del logits
    program = isnet.lrp.program
    originals = {}
    for step in program.steps:
        if hasattr(step, "relevance") and hasattr(step, "inputs"):
            originals[step] = step.relevance

            def wrapped(R, saved, cfg, step=step, fn=step.relevance):
                phase[0] = _kind(step)
                out = fn(R, saved, cfg)
                for part in out:
                    if isinstance(part, torch.Tensor):
                        passed.add(key(part))
                return out

            step.relevance = wrapped
    lrp_forward = isnet.lrp.forward

    def forward_tracked(inp):
        phase[0] = "forward"
        logits, state = lrp_forward(inp)
        from isnet_kernels.lrp.chunking import _tensors

        for t in _tensors(state.saved):
            k = key(t)
            if k not in seen and k not in params:
                seen.add(k)
                forward.add(k)
                table["kept for the relevance pass"]["new"] += nbytes(t)
        phase[0] = "output rule"
        return logits, state

    isnet.lrp.forward = forward_tracked
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = isnet(x, y)
            for level in out.intermediate.values():  # kept as outputs; most are also an R a step saved
                k = key(level)
                table["deep supervision (captured R)"]["shared" if k in seen else "relevance R"] += nbytes(level)
                seen.add(k)
            phase[0] = "loss"
            loss = ISNetLoss()(out, y, masks).total
        loss.backward()
    finally:
        for step, fn in originals.items():
            step.relevance = fn
        isnet.lrp.forward = lrp_forward
    return {k: dict(v) for k, v in table.items()}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def timeline(model_name: str, batch: int, memory: str) -> dict[str, float]:
    """Resident memory (MiB, whole batch) through one ISNet step (after a warm-up step), sampled every 2 ms by a
    thread, split at the moment the backward of the relevance pass is done (the gradient reaching the logits
    layer's input, where the classifier's own backward takes over): the peak before it (forward, relevance pass,
    loss, relevance backward), the memory at that moment, and the peak after it (the classifier's backward). All
    relative to the memory before the step. Run with ``MALLOC_MMAP_THRESHOLD_=65536`` (``stepmem.MALLOC_ENV``)."""
    import threading
    import time

    import stepmem
    import torch

    from isnet_kernels import ISNet, ISNetLoss

    torch.set_num_threads(1)
    stepmem.BATCH = batch
    model, x, y, masks = stepmem.build(model_name)
    isnet = ISNet(model, "selective", memory=memory).train()
    criterion = ISNetLoss()
    lrp_forward = isnet.lrp.forward
    marks: dict[str, float] = {}

    def forward_marked(inp):
        logits, state = lrp_forward(inp)
        head = state.program.logits_step
        a = state.saved[head.name][0]
        def mark(grad):
            marks.setdefault("relevance_backward_done", time.perf_counter())

        a.register_hook(mark)
        return logits, state

    isnet.lrp.forward = forward_marked

    def step() -> None:
        model.zero_grad(set_to_none=True)
        criterion(isnet(x, y), y, masks).total.backward()

    step()
    model.zero_grad(set_to_none=True)
    gc.collect()
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), _rss_mib()))
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    before = _rss_mib()
    marks.clear()
    thread.start()
    marks["start"] = time.perf_counter()
    out = isnet(x, y)
    loss = criterion(out, y, masks).total
    marks["backward_start"] = time.perf_counter()
    del out
    loss.backward()
    marks["end"] = time.perf_counter()
    stop.set()
    thread.join()
    split = marks["relevance_backward_done"]
    first = [m for t, m in samples if t <= split] or [before]
    second = [m for t, m in samples if t > split] or [before]
    at_backward = [m for t, m in samples if t <= marks["backward_start"]] or [before]
    return {"before_mib": before, "peak_to_backward": max(at_backward) - before,
            "peak_relevance_backward": max(first) - before, "at_relevance_backward_done": first[-1] - before,
            "peak_classifier_backward": max(second) - before, "samples": len(samples)}


def markdown(results: dict[str, dict[str, dict[str, float]]]) -> str:
    cols = ("new", "forward tensors", "relevance R", "intermediates", "shared")
    lines = []
    for model, table in results.items():
        lines += [f"**{model}** (MiB per image; `forward tensors` and `shared`: counted before, not new memory)", "",
                  "| phase | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
        total = 0.0
        for phase, parts in table.items():
            if not phase.startswith("plain"):
                total += sum(v for k, v in parts.items() if k not in ("forward tensors", "shared"))
            lines.append(f"| {phase} | " + " | ".join(f"{parts.get(c, 0.0):.1f}" for c in cols) + " |")
        lines += [f"| **total new** | {total:.1f} | | | | |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "convnext_tiny", "vit_b_16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--memory", default="default", choices=("default", "low"))
    parser.add_argument("--timeline", action="store_true", help="resident memory through the step instead")
    args = parser.parse_args()
    if args.timeline:
        for m in args.models:
            print(m, args.memory, timeline(m, args.batch, args.memory))
        return
    print(markdown({m: analyse(m, args.batch, args.memory) for m in args.models}))


if __name__ == "__main__":
    main()
