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


def open_dataset(rec_path, seed: int) -> RecDataset:
    return RecDataset(rec_path, train=True, seed=seed)


def epoch_loader(dataset: RecDataset, sampler: EpochSampler, epoch: int, skip_batches: int, workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """The batches of one epoch (workers started for it: they see the epoch's flips)."""
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, skip_batches)
    return DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=workers,
                      drop_last=True, pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(0))
