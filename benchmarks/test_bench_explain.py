"""Wall-clock time of one LRP heatmap batch: ``isnet_kernels.explain`` per backend vs the plain input gradient vs
zennit.

Per model (one pytest-benchmark group each, so the methods are reported side by side): a batch of ``BATCH``
64x64 images, one target class per image, float32, eval mode, ``torch.set_num_threads(2)``. Methods:
``explain(reference)``, ``explain(cpp)`` (on CPU, when the extension is built; ``explain(triton)`` on CUDA),
``input_gradient``, ``zennit``. Each is warmed up once and then timed ``BENCH_ROUNDS`` times (default 7), one
call per round. See ``bench_common.py`` for exactly what each method computes and ``docs/performance.md`` for how
to read the numbers.

Environment variables: ``BENCH_ROUNDS`` (rounds per method), ``BENCH_MEMORY=0`` to skip the peak-memory probe
(one fresh subprocess per model and method, see ``memprobe.py``), ``BENCH_MODELS`` (comma-separated subset of
``resnet18,vgg11_bn``), ``BENCH_DEVICE`` (default ``cpu``), ``BENCH_BACKENDS`` (default: reference + the
device's fused backend).
"""

from __future__ import annotations

import contextlib
import os

import bench_common as bc
import memprobe
import pytest
import torch

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
MEMORY = os.environ.get("BENCH_MEMORY", "1") != "0"
MODEL_NAMES = [m for m in os.environ.get("BENCH_MODELS", ",".join(bc.MODELS)).split(",") if m]

_CACHE: dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = {}
_HEATMAPS: dict[str, torch.Tensor] = {}


def _setup(model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    if model_name not in _CACHE:
        model = bc.make_model(model_name)
        x, target = bc.make_inputs()
        _CACHE[model_name] = (model, x, target)
    return _CACHE[model_name]


def _reference(model_name: str) -> torch.Tensor:
    """isnet_kernels' heatmap of the benchmark batch on the reference backend (to check that zennit and the
    fused backends compute the same thing)."""
    if model_name not in _HEATMAPS:
        model, x, target = _setup(model_name)
        with torch.no_grad(), contextlib.ExitStack() as stack:
            _HEATMAPS[model_name] = bc.make_method(bc.REFERENCE_METHOD, model_name, model, x, target, stack)()
    return _HEATMAPS[model_name]


@pytest.mark.parametrize("method", bc.METHODS)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_explain(benchmark, model_name: str, method: str) -> None:
    if method == "zennit" and not bc.HAVE_ZENNIT:
        pytest.skip("zennit is not installed here (pip install --no-deps zennit==0.5.1 times it)")
    model, x, target = _setup(model_name)
    benchmark.group = f"{model_name} (B={bc.BATCH}, {bc.SIZE}x{bc.SIZE}, {bc.describe_device()})"
    benchmark.name = method
    benchmark.extra_info.update(suite="explain", model=model_name, model_description=bc.MODELS[model_name].description,
                                method=method, batch=bc.BATCH, image_size=bc.SIZE, threads=torch.get_num_threads(),
                                device=str(bc.DEVICE))

    with contextlib.ExitStack() as stack:
        fn = bc.timed(bc.make_method(method, model_name, model, x, target, stack))
        out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        assert out.shape == x.shape and bool(torch.isfinite(out).all())
        if method != "input_gradient" and method != bc.REFERENCE_METHOD:
            # The same heatmap as the reference backend's: for zennit up to float32 rounding (amplified where the
            # epsilon rule divides by z + eps * sign(z) with z near 0: the zoo's VGG has logits of ~1e-3) and the
            # 1 / sqrt(1 + bn.eps) per BatchNorm that zennit's stock merge leaves (~1e-4 in float64); for the
            # fused backends up to float32 rounding only.
            ref = _reference(model_name)
            err = bc.rel_err(out, ref)
            a, b = out.detach().double().flatten(), ref.double().flatten()
            cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            benchmark.extra_info.update(rel_err_vs_isnet_kernels=err, cosine_vs_isnet_kernels=cos)
            assert err < 5e-2 and cos > 0.999, f"{method} heatmap differs from the reference's: {err=:.2e} {cos=:.6f}"

    if MEMORY:
        mem = memprobe.run_probe(model_name, method)
        benchmark.extra_info.update({k: round(v, 2) if isinstance(v, float) else v for k, v in mem.items()})
