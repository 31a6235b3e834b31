"""Training batches through NVIDIA DALI (`train.loader: dali`), where nvidia-dali is installed.

DALI reads the pack stage's flat shuffled copy, train_flat.rec / train_flat.idx (image records
only, scalar labels, shuffled once at pack time), decodes the JPEGs in its own threads (on the GPU,
"mixed", when training runs on CUDA; on the CPU otherwise) and applies the training transform of
arcpipe.datasets: RGB, a horizontal flip with p = 0.5, (x - 127.5) / 127.5, CHW float32.

Epochs and ranks, as arcface_torch's DALI reader goes through them: the flat file is cut into
world-size shards (DALI's rule: shard i holds records [n*i/w, n*(i+1)/w)); in epoch e rank r reads
shard (r + e) mod w, so over w epochs every rank sees every image. Each epoch is a fresh pipeline
seeded by (seed, epoch, rank): its reading order (DALI's shuffle buffer over the already shuffled
file) and its flips are the same whenever that epoch runs, so a run resumed at batch s of an epoch
reads the epoch again and drops its first s batches. Every rank takes floor(floor(n/w) / batch)
steps, the smallest shard's full batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import PipelineError
from ..recordio import read_idx

__all__ = ["DaliBatches", "require_dali", "flat_files"]

INSTALL = "pip install nvidia-dali-cuda120 (or the build for your CUDA; see the README)"


def require_dali(section: str = "train") -> None:
    """nvidia-dali imports, or one line saying how to get it."""
    try:
        from nvidia.dali import fn, pipeline_def, types  # noqa: F401
    except ImportError as e:
        raise PipelineError(f"{section}.loader is dali, but nvidia-dali cannot be imported ({e}): {INSTALL}, "
                            f"or set {section}.loader: torch") from None


def flat_files(pack: Path) -> tuple[Path, Path]:
    return pack / "train_flat.rec", pack / "train_flat.idx"


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] & 0x7FFFFFFF)


class DaliBatches:
    """This rank's training batches of one epoch at a time, as (images, labels) torch tensors:
    images float32 (batch, 3, H, W) on `device` (CUDA when decoding there, else the CPU), labels
    int64 on the CPU."""

    def __init__(self, rec: Path, idx: Path, rank: int, world_size: int, seed: int, batch_size: int,
                 threads: int, device: torch.device, shuffle: bool = True, flip: bool = True,
                 initial_fill: int = 1024):
        require_dali()
        self.rec, self.idx = Path(rec), Path(idx)
        self.source = self.rec
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_size, self.threads = batch_size, max(1, threads)
        self.device = device
        self.shuffle, self.flip, self.initial_fill = shuffle, flip, initial_fill
        self.num_images = len(read_idx(self.idx)[0])

    def __len__(self) -> int:
        return self.num_images

    def steps(self) -> int:
        """Full batches of this rank per epoch (every rank the same)."""
        return (self.num_images // self.world_size) // self.batch_size

    def shard_of(self, epoch: int) -> int:
        return (self.rank + epoch) % self.world_size

    def _pipeline(self, epoch: int):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads,
                      device_id=(self.device.index or 0) if gpu else None, seed=_epoch_seed(self.seed, epoch, self.rank))
        def pipe():
            jpegs, labels = fn.readers.mxnet(path=[str(self.rec)], index_path=[str(self.idx)],
                                             shard_id=self.shard_of(epoch), num_shards=self.world_size,
                                             stick_to_shard=True, random_shuffle=self.shuffle,
                                             initial_fill=self.initial_fill, pad_last_batch=False, name="Reader")
            images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
            mirror = fn.random.coin_flip(probability=0.5) if self.flip else 0
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
                                              mean=[127.5] * 3, std=[127.5] * 3)
            return images, labels

        p = pipe()
        try:
            p.build()
        except RuntimeError as e:
            raise PipelineError(f"{self.rec}: DALI cannot open it: {_cause(e)}") from None
        return p

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `skip_batches` on."""
        steps = self.steps()
        p = self._pipeline(epoch)
        for b in range(steps):
            try:
                images, labels = p.run()
            except RuntimeError as e:
                raise PipelineError(f"{self.rec}: DALI failed in batch {b + 1} of epoch {epoch} "
                                    f"(shard {self.shard_of(epoch)}): {_cause(e)} "
                                    f"(scripts/rectool.py verify names bad records)") from None
            if b < skip_batches:
                continue
            yield self._images(images), torch.from_numpy(np.array(labels.as_tensor())).reshape(-1).long()

    def _images(self, images) -> torch.Tensor:
        t = images.as_tensor()
        if self.device.type != "cuda":
            return torch.from_numpy(np.array(t))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(t.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out


def _cause(e: BaseException) -> str:
    """The cause in DALI's multi-line message: the line after "encountered:", without its assert."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    at = next((i + 1 for i, ln in enumerate(lines) if ln == "encountered:"), None)
    line = lines[at] if at is not None and at < len(lines) else lines[0] if lines else type(e).__name__
    if line.startswith("Assert on ") and " failed: " in line:
        line = line.split(" failed: ", 1)[1]
    return line[:300]
