"""The parts of ``make gpu-check`` (benchmarks/gpu_check.sh) that run without a GPU: the machine description it
writes, and its refusal, with a reason and exit status 2, on a machine where nvidia-smi finds no GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_env_describes_the_machine(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_env.py"), str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["python"]
    if not torch.cuda.is_available():
        assert env["gpu"] is None and env["gpu_count"] == 0
    assert f"| torch | {torch.__version__} |" in (tmp_path / "env.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_gpu_check_refuses_without_a_gpu(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, GPU_RESULTS=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "sees no CUDA device" in done.stderr and "make gpu-dry-run" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing written, nothing built


def test_gpu_check_refuses_an_interpreter_without_torch(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=str(tmp_path / "no-such-python"), GPU_RESULTS=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no interpreter" in done.stderr


def test_gpu_check_needs_no_network() -> None:
    """The check and every script it calls install nothing and name no package index or download address."""
    scripts = ["benchmarks/gpu_check.sh", "benchmarks/run_gpu.sh", "benchmarks/gpu_env.py", "benchmarks/gpu_summary.py",
               "benchmarks/bandwidth.py", "benchmarks/report.py", "benchmarks/roofline.py"]
    for name in scripts:
        text = (REPO / name).read_text()
        for word in ("pip install", "--index-url", "http://", "https://", "curl ", "wget ", "-m venv"):
            assert word not in text, f"{name} contains {word!r}"


def test_summary_of_a_run(tmp_path: Path) -> None:
    """The summary of a check: steps, test counts with failures and skip reasons, benchmark tables, as Markdown and
    JSON, from the files the steps leave."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "env.json").write_text(json.dumps({"python": "3.12.1", "torch": "2.11.0+cu130", "gpu": "NVIDIA H100"}))
    steps = work / "steps.tsv"
    steps.write_text("environment\tpassed\t3\ntests on CUDA\tfailed\t120\nbenchmarks\ttimed out\t150\n")
    (out / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.gpu.test_models_on_cuda" name="test_a"/>'
        '<testcase classname="tests.gpu.test_models_on_cuda" name="test_b"><failure message="boom: 1e-2"/></testcase>'
        '<testcase classname="tests.lrp.test_lxt" name="test_c"><skipped message="no lxt"/></testcase>'
        '</testsuite></testsuites>')
    (out / "gpu-memory.json").write_text(json.dumps({"results": [
        {"model": "resnet50_224", "mode": "plain", "peak_mib": 1000.0},
        {"model": "resnet50_224", "mode": "default", "peak_mib": 2500.0}]}))
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_summary.py"), "--work", str(work), "--out",
                           str(out), "--steps", str(steps), "--elapsed", "300"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["tests"]["passed"] == 1 and results["tests"]["failed"] == 1 and results["tests"]["skipped"] == 1
    assert [s["status"] for s in results["steps"]] == ["passed", "failed", "timed out"]
    summary = (out / "summary.md").read_text()
    assert "# GPU check on NVIDIA H100" in summary and "a step did not pass" in summary
    assert "1 passed, 1 failed, 0 errors, 1 skipped" in summary
    assert "| `tests.gpu.test_models_on_cuda::test_b` | boom: 1e-2 |" in summary
    assert "| 1 | no lxt |" in summary
    assert "| benchmarks | timed out | 150 |" in summary
    assert "| resnet50_224 | default | 2500 | 2.50x |" in summary


def test_summary_of_a_dry_run(tmp_path: Path) -> None:
    """Without a GPU the summary says "not run: no GPU" for each part that needs one, and how many GPU tests and
    benchmarks were collected."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    steps = work / "steps.tsv"
    steps.write_text("build\tpassed\t30\ntests (collected, not run: no GPU)\tpassed\t5\n")
    (out / "check.log").write_text("== build (limit 240s, at 3s)\nok\n== tests (collected, not run: no GPU) (limit "
                                   "120s, at 33s)\ntests/gpu/test_x.py::test_a\n\n725 tests collected in 0.4s\n")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_summary.py"), "--work", str(work), "--out",
                           str(out), "--steps", str(steps), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check, dry run (no GPU)")
    assert "| tests (collected, not run: no GPU) (725 collected) | passed | 5 |" in summary
    assert summary.count("not run: no GPU") >= 3  # tests, bandwidth, benchmarks
    assert json.loads((out / "results.json").read_text())["steps"][1]["collected"] == 725
