"""The GPU bandwidth benchmark's host side: its byte counts, its table and its refusal without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("bandwidth", ROOT / "benchmarks" / "bandwidth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark would run")
def test_without_a_gpu_it_refuses_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _module().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_table_reports_every_primitive_against_copy() -> None:
    bw = _module()
    result = {"device": "GPU", "shape": {"B": 1, "M": 1, "N": 8}, "unavailable": {"cuda": "not built"},
              "rows": {"stab_divide": {"bytes": 96, "copy_GBps": 100.0, "torch_GBps": 50.0, "torch_vs_copy": 0.5,
                                       "triton_GBps": 90.0, "triton_vs_copy": 0.9}}}
    table = bw.markdown(result)
    assert "| stab_divide | 100 | 50 (0.50) | 90 (0.90) |" in table and "cuda: not timed (not built)" in table


def test_minimal_bytes_of_each_primitive_match_its_inputs_and_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The byte counts are those of the tensors each primitive reads and writes (maps B*M*N, activations B*N)."""
    bw = _module()
    monkeypatch.setattr(torch, "randn", lambda *shape, device=None, dtype=None: torch.zeros(*shape, dtype=dtype))
    B, M, N = 2, 3, 5
    m, a = B * M * N * 4, B * N * 4
    expected = {"stab_divide": 2 * m + a, "mul_activation": 2 * m + a, "epsilon_backward_input": 3 * m + 2 * a,
                "epsilon_backward_stab": 3 * m + 2 * a, "residual_forward": 3 * m + 3 * a,
                "residual_backward": 4 * m + 6 * a}
    assert {op: nbytes for op, (_, nbytes) in bw.cases(B, M, N).items()} == expected
