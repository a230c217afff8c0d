"""The compile check's table (markdown and JSON) and its verdict."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from .capture import SHARED_MEMORY_LIMIT

#: Constexprs that name the tile (the rest name the variant: geometry, branch, dtype, flags).
TILE_KEYS = ("BLOCK_P", "BLOCK_CI", "BLOCK_CO", "BLOCK_K", "BLOCK_SIZE", "BLOCK_O", "BLOCK_J")
#: ``tl.dot`` needs 16 along K for a tensor-core (or FMA) product that counts each term once.
MIN_DOT_K = 16


def problems(row: dict) -> list[str]:
    """Why a compiled variant fails the check: empty when it passes."""
    if not row["ok"]:
        return ["compile error"]
    found = []
    limit = SHARED_MEMORY_LIMIT[row["target"]]
    if row["shared"] > limit:
        found.append(f"shared memory {row['shared']} > {limit}")
    if (row.get("spill_stores") or 0) or (row.get("spill_loads") or 0):
        found.append(f"spills {row['spill_stores']}/{row['spill_loads']} bytes")
    if row.get("registers") is None:
        found.append("no ptxas figures")
    short = [k for k in row.get("dot_k", []) if k < MIN_DOT_K]
    if short:
        found.append(f"tt.dot with K = {short}")
    return found


def row(request, target: int, figures: dict) -> dict:
    """One table row: a request's kernel, variant, tile, dtypes and where it is used, with its figures."""
    constexprs = request.constexprs
    tile = {k: v for k, v in constexprs.items() if k in TILE_KEYS}
    variant = {k: v for k, v in constexprs.items() if k not in TILE_KEYS}
    labels = request.labels
    out = dict(kernel=request.kernel, variant=variant, tile=tile, num_warps=request.num_warps,
               num_stages=request.num_stages, dtypes=sorted({label["dtype"] for label in labels}),
               launchers=sorted({label["launcher"] for label in labels}),
               models=sorted({label["model"] for label in labels}),
               layers=sorted({label["layer"] for label in labels})[:6], target=target,
               **{k: v for k, v in figures.items() if k not in ("ttir", "ttgir", "ptx", "num_warps", "num_stages")})
    out["problems"] = problems(out)
    return out


def _tile_text(r: dict) -> str:
    tile = "x".join(str(v) for v in r["tile"].values())
    return f"{tile} w{r['num_warps']} s{r['num_stages']}"


_FLAGS = ("USE_DOT", "KEEP_C", "TWO_SIGNS", "HAS_C", "GRAD_A", "ADAPTIVE", "COUNT_PAD")


def _variant_text(r: dict) -> str:
    """The variant's flags, its tl.dot precision, and the integer arguments Triton specialised as 1 (``M=1``)."""
    v = r["variant"]
    parts = [flag.lower() for flag in _FLAGS if v.get(flag) is True]
    if v.get("USE_DOT"):
        parts.append(v["INPUT_PRECISION"])
    parts += [f"{k}=1" for k, value in v.items() if value == 1 and not isinstance(value, bool) and k not in _FLAGS]
    return " ".join(parts) or "-"


def summary(rows: list[dict]) -> dict:
    """Counts per target: variants, failures by kind, tensor-core instructions, and the slowest compile."""
    out = {}
    for target in sorted({r["target"] for r in rows}):
        mine = [r for r in rows if r["target"] == target]
        ok = [r for r in mine if r["ok"]]
        out[f"sm_{target}"] = dict(
            variants=len(mine), kernels=len({r["kernel"] for r in mine}), compile_errors=len(mine) - len(ok),
            shared_over_limit=sum(r["shared"] > SHARED_MEMORY_LIMIT[target] for r in ok),
            spilling=sum(bool(r.get("spill_stores") or r.get("spill_loads")) for r in ok),
            short_k_dots=sum(any(k < MIN_DOT_K for k in r.get("dot_k", [])) for r in ok),
            max_registers=max((r["registers"] or 0 for r in ok), default=0),
            max_shared=max((r["shared"] for r in ok), default=0),
            mma={kind: sum(r.get("mma") == kind for r in ok) for kind in ("wgmma", "mma", "none")},
        )
    return out


def write(rows: list[dict], out_dir: Path, meta: dict) -> tuple[Path, Path]:
    """``compile.json`` (every row, the summary, versions) and ``compile.md`` (the summary, then one line per
    variant, failures first) in ``out_dir``."""
    import torch
    import triton

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (not r["problems"], r["kernel"], r["target"], _variant_text(r), _tile_text(r),
                                       r["dtypes"]))
    meta = dict(meta, triton=triton.__version__, torch=torch.__version__, python=platform.python_version(),
                shared_memory_limit={f"sm_{k}": v for k, v in SHARED_MEMORY_LIMIT.items()})
    stats = summary(rows)
    json_path, md_path = out_dir / "compile.json", out_dir / "compile.md"
    json_path.write_text(json.dumps(dict(meta=meta, summary=stats, rows=rows), indent=1, default=str) + "\n")
    lines = ["# Ahead-of-time compile of the Triton kernels", "",
             f"`python -m isnet_kernels.backends.triton.aot` (triton {meta['triton']}, torch {meta['torch']}): every "
             "kernel x every configuration its launcher can pick x dtype, over the layer shapes of "
             f"{', '.join(meta['models'])} at 224x224, batch {meta['batch']}, for {', '.join(stats)}. "
             "Registers, spills and stack from `ptxas -v`, shared memory from the kernel's metadata, the tensor-core "
             "instruction from the PTX, the `tt.dot` reduction lengths (K) from the TTIR. A variant fails on a "
             "compile error, shared memory over the limit "
             f"({', '.join(f'{k}: {v // 1024} KiB' for k, v in meta['shared_memory_limit'].items())}), a spill, or "
             f"a `tt.dot` with K < {MIN_DOT_K}.", "",
             "| target | kernels | variants | compile errors | over shared memory | spilling | short-K dots | "
             "max registers | max shared (KiB) | wgmma / mma / none |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for target, s in stats.items():
        lines.append(f"| {target} | {s['kernels']} | {s['variants']} | {s['compile_errors']} | "
                     f"{s['shared_over_limit']} | {s['spilling']} | {s['short_k_dots']} | {s['max_registers']} | "
                     f"{s['max_shared'] / 1024:.1f} | {s['mma']['wgmma']} / {s['mma']['mma']} / {s['mma']['none']} |")
    lines += ["", "| kernel | variant | tile (w warps, s stages) | dtypes | target | registers | spill st/ld | "
              "shared (KiB) | tensor cores | dot K | status | launchers |", "|---" * 12 + "|"]
    for r in rows:
        status = "; ".join(r["problems"]) or "ok"
        head = f"| {r['kernel'].lstrip('_')} | {_variant_text(r)} | {_tile_text(r)} | {', '.join(r['dtypes'])} "
        if r["ok"]:
            dot_k = ",".join(map(str, r["dot_k"])) or "-"
            lines.append(f"{head}| sm_{r['target']} | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                         f"{r['shared'] / 1024:.1f} | {r['mma']} | {dot_k} | {status} | {', '.join(r['launchers'])} |")
        else:
            lines.append(f"{head}| sm_{r['target']} | - | - | - | - | - | {status}: {r['error'][:200]} | "
                         f"{', '.join(r['launchers'])} |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
