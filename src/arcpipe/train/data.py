"""Training batches from the pack stage's train.rec: the same images in the same order for a
given (seed, epoch), on any number of ranks and DataLoader workers, and resumable mid-epoch.

Epoch e is one seeded permutation of the images (torch's DistributedSampler rule: rank r of w
takes positions r, r+w, ... of it); each rank cuts its share into batches of batch_size / w and
drops the ragged end, so every rank takes the same number of steps. A run resumed at step s of
an epoch skips that epoch's first s batches without reading them. The horizontal flip is a pure
function of (seed, epoch, index) (arcpipe.datasets), so the workers need no shared RNG.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ..datasets import RecDataset, make_sampler


class EpochSampler(Sampler[int]):
    """This rank's indices of one epoch, from batch `skip` on."""

    def __init__(self, dataset, rank: int, world_size: int, seed: int, batch_size: int):
        self.base = make_sampler(dataset, rank=rank, world_size=world_size, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.skip = skip_batches

    def steps(self) -> int:
        """Full batches of this rank per epoch (every rank the same)."""
        return len(self.base) // self.batch_size

    def __iter__(self) -> Iterator[int]:
        idx = list(self.base)[: self.steps() * self.batch_size]
        return iter(idx[self.skip * self.batch_size:])

    def __len__(self) -> int:
        return (self.steps() - self.skip) * self.batch_size


class TorchBatches:
    """This rank's training batches from train.rec through a torch DataLoader (`train.loader:
    torch`), one epoch at a time: epoch(e, s) gives epoch e's batches from batch s on."""

    def __init__(self, rec_path, rank: int, world_size: int, seed: int, batch_size: int, workers: int,
                 pin_memory: bool = False):
        self.source = rec_path
        self.dataset = RecDataset(rec_path, train=True, seed=seed)
        self.sampler = EpochSampler(self.dataset, rank, world_size, seed, batch_size)
        self.workers, self.pin_memory = workers, pin_memory

    def __len__(self) -> int:
        return len(self.dataset)

    def steps(self) -> int:
        return self.sampler.steps()

    def epoch(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        """The batches of one epoch (workers started for it: they see the epoch's flips)."""
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, skip_batches)
        return DataLoader(self.dataset, batch_size=self.sampler.batch_size, sampler=self.sampler,
                          num_workers=self.workers, drop_last=True, pin_memory=self.pin_memory,
                          persistent_workers=False, prefetch_factor=4 if self.workers else None,
                          generator=torch.Generator().manual_seed(0))
