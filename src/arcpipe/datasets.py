"""Training datasets over a RecordIO pack or an identity-folder tree, and the data-parallel sampler.

Each item: (float32 tensor 3xHxW in [-1, 1], RGB, int64 label). Training transform = decode,
random horizontal flip (p = 0.5), normalise (x / 127.5 - 1), as arcface_torch trains.
The flip is a pure function of (seed, epoch, index), so a run is reproducible whatever the
number of DataLoader workers; call set_epoch(e) together with the sampler's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .errors import PipelineError
from .recordio import RecordReader, class_label, read_layout, read_property

__all__ = ["RecDataset", "FolderDataset", "make_sampler", "to_tensor", "flip_of", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_M64 = (1 << 64) - 1


def flip_of(seed: int, epoch: int, index: int) -> bool:
    """Deterministic coin (splitmix64 of the triple): flip this sample in this epoch?"""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 0x632BE59BD9B4E019) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return bool((z ^ (z >> 31)) >> 63)


def to_tensor(bgr: np.ndarray, flip: bool) -> torch.Tensor:
    """cv2 BGR HxWx3 uint8 -> RGB 3xHxW float32 in [-1, 1], mirrored when `flip`."""
    chw = bgr.transpose(2, 0, 1)[::-1]  # BGR->RGB as a view
    if flip:
        chw = chw[:, :, ::-1]
    out = np.empty(chw.shape, np.float32)
    np.multiply(chw, np.float32(1 / 127.5), out=out, casting="unsafe")
    out -= 1.0
    return torch.from_numpy(out)


def _decode_bgr(data: bytes, where: str) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise PipelineError(f"{where}: image does not decode")
    return img


class _Transform:
    def __init__(self, train: bool, seed: int):
        self.train = train
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, bgr: np.ndarray, index: int) -> torch.Tensor:
        return to_tensor(bgr, self.train and flip_of(self.seed, self.epoch, index))


class RecDataset(Dataset):
    """Images of a training .rec (insightface layout with header record, or a plain im2rec pack).

    Lazy and fork-safe: the .rec is memory-mapped on first use in each worker process.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: Optional[str | os.PathLike] = None,
                 train: bool = True, seed: int = 0):
        self.reader = RecordReader(rec_path, idx_path)
        layout = read_layout(self.reader)
        self.layout = layout.kind
        self.keys = np.asarray(layout.image_keys, dtype=np.int64)
        self.identity_ranges = layout.identity_ranges
        self.transform = _Transform(train, seed)
        self._num_classes: Optional[int] = None

    def set_epoch(self, epoch: int) -> None:
        self.transform.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_classes(self) -> int:
        """From the property file beside the .rec, else the identity count, else max label + 1."""
        if self._num_classes is None:
            prop = Path(self.reader.rec_path).parent / "property"
            if prop.exists():
                self._num_classes = read_property(prop)[0]
            elif self.identity_ranges:
                self._num_classes = len(self.identity_ranges)
            else:
                self._num_classes = int(max(self.label(i) for i in range(len(self)))) + 1 if len(self) else 0
        return self._num_classes

    def label(self, index: int) -> int:
        key = int(self.keys[index])
        return self._label(self.reader.header(key), key)

    def _label(self, header, key: int) -> int:
        return class_label(header, self.reader.rec_path, key)

    def __getitem__(self, index: int):
        key = int(self.keys[index])
        header, payload = self.reader.unpack(key)
        bgr = _decode_bgr(payload, f"{self.reader.rec_path}: key {key}")
        return self.transform(bgr, index), self._label(header, key)


class FolderDataset(Dataset):
    """root/<identity>/<image>: labels 0..C-1 over the sorted identity folders."""

    def __init__(self, root: str | os.PathLike, train: bool = True, seed: int = 0,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise PipelineError(f"{self.root}: image folder does not exist")
        ids = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.classes = ids
        paths, labels = [], []
        for lab, name in enumerate(ids):
            for f in sorted((self.root / name).iterdir()):
                if f.is_file() and f.suffix.lower() in extensions:
                    paths.append(f)
                    labels.append(lab)
        if not paths:
            raise PipelineError(f"{self.root}: no images in <identity>/ folders")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(ids)
        self.transform = _Transform(train, seed)

    def set_epoch(self, epoch: int) -> None:
        self.transform.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def __getitem__(self, index: int):
        path = self.paths[index]
        bgr = _decode_bgr(path.read_bytes(), str(path))
        return self.transform(bgr, index), int(self.labels[index])


def make_sampler(dataset: Dataset, rank: Optional[int] = None, world_size: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> DistributedSampler:
    """torch's DistributedSampler (rank r of w gets indices r, r+w, ... of one seeded permutation,
    padded to a multiple of w). rank/world_size default to the process group, or 0/1 without one."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                              drop_last=drop_last)
