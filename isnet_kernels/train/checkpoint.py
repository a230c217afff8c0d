"""Checkpoints of a training run: written atomically, read back with clear errors, RNG states included.

A checkpoint is a dict saved with ``torch.save`` holding only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)`` (no code runs when a checkpoint is read):

- ``format``: :data:`FORMAT` (the layout version);
- ``model``: the classifier's ``state_dict`` (the bare model, never a DDP or ISNet wrapper, so the keys are the
  architecture's own, e.g. torchvision's);
- ``optimizer``: the optimizer's ``state_dict`` (SGD's momentum buffers, AdamW's moments);
- ``epoch``: epochs completed; ``step``: batches completed in epoch ``epoch`` (0 at an epoch boundary, > 0 when a
  run was interrupted in the middle of an epoch), ``epoch_meter``: that partial epoch's metric sums, one entry per
  process (None at an epoch boundary);
- ``rng``: one entry per process (``world_size`` of them): the states of torch (CPU and every CUDA device), numpy,
  Python's ``random`` and the stochastic ISNet's generator, taken at the batch boundary the checkpoint describes;
- ``data_order``: the sampler's seed, epoch and start and the DataLoader generator's state (the order of the
  images is a function of seed and epoch, see :mod:`.sampling`); ``world_size``: the number of processes;
- ``config``: :meth:`TrainConfig.to_dict` (with the C1/C2 that :func:`~isnet_kernels.tune_cut` chose, if run);
- ``history``: the metrics rows of the completed epochs; ``best``: the best validation accuracy and its epoch;
- ``classes``, ``in_channels``: what the model was trained on, to rebuild and use it; ``custom_model``: True when
  the model was passed to the trainer as an object (it cannot be rebuilt from ``config.arch``);
- ``model_spec``: what rebuilds and feeds the model (:func:`.backbone.model_spec`): its name, constructor arguments,
  weights name, class count, channels and the resolved preprocessing (mean, std, size); absent in checkpoints
  written before it existed (a package model, inputs in [0, 1]).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import TrainError
from .files import write_atomic

FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`.files.write_atomic`): serialised in memory, written to a
    hidden temporary file in the same folder, flushed to the disk, then ``os.replace``.

    A crash, ``kill -9`` or Ctrl-C while writing leaves the previous checkpoint intact (never a truncated file); a
    failed write (full disk, a file-size limit, a read-only folder) raises :class:`TrainError` naming the cause
    and saying that the previous checkpoint is intact.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_atomic(path, buffer.getbuffer(), what="checkpoint")


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist; train a run first (isnet train --out RUN_DIR ...) or "
                         f"point to a run directory that holds {LAST}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise TrainError(f"cannot read checkpoint {path}: {exc}; the file is damaged or not an isnet checkpoint: "
                         f"delete it. Training continues only from {LAST} (without it a run starts over); evaluation "
                         f"can use the run's other checkpoint ({BEST if path.name == LAST else LAST})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise TrainError(f"{path} is not an isnet training checkpoint (format {FORMAT}); use a checkpoint written "
                         "by isnet train")
    return state


def find_checkpoint(run_dir: str | os.PathLike[str], which: str = "best") -> Path:
    """The checkpoint of a run directory: ``"best"`` (``best.pt``, else ``last.pt``), ``"last"`` or the name of a
    file in the run directory (a path that leads out of it, e.g. ``../B/last.pt``, is an error: what is computed
    from a checkpoint is written beside it and labelled with its run)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise TrainError(f"run directory {run} does not exist; pass the --out folder of an isnet train run")
    names = {"best": [BEST, LAST], "last": [LAST]}.get(which, [which])
    outside = (run / names[0]).resolve().parent != run.resolve()
    if outside:  # results are written beside the checkpoint and labelled with the run: never another run's
        other = (run / names[0]).resolve()
        raise TrainError(f"--checkpoint {which} is not a checkpoint of the run directory {run} (it is {other}); "
                         f"name a checkpoint file in {run}, or evaluate that run with --run {other.parent} "
                         f"--checkpoint {other.name}")
    for name in names:
        if (run / name).is_file():
            return run / name
    present = sorted(p.name for p in run.glob("*.pt"))
    raise TrainError(f"run directory {run} holds no {' or '.join(names)} (checkpoints there: "
                     f"{present or 'none'}); train into it first: isnet train --out {run} ...")


# --- random number generators ------------------------------------------------------------------------------------
def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of every random number generator a training step may draw from, as checkpointable values."""
    np_state = np.random.get_state()  # noqa: NPY002 - the global state is what user code draws from
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": _python_state(random.getstate()),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
    }
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Set every generator back to what :func:`capture_rng` recorded."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(_python_tuple(state["python"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise TrainError(f"the checkpoint holds the random states of {len(cuda)} CUDA devices but "
                             f"{torch.cuda.device_count()} are visible; resume with the same devices visible "
                             "(CUDA_VISIBLE_DEVICES) for an exact continuation")
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"].cpu())


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_tuple(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
