"""The parts of ``make gpu-check`` (benchmarks/gpu_check.sh) that run without a GPU: the machine description it
writes, and its refusal, with a reason and exit status 2, on a machine where nvidia-smi finds no GPU."""

from __future__ import annotations

import json
import os
import shutil
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


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU driver is installed here")
def test_gpu_check_refuses_without_a_gpu(tmp_path: Path) -> None:
    env = dict(os.environ, GPU_VENV=str(tmp_path / "venv"), GPU_RESULTS=str(tmp_path / "out"))
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr
    assert not (tmp_path / "venv").exists()  # nothing installed
