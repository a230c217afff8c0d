"""Running one training process or several under ``torchrun``: the process group, the device, rank 0's duties.

``torchrun --nproc_per_node=N -m isnet_kernels.cli train ...`` starts N processes with the environment variables
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. When ``WORLD_SIZE`` > 1,
:func:`setup` joins the process group (NCCL on CUDA, Gloo on CPU); each process then uses the CUDA device of its
``LOCAL_RANK``. Only rank 0 writes files; metric sums are added over the processes before they are read.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import TrainError


@dataclass
class Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, value: object) -> object:
        """Rank 0's ``value`` on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them (one all-reduce when distributed)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def close(self, together: bool = False) -> None:
        """Leave the process group if :func:`setup` joined it. ``together``: every process reached this point in
        step (a finished run, a coordinated stop), so they first wait for each other: a process that tore its group
        down while a peer was still sending to it could abort in gloo's threads ("terminate called without an
        active exception"). On other paths a peer may never arrive: no barrier, or one that gives up after a
        minute (gloo's monitored barrier)."""
        if self.owns_group and dist.is_initialized():
            if together:
                try:
                    if dist.get_backend() == "gloo":
                        dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
                    else:
                        dist.barrier()
                except RuntimeError:
                    pass  # a peer gone: leave the group anyway
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainError(f"environment variable {name}={value!r} is not an integer; launch with torchrun, which "
                         "sets it, or unset it") from None


def _device(requested: str, local_rank: int, distributed: bool) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"device {requested!r} was asked for but torch sees no CUDA device (torch "
                             f"{torch.__version__}); pass --device cpu, or install a CUDA build of torch")
        if requested == "cuda":
            index = local_rank if distributed else torch.cuda.current_device()
            if index >= torch.cuda.device_count():
                raise TrainError(f"process LOCAL_RANK={local_rank} has no CUDA device ({torch.cuda.device_count()} "
                                 "visible); start at most one process per GPU (torchrun --nproc_per_node)")
            return torch.device("cuda", index)
        return torch.device(requested)
    return torch.device("cpu")


def setup(device: str = "auto") -> Context:
    """This process's :class:`Context`, joining the process group when launched with ``WORLD_SIZE`` > 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world <= 1:
        return Context(device=_device(device, 0, False))
    dev = _device(device, local, True)
    owns = False
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise TrainError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with torchrun "
                             "--nproc_per_node=N, which sets them")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=dev,
                   owns_group=owns)
