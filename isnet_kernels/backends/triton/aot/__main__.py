"""``python -m isnet_kernels.backends.triton.aot``: compile every Triton kernel for sm_80 and sm_90 without a GPU,
write the table to ``benchmarks/results/aot/`` and exit non-zero when a variant fails (see
:mod:`isnet_kernels.backends.triton.aot`).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # before any kernel module is imported

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from . import build, capture, report, workload  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m isnet_kernels.backends.triton.aot", description=__doc__)
    p.add_argument("--targets", default="80,90", help="compute capabilities, comma-separated (default 80,90)")
    p.add_argument("--models", default=",".join(workload.MODELS), help="models whose layer shapes drive the launchers")
    p.add_argument("--dtypes", default=",".join(workload.DTYPES), help="dtype labels: " + ", ".join(workload.DTYPES))
    p.add_argument("--kernel", action="append", default=None, help="only this kernel (repeatable), e.g. "
                   "_conv_epsilon_backward_kernel")
    p.add_argument("--limit", type=int, default=None, help="only the first N requests per target (a quick slice)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: CPU count)")
    p.add_argument("--cache", default=os.environ.get("ISNET_KERNELS_AOT_CACHE",
                                                     str(Path.home() / ".cache" / "isnet_kernels" / "aot")),
                   help="content-hash cache of compile results and Triton's cache ($ISNET_KERNELS_AOT_CACHE)")
    p.add_argument("--out", default="benchmarks/results/aot", help="folder for compile.md and compile.json")
    return p


def record(capability: int, models: list[str], dtypes: list[str]) -> list[capture.Request]:
    """Run the launchers under the stand-in driver for ``sm_<capability>``; the distinct compile requests."""
    recorder = capture.Recorder(capability)
    recorder.install()
    capture.reset_kernels()
    saved = torch.backends.cuda.matmul.fp32_precision
    try:
        for launch, precision in workload.launches(models, dtypes):
            torch.backends.cuda.matmul.fp32_precision = precision or "ieee"
            recorder.label = dict(launcher=launch.launcher, model=launch.model, layer=launch.layer,
                                  dtype=launch.dtype)
            launch.run()
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved
        recorder.uninstall()
        capture.reset_kernels()
    return list(recorder.requests.values())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    targets = [int(t) for t in args.targets.split(",")]
    models, dtypes = args.models.split(","), args.dtypes.split(",")
    unknown = [t for t in targets if t not in capture.SHARED_MEMORY_LIMIT]
    if unknown:
        raise SystemExit(f"unknown target(s) {unknown}: choose from {sorted(capture.SHARED_MEMORY_LIMIT)}")
    os.environ.setdefault("TRITON_CACHE_DIR", str(Path(args.cache, "triton")))
    start = time.perf_counter()
    jobs = []
    for cc in targets:
        requests = record(cc, models, dtypes)
        if args.kernel:
            requests = [r for r in requests if r.kernel in args.kernel]
        jobs += [(r, cc) for r in requests[:args.limit]]
    print(f"aot: {len(jobs)} variants to compile for {', '.join(f'sm_{t}' for t in targets)} "
          f"({time.perf_counter() - start:.1f}s recording)", flush=True)
    rows = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = [pool.submit(build.compile_request, r.module, r.kernel, r.specialization, cc, args.cache)
                   for r, cc in jobs]
        for i, ((request, cc), future) in enumerate(zip(jobs, futures)):
            rows.append(report.row(request, cc, future.result()))
            if (i + 1) % 50 == 0 or i + 1 == len(jobs):
                print(f"aot: {i + 1}/{len(jobs)} compiled ({time.perf_counter() - start:.0f}s)", flush=True)
    meta = dict(models=models, dtypes=dtypes, batch=workload.BATCH, targets=[f"sm_{t}" for t in targets],
                cached=sum(bool(r.get("cached")) for r in rows), wall_s=round(time.perf_counter() - start, 1))
    json_path, md_path = report.write(rows, Path(args.out), meta)
    failed = [r for r in rows if r["problems"]]
    for r in failed[:20]:
        print(f"aot: FAIL {r['kernel']} sm_{r['target']} {r['variant']} {r['tile']} w{r['num_warps']} "
              f"s{r['num_stages']} {r['dtypes']}: {'; '.join(r['problems'])}", file=sys.stderr)
    print(f"aot: {len(rows)} variants, {len(failed)} failing, {meta['cached']} from the cache, "
          f"{meta['wall_s']}s; {md_path}, {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
