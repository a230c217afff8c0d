"""The ahead-of-time compile check (isnet_kernels.backends.triton.aot) on a small slice, and the short-K evidence from
the compiler's IR: the CUDA-core convolution path holds no ``tt.dot`` (so no short-K dot) once compiled for sm_90.

The compile runs in a subprocess: the kernels must be defined with ``TRITON_INTERPRET`` unset, which the rest of
the suite sets. No GPU is needed (a stand-in driver reports the target).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("triton")


def _run(code: str, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_first_layer_backward_has_no_dot_on_sm90(tmp_path: Path) -> None:
    """An RGB first layer's epsilon backward (3 -> 64, 7x7/2) and a grayscale one (1 -> 16): the requests the
    launcher makes, compiled for sm_90, hold no tt.dot in TTIR and no mma/wgmma in PTX (rank-1 FMA updates)."""
    code = """
import json
from isnet_kernels.backends.triton.aot import build, capture
import torch
rec = capture.Recorder(90); rec.install()
from isnet_kernels.ops.geometry import Geometry
from isnet_kernels.backends.triton import conv
for Ci, Co, k, s, p, H in ((3, 64, 7, 2, 3, 32), (1, 16, 3, 1, 1, 28)):
    w = torch.empty(Co, Ci, k, k)
    Ho = (H + 2 * p - k) // s + 1
    conv.conv_epsilon_backward(torch.empty(2, 1, Ci, H, H), w, torch.empty(2, 1, Co, Ho, Ho),
                               torch.empty(2, Co, Ho, Ho), Geometry(stride=(s, s), padding=(p, p)), 1e-2)
rec.uninstall()
out = []
for r in rec.requests.values():
    f = build.compile_request(r.module, r.kernel, r.specialization, 90, None, keep_ir=True)
    out.append(dict(kernel=r.kernel, use_dot=r.constexprs["USE_DOT"], block_k=r.constexprs["BLOCK_K"], ok=f["ok"],
                    ttir_dots=f["ttir"].count("tt.dot"), mma=f["mma"], dot_k=f["dot_k"]))
print(json.dumps(out))
"""
    found = json.loads(_run(code, tmp_path).strip().splitlines()[-1])
    assert len(found) == 1  # the geometry is a runtime argument: one variant serves both layers
    for f in found:
        assert f["kernel"] == "_conv_epsilon_backward_kernel" and not f["use_dot"] and f["block_k"] == 1
        assert f["ok"] and f["ttir_dots"] == 0 and f["dot_k"] == [] and f["mma"] == "none"


def test_compile_check_slice_writes_its_table(tmp_path: Path) -> None:
    """One kernel, one configuration, one target: the table is written, with the compiler's figures."""
    out, cache = tmp_path / "aot", tmp_path / "cache"
    args = ["--targets", "90", "--models", "resnet18", "--dtypes", "fp32", "--kernel", "_stab_divide_kernel",
            "--limit", "1", "--jobs", "1", "--cache", str(cache), "--out", str(out)]
    code = f"import sys; from isnet_kernels.backends.triton.aot.__main__ import main; sys.exit(main({args!r}))"
    log = _run(code, tmp_path)
    assert "1 variants, 0 failing" in log
    data = json.loads((out / "compile.json").read_text())
    (row,) = data["rows"]
    assert row["kernel"] == "_stab_divide_kernel" and row["target"] == 90 and row["ok"]
    assert row["registers"] > 0 and row["spill_stores"] == 0 and row["mma"] == "none" and row["problems"] == []
    assert "stab_divide_kernel" in (out / "compile.md").read_text()
    assert len(list((cache / "figures").glob("*.json"))) == 1
    assert "1 from the cache" in _run(code, tmp_path)  # the second run reuses the content-hash cache
