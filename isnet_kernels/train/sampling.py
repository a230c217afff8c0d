"""The order in which a training run sees its images: one permutation per epoch, shared by every process.

Epoch ``e`` uses ``torch.randperm(n)`` from a ``torch.Generator`` seeded with ``seed + e``, padded (repeating its
start) to a multiple of the number of processes W, and process ``r`` takes every W-th index from position ``r``:
exactly ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` with ``set_epoch(e)``, and for W = 1 a
plain shuffle. With per-process batches of ``b = global_batch / W``, the union of the W processes' k-th batches
is the k-th slice of ``global_batch`` indices of the permutation, the same images one process with the global
batch takes at step k (padding aside: make the data set size a multiple of W for an exact match).

The order is a function of (seed, epoch) alone, so a checkpoint needs only those two numbers to resume it, and
:meth:`EpochSampler.skip` restarts an epoch in its middle, after the batches an interrupted run had done.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..errors import InputError


def loader_seed(seed: int, epoch: int) -> int:
    """The seed of a training DataLoader's generator in epoch ``epoch`` (the base seed of its workers' RNGs)."""
    return int(seed) * 100_003 + int(epoch)


class EpochSampler(Sampler[int]):
    """Indices of this process's share of epoch ``epoch``'s permutation (module docstring).

    Parameters
    ----------
    size : images in the data set.
    seed : base seed; epoch ``e`` is shuffled by a generator seeded with ``seed + e``.
    rank, world_size : this process and the number of processes.
    shuffle : False keeps the data set order (evaluation), split the same way.
    pad : pad to a multiple of ``world_size`` so every process gets the same count (training; DistributedSampler
        does the same). Evaluation passes False, so no image is counted twice.
    """

    def __init__(self, size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 pad: bool = True):
        if not 0 <= rank < world_size:
            raise InputError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.size, self.seed, self.rank, self.world_size = int(size), int(seed), int(rank), int(world_size)
        self.shuffle, self.pad = shuffle, pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from now on (and start it at its beginning)."""
        self.epoch = int(epoch)
        self.start = 0

    def skip(self, count: int) -> None:
        """Start the current epoch's share after its first ``count`` indices (resuming an interrupted epoch)."""
        self.start = int(count)

    def indices(self) -> list[int]:
        """This process's full share of the current epoch, before :meth:`skip`."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size % self.world_size:
            extra = self.world_size - self.size % self.world_size
            order += (order * (extra // max(len(order), 1) + 1))[:extra]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        total = -(-self.size // self.world_size) if self.pad else len(range(self.rank, self.size, self.world_size))
        return max(total - self.start, 0)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}
