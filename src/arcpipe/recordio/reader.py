"""RecordIO reading: random access by key through mmap, sequential scans, fork-safe handles."""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .format import (_FRAME_IR, _HEAD, IR_SIZE, MAGIC, IRHeader, RecordIOError, RecordKeyError, default_idx_path,
                     read_frame_at, read_idx, unpack)

_FORK_GENERATION = [0]


def _after_fork_in_child() -> None:
    _FORK_GENERATION[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RecordReader:
    """Random access by key (mmap) and sequential iteration over a .rec.

    The file is opened on first use and reopened after a fork, and the object pickles without
    its file handle, so one reader can be handed to DataLoader workers. With no .idx (none given
    and no sibling <name>.idx), the .rec is scanned once and keys are record positions 0..n-1.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise RecordIOError(f"{self.rec_path}: RecordIO file does not exist")
        if idx_path is None:
            sib = default_idx_path(self.rec_path)
            self.idx_path: Optional[Path] = sib if sib.is_file() else None
        else:
            self.idx_path = Path(idx_path)
            if not self.idx_path.is_file():
                raise RecordIOError(f"{self.idx_path}: index file does not exist")
        self._offsets: Optional[dict] = None
        self._keys: Optional[list] = None
        self._mm = None
        self._file = None
        self._gen = -1

    # pickling drops the open file; the worker reopens lazily
    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        d["_mm"] = None
        d["_file"] = None
        d["_gen"] = -1
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)

    def _open(self):
        self._file = open(self.rec_path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._gen = _FORK_GENERATION[0]
        return self._mm

    @property
    def buffer(self):
        mm = self._mm
        if mm is None or self._gen != _FORK_GENERATION[0]:
            mm = self._open()
        return mm

    def _load_index(self) -> dict:
        if self.idx_path is not None:
            keys, offs = read_idx(self.idx_path)
        else:
            offs = np.array([off for off, _ in self.scan()], dtype=np.int64)
            keys = np.arange(len(offs), dtype=np.int64)
        klist = keys.tolist()
        self._offsets = dict(zip(klist, offs.tolist()))
        if len(self._offsets) != len(klist):
            uniq, counts = np.unique(keys, return_counts=True)
            raise RecordIOError(f"{self.idx_path}: key {int(uniq[counts > 1][0])} appears more than once")
        self._keys = klist
        return self._offsets

    @property
    def offsets(self) -> dict:
        """key -> byte offset of the record's frame."""
        return self._offsets if self._offsets is not None else self._load_index()

    @property
    def keys(self) -> list:
        """Keys in .idx order."""
        if self._keys is None:
            self._load_index()
        return self._keys

    def __len__(self) -> int:
        return len(self.offsets)

    def __contains__(self, key: int) -> bool:
        return key in self.offsets

    def read(self, key: int) -> bytes:
        """The record stored under `key` (IRHeader + payload bytes)."""
        offsets = self._offsets if self._offsets is not None else self._load_index()
        try:
            off = offsets[key]
        except (KeyError, TypeError):
            raise RecordKeyError(f"{self.idx_path or self.rec_path}: key {key!r} is not in the index") from None
        mm = self._mm
        if mm is None or self._gen != _FORK_GENERATION[0]:
            mm = self._open()
        # fast path: a whole record (cflag 0)
        try:
            magic, lrec = _HEAD.unpack_from(mm, off)
        except struct.error:
            magic = lrec = -1
        if magic == MAGIC and lrec >> 29 == 0:
            end = off + 8 + lrec
            if end <= len(mm):
                return mm[off + 8:end]
        try:
            return read_frame_at(mm, off, self.rec_path)[0]
        except RecordIOError as e:
            raise RecordIOError(f"{e} (key {key} in {self.idx_path})") from None

    def read_at(self, offset: int) -> bytes:
        return read_frame_at(self.buffer, offset, self.rec_path)[0]

    def header(self, key: int) -> IRHeader:
        return self.unpack(key)[0]

    def unpack(self, key: int) -> tuple[IRHeader, bytes]:
        """(IRHeader, payload) of `key`, sliced straight from the map (one copy)."""
        offsets = self._offsets if self._offsets is not None else self._load_index()
        off = offsets.get(key) if type(key) is int else None
        mm = self._mm
        if off is not None and mm is not None and self._gen == _FORK_GENERATION[0]:
            try:
                magic, lrec, flag, label, id_, id2 = _FRAME_IR.unpack_from(mm, off)
            except struct.error:
                magic = None
            if magic == MAGIC and flag == 0 and lrec >> 29 == 0 and lrec >= IR_SIZE:
                end = off + 8 + lrec
                if end <= len(mm):
                    return IRHeader(0, label, id_, id2), mm[off + 32:end]
        rec = self.read(key)
        try:
            return unpack(rec)
        except ValueError as e:
            raise RecordIOError(f"{self.rec_path}: key {key}: {e}") from None

    def scan(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """(offset, record) for every record in file order; raises at the first bad frame."""
        mm = self.buffer
        size = len(mm)
        pos = start
        head = _HEAD.unpack_from
        while pos < size:
            if pos + 8 <= size:
                magic, lrec = head(mm, pos)
                if magic == MAGIC and lrec >> 29 == 0:
                    end = pos + 8 + lrec
                    if end <= size:
                        yield pos, mm[pos + 8:end]
                        pos += 8 + ((lrec + 3) & ~3)
                        continue
            rec, nxt = read_frame_at(mm, pos, self.rec_path)
            yield pos, rec
            pos = nxt

    def __iter__(self) -> Iterator[bytes]:
        """Records in file order (sequential scan)."""
        for _, rec in self.scan():
            yield rec

    def items(self) -> Iterator[tuple[int, bytes]]:
        """(key, record) in .idx order."""
        for k in self.keys:
            yield k, self.read(k)

    def close(self) -> None:
        if self._mm is not None and not isinstance(self._mm, bytes):
            try:
                self._mm.close()
            except BufferError:  # a memoryview still points into it; leave it to the GC
                pass
        if self._file is not None:
            self._file.close()
        self._mm = None
        self._file = None

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


