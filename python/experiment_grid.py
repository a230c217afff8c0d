"""Many training runs side by side, reproducibly: the runner behind ``python/compare.py`` and
``python/defaults_study.py``.

Each run is one :class:`Job` (a data set, a run folder, :class:`~isnet_kernels.train.TrainConfig` settings). Jobs run
in worker processes, each with ONE intra-op thread and PyTorch's deterministic algorithms, so that a run's numbers
depend only on its data, seed and settings: not on the machine's core count, its load, or which other runs share
it (a reduction split over a different number of threads sums in another order). ``workers`` processes run at
once (default: the number of cores).

A finished run (its ``eval.json`` holds the job's settings) is not trained again, and an interrupted one resumes
from its ``last.pt``: a grid stopped by Ctrl-C continues where it stopped when started again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from statistics import mean, median, stdev
from typing import Any

from isnet_kernels.data import write_biased_digits, write_biased_scenes, write_biased_tags

SPLITS = ("test_biased", "test_unbiased", "test_confounding")
#: Data sets the grids train on: name -> (writer, its keyword arguments besides the image counts).
DATASETS: dict[str, tuple[Any, dict[str, Any]]] = {
    "biased digits": (write_biased_digits, {"size": 32}),
    "biased tags": (write_biased_tags, {"size": 40}),
}
#: The data set held out from the study of the defaults: the digits larger, on a faint noise background, with fewer
#: training images (the setting in which the authors' defaults were seen to fail).
HELDOUT: dict[str, tuple[Any, dict[str, Any]]] = {
    "biased digits 40x40 on noise (held out)": (write_biased_digits, {"size": 40, "noise": 0.15}),
}
#: Where the whole background is the shortcut (digits on real photographs, one per class behind 95% of the training
#: images): the set the C2 measurements were made on, and one with other photographs and digits that they were not.
SCENES: dict[str, tuple[Any, dict[str, Any]]] = {
    "biased scenes": (write_biased_scenes, {"size": 40}),
    "biased scenes, other photographs (held out)": (write_biased_scenes, {"size": 40, "seed": 1, "photo_seed": 1}),
}


@dataclass
class Job:
    """One training run: ``settings`` are :class:`~isnet_kernels.train.TrainConfig` fields (``data``, ``out``,
    ``progress`` are filled in); ``method`` and ``dataset`` label it in tables."""

    method: str
    dataset: str
    data: str
    out: str
    settings: dict[str, Any] = field(default_factory=dict)


def prepare_dataset(name: str, root: Path, *, per_class: int, per_class_test: int, seed: int = 0) -> Path:
    """Write data set ``name`` of :data:`DATASETS`, :data:`HELDOUT` or :data:`SCENES` to ``root`` unless a complete
    one with these counts is there (``seed`` unless the data set names its own)."""
    writer, kwargs = {**DATASETS, **HELDOUT, **SCENES}[name]
    kwargs = {"seed": seed, **kwargs}
    counts = {"per_class_train": per_class, "per_class_val": max(2, per_class // 15), "per_class_test": per_class_test}
    info = root / "info.json"
    if info.is_file():
        written = json.loads(info.read_text())["counts"]
        if (written["train"], written["test_unbiased"]) == (10 * per_class, 10 * per_class_test):
            return root
    shutil.rmtree(root, ignore_errors=True)
    writer(root, **kwargs, **counts, progress=False)
    return root


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


#: TrainConfig fields that, left None, the trainer finds from the data and saves resolved.
FOUND_FROM_DATA = ("task",)


def _run(job: Job) -> dict[str, Any]:
    from isnet_kernels.train import TrainConfig, environment, evaluate_run, train
    from isnet_kernels.train.config import default_of

    out = Path(job.out)
    settings = {**job.settings, "data": job.data, "out": job.out, "progress": False}
    # the settings as the trainer resolves them (presets, defaults): a change of the package's defaults retrains
    resolved = {k: v for k, v in TrainConfig(**settings).to_dict().items() if k not in ("C1", "C2")}

    def trained_with() -> dict[str, Any] | None:
        path = out / "config.json"
        if not path.is_file():
            return None
        # a field added to TrainConfig after the run was saved takes its default (its value then)
        fields = {f.name: default_of(f) for f in dataclasses.fields(TrainConfig)} | {"preset": "default"}
        saved = {**fields, **json.loads(path.read_text())}
        return {k: v for k, v in saved.items() if k not in ("C1", "C2")}

    def comparable(values: dict[str, Any] | None) -> dict[str, Any] | None:
        # a setting left None is found from the data when training starts (the task): the saved value is that
        return None if values is None else {k: v for k, v in values.items()
                                            if not (k in FOUND_FROM_DATA and resolved.get(k) is None)}

    same = comparable(trained_with()) == comparable(resolved)
    done = out / "eval.json"
    if done.is_file() and same:
        saved = json.loads(done.read_text())
        if saved.get("settings") == settings:
            return {**saved, "method": job.method, "dataset": job.dataset}
    resume = (out / "last.pt").is_file() and same
    if out.exists() and not resume:
        shutil.rmtree(out)  # nothing saved yet, or trained with other settings: start again
    start = time.perf_counter()
    result = train(TrainConfig(**settings), resume=resume)
    seconds = time.perf_counter() - start
    evaluation = evaluate_run(out, job.data, list(SPLITS), which="last", write=False,
                              bootstrap=0)  # the grid reports accuracies; no AUROC interval
    epoch_seconds = [row["seconds"] for row in result.history]
    record = {"method": job.method, "dataset": job.dataset, "settings": settings, "splits": evaluation["splits"],
              "train_seconds": seconds, "epoch_seconds": median(epoch_seconds) if epoch_seconds else None,
              "environment": environment()}  # the CPU, threads and versions the figures were computed with
    done.write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_jobs(jobs: list[Job], *, workers: int | None = None, threads: int = 1,
             progress: bool = True) -> list[dict[str, Any]]:
    """Run ``jobs`` in ``workers`` processes of ``threads`` threads each; results in the order of ``jobs``."""
    from tqdm.auto import tqdm

    outs = [str(Path(job.out).resolve()) for job in jobs]
    shared = sorted({o for o in outs if outs.count(o) > 1})
    if shared:
        raise ValueError(f"jobs share run folder(s) {shared}: each job needs its own out")
    workers = workers or os.cpu_count() or 1
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_run, job): i for i, job in enumerate(jobs)}
        bar = tqdm(total=len(jobs), desc="runs", disable=not progress)
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            r = results[i]
            acc = " / ".join(f"{100 * r['splits'][s]['accuracy']:.1f}" for s in SPLITS)
            bar.write(f"{jobs[i].dataset} | {jobs[i].method} | seed {jobs[i].settings.get('seed', 0)}: {acc} % "
                      f"({r['train_seconds']:.0f} s)")
            bar.update()
        bar.close()
    return [r for r in results if r is not None]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds, per (data set, method), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": mean(values), "std": stdev(values) if len(values) > 1 else 0.0}

    rows = []
    for (dataset, method), rs in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "method": method, "seeds": len(rs)}
        for s in SPLITS:
            row[s] = stats([r["splits"][s]["accuracy"] for r in rs])
            fractions = [r["splits"][s]["background_fraction"] for r in rs]
            row[f"{s}_background"] = stats(fractions) if None not in fractions else None
            worst = [r["splits"][s].get("worst_group_accuracy") for r in rs]  # data sets with groups only
            row[f"{s}_worst_group"] = stats(worst) if None not in worst else None
        row["epoch_seconds"] = stats([r["epoch_seconds"] for r in rs])
        rows.append(row)
    return rows


def pm(stat: dict[str, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` of a :func:`summarise` entry (``-`` when missing)."""
    if stat is None:
        return "-"
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"
