"""RecordIO writing and its I/O strategy: frames assembled in batches, handed to a background
thread, written through O_DIRECT where the file system allows; .rec and .idx appear only whole."""
from __future__ import annotations

import mmap
import numbers
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .format import (IR_SIZE, MAGIC, MAGIC_BYTES, MAX_LENGTH, _FRAME_IR, _HEAD, _PADS,
                     default_idx_path, frame, pack, read_idx)

_CHUNK_BYTES = 4 << 20  # write_images frames this much at a time


def _has_aligned_magic(record: bytes, n: int) -> bool:
    """Does the magic number sit at a 4-aligned offset of the record (where dmlc splits)?"""
    i = record.find(MAGIC_BYTES, 0, n)  # a C search; most records hold the bytes nowhere
    while i >= 0:
        if not i & 3:
            return True
        i = record.find(MAGIC_BYTES, i + 1, n)
    return False


def _plain_frames(whole: np.ndarray, offs: np.ndarray, size: int) -> bool:
    """Are the records at `offs` (ascending, the first at 0) of a file's bytes `whole` each one
    whole frame with a scalar-label IRHeader (flag 0), so its label sits at offset + 12?"""
    n = len(offs)
    if not (n and offs[0] == 0 and (np.diff(offs) > 0).all() and offs[-1] + 8 + IR_SIZE <= size):
        return False
    pos = offs[:, None] + np.arange(12)[None, :]
    head = whole[pos].reshape(n, 3, 4).view("<u4").reshape(n, 3)
    lens = head[:, 1] & ((1 << 29) - 1)
    return bool((head[:, 0] == MAGIC).all() and ((head[:, 1] >> 29) <= 1).all()
                and (lens >= IR_SIZE).all() and (head[:, 2] == 0).all())


def scalar_labels(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None
                  ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(keys, scalar labels as float32), both in idx order, of a .rec that RecordWriter wrote, the
    labels read from the headers alone; None unless every record is a plain scalar-label frame."""
    rec_path = Path(rec_path)
    keys, offs = read_idx(Path(idx_path) if idx_path is not None else default_idx_path(rec_path))
    if not len(keys):
        return keys, np.zeros(0, np.float32)
    size = rec_path.stat().st_size
    if not size:
        return None
    with open(rec_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        whole = np.frombuffer(mm, np.uint8)
        try:
            if not _plain_frames(whole, offs, size):
                return None
            return keys, whole[offs[:, None] + np.arange(12, 16)[None, :]].copy().view("<f4").reshape(-1)
        finally:
            del whole


def _writev_all(fd: int, pieces: list) -> None:
    total = sum(len(p) for p in pieces)
    done = os.writev(fd, pieces)
    if done == total:
        return
    rest = b"".join(bytes(p) for p in pieces)[done:]  # a short write: finish it plainly
    while rest:
        done = os.write(fd, rest)
        rest = rest[done:]


class _RecSink:
    """Append-only output for the .rec, written by a background thread (os.write releases the
    GIL, so the next chunk is framed while the last one goes to disk).

    With direct=True it writes through O_DIRECT in aligned blocks from two page-aligned staging
    buffers: that skips the page-cache copy, the slowest part of writing a large pack, and keeps
    a multi-GB pack from evicting everything else. File systems without O_DIRECT (tmpfs, some
    network mounts) fall back to plain writes.
    """

    BLOCK = 4096
    CAP = 16 << 20

    def __init__(self, path: Path, direct: bool):
        self.direct = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError:
                pass
        if not self.direct:
            self.fd = os.open(path, flags, 0o644)
        self.buf = mmap.mmap(-1, self.CAP) if self.direct else None
        self.spare = mmap.mmap(-1, self.CAP) if self.direct else None
        self.fill = 0
        self._pool = None
        self._pending = None

    # -- background writes
    def _wait(self) -> None:
        if self._pending is not None:
            fut, self._pending = self._pending, None
            fut.result()

    def _submit(self, fn, *args) -> None:
        self._wait()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="recordio-write")
        self._pending = self._pool.submit(fn, *args)

    def _plain(self) -> None:
        """Leave O_DIRECT for the rest of the file."""
        import fcntl

        fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fl & ~os.O_DIRECT)

    def _write_block(self, buf, n: int) -> None:
        import errno

        done = 0
        with memoryview(buf) as mv:
            while done < n:
                try:
                    done += os.write(self.fd, mv[done:n])
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._plain()  # the file system refused O_DIRECT writes after all
                    continue
                if done % self.BLOCK and done < n:
                    self._plain()

    # -- the interface
    def write_pieces(self, pieces: list) -> None:
        if not self.direct:
            self._wait()
            _writev_all(self.fd, pieces)
        else:
            for p in pieces:
                self.write(p)

    def _rotate(self) -> None:
        """Send the whole blocks of the staging buffer to disk; continue in the spare buffer."""
        aligned = self.fill & ~(self.BLOCK - 1)
        rest = self.fill - aligned
        self._wait()  # the spare's previous write is done
        if rest:
            self.spare[:rest] = self.buf[aligned:self.fill]
        full = self.buf
        if aligned:
            self._submit(self._write_block, full, aligned)
        self.buf, self.spare = self.spare, full
        self.fill = rest

    def reserve(self, n: int) -> Optional[int]:
        """Make room for n bytes in the staging buffer; their start there, or None if too big."""
        if n > self.CAP - self.BLOCK:
            return None
        if self.fill + n > self.CAP:
            self._rotate()
        return self.fill

    def write(self, data) -> None:
        if not self.direct:
            self._submit(_writev_all, self.fd, [data])
            return
        n = len(data)
        i = 0
        cap = self.CAP
        with memoryview(data) as mv:
            while i < n:
                take = min(cap - self.fill, n - i)
                self.buf[self.fill:self.fill + take] = mv[i:i + take]
                self.fill += take
                i += take
                if self.fill == cap:
                    self._rotate()

    def finish(self, fsync: bool) -> None:
        self._wait()
        if self.direct and self.fill:
            aligned = self.fill & ~(self.BLOCK - 1)
            if aligned:
                self._write_block(self.buf, aligned)
            tail = self.fill - aligned
            if tail:
                self._plain()
                with memoryview(self.buf) as mv:
                    _writev_all(self.fd, [bytes(mv[aligned:self.fill])])
            self.fill = 0
        if fsync:
            os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        try:
            self._wait()
        except Exception:  # already failing: the caller is aborting
            pass
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            for m in (self.buf, self.spare):
                if m is not None:
                    m.close()
            self.buf = self.spare = None


class RecordWriter:
    """Write records and their .idx; both appear only at close() (temp files, then rename).

    with RecordWriter("train.rec") as w:          # idx defaults to train.idx
        w.write(key, pack(IRHeader(0, 3.0, key, 0), jpeg))
    On an exception inside the block nothing is left behind.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None,
                 durable: bool = True, direct: bool = True):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else default_idx_path(rec_path)
        self.durable = durable  # fsync before the rename (off: as mxnet, faster, not crash-safe)
        if self.rec_path.resolve() == self.idx_path.resolve():
            raise ValueError(f"{self.rec_path}: .rec and .idx paths are the same file")
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self.idx_path.parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp-{os.getpid()}-{id(self):x}"
        self._rec_tmp = self.rec_path.with_name(f".{self.rec_path.name}{tag}")
        self._idx_tmp = self.idx_path.with_name(f".{self.idx_path.name}{tag}")
        self._idx = open(self._idx_tmp, "wb", buffering=0)
        try:
            self._rec = _RecSink(self._rec_tmp, direct)
        except BaseException:
            self._idx.close()
            self._idx_tmp.unlink()
            raise
        self._pieces: list = []  # frames not yet written: handed to os.writev in batches
        self._lines: list = []
        self._pos = 0
        self._last_key: Optional[int] = None
        self._unordered = False  # keys stopped increasing: check for duplicates at close
        self._count = 0
        self.closed = False
        self.splits = 0  # records that held the magic number and were split

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return self._count

    def tell(self) -> int:
        return self._pos

    def write(self, key: int, record: bytes) -> int:
        """Append one record under `key`; returns its byte offset."""
        if self.closed:
            raise ValueError(f"{self.rec_path}: write after close")
        if type(key) is not int:
            if not isinstance(key, numbers.Integral) or isinstance(key, (bool, np.bool_)):
                raise TypeError(f"{self.rec_path}: record key must be an int, got {type(key).__name__}")
            key = int(key)
        if key < 0:
            raise ValueError(f"{self.rec_path}: record key must be >= 0, got {key}")
        last = self._last_key
        if last is None or key > last:
            self._last_key = key
        else:
            self._unordered = True  # duplicates are checked at close
        if type(record) is not bytes:
            record = bytes(record)
        n = len(record)
        off = self._pos
        pieces = self._pieces
        if n <= MAX_LENGTH and not _has_aligned_magic(record, n):
            pieces.append(_HEAD.pack(MAGIC, n))
            pieces.append(record)
            if n & 3:
                pieces.append(_PADS[n & 3])
            self._pos = off + 8 + ((n + 3) & ~3)
        else:
            data = frame(record)
            if len(data) != 8 + ((n + 3) & ~3):
                self.splits += 1
            pieces.append(data)
            self._pos = off + len(data)
        self._lines.append(b"%d\t%d\n" % (key, off))
        self._count += 1
        if len(pieces) > 1000:
            self._flush()
        return off

    def write_images(self, keys, labels, payloads, ids=None, id2: int = 0, chunk: int = 4096) -> None:
        """Batch form of write(key, pack(IRHeader(0, label, id, id2), payload)); same bytes, faster.

        keys: ints >= 0; labels: numbers (scalar labels); payloads: bytes; ids default to keys.
        Frames are assembled in one buffer per chunk and searched for the magic number at once;
        a chunk where a record holds the magic goes through write() record by record.
        """
        keys = list(keys)
        labels = list(labels)
        payloads = list(payloads)
        ids = keys if ids is None else list(ids)
        if not (len(keys) == len(labels) == len(payloads) == len(ids)):
            raise ValueError(f"{self.rec_path}: write_images: keys, labels, payloads and ids differ in length")
        n = len(keys)
        if n == 0:
            return
        # chunks of at most `chunk` records and about _CHUNK_BYTES
        cum = np.cumsum(np.fromiter(map(len, payloads), np.int64, n) + 40)
        cuts = set(range(0, n, chunk))
        cuts.update(np.searchsorted(cum, np.arange(_CHUNK_BYTES, int(cum[-1]), _CHUNK_BYTES)).tolist())
        cuts = sorted(c for c in cuts if 0 <= c < n) + [n]
        for a, b in zip(cuts, cuts[1:]):
            if b > a:
                self._write_image_chunk(keys[a:b], labels[a:b], payloads[a:b], ids[a:b], id2)

    def _write_image_chunk(self, keys, labels, payloads, ids, id2) -> None:
        if not keys:
            return
        if self.closed:
            raise ValueError(f"{self.rec_path}: write after close")
        try:
            ka = np.asarray(keys)
            if ka.dtype.kind not in "iu" or ka.ndim != 1:
                raise TypeError
            la = [float(x) for x in labels]
            ia = [int(x) for x in ids]
        except (TypeError, ValueError):  # odd keys or vector labels: the general path sorts it out
            for k, lab, p, i in zip(keys, labels, payloads, ids):
                self.write(k, pack((0, lab, i, id2), p))
            return
        if ka.min() < 0:
            raise ValueError(f"{self.rec_path}: record key must be >= 0, got {int(ka.min())}")
        keys = ka.tolist()
        sink = self._rec
        if sink.direct and self._write_chunk_direct(sink, keys, ka, la, payloads, ia, id2):
            return
        pieces = []
        offsets = []
        pos = self._pos
        head = _FRAME_IR.pack
        for lab, p, i in zip(la, payloads, ia):
            m = len(p) + IR_SIZE
            if m > MAX_LENGTH:
                raise ValueError(f"{self.rec_path}: record of {m} bytes exceeds the RecordIO limit")
            offsets.append(pos)
            pieces.append(head(MAGIC, m, 0, lab, i, id2))
            pieces.append(p)
            if m & 3:
                pieces.append(_PADS[m & 3])
            pos += 8 + ((m + 3) & ~3)
        buf = b"".join(pieces)
        hits = np.flatnonzero(np.frombuffer(buf, "<u4") == MAGIC)
        if len(hits) != len(offsets):  # a magic inside some record: split those the slow way
            for k, lab, p, i in zip(keys, la, payloads, ia):
                self.write(k, pack((0, lab, i, id2), p))
            return
        self._flush()
        self._rec.write(buf)
        self._commit_chunk(keys, ka, offsets, pos)

    def _commit_chunk(self, keys, ka, offsets, end_pos) -> None:
        if (len(keys) > 1 and not (ka[1:] > ka[:-1]).all()) or (
                self._last_key is not None and keys[0] <= self._last_key):
            self._unordered = True
        self._last_key = max(keys) if self._last_key is None else max(self._last_key, max(keys))
        self._lines.append(b"".join([b"%d\t%d\n" % ko for ko in zip(keys, offsets)]))
        self._pos = end_pos
        self._count += len(keys)

    def _write_chunk_direct(self, sink, keys, ka, la, payloads, ia, id2) -> bool:
        """Frame a chunk straight into the sink's staging buffer (no join, no extra copy).
        False (nothing written) when it does not fit or a record holds the magic number."""
        lens = np.fromiter(map(len, payloads), np.int64, len(payloads))
        if len(lens) and int(lens.max()) + IR_SIZE > MAX_LENGTH:
            return False
        sizes = 8 + ((lens + IR_SIZE + 3) & ~3)
        total = int(sizes.sum())
        self._flush()
        start = sink.reserve(total)
        if start is None:
            return False
        buf = sink.buf
        buf.seek(start)
        w = buf.write
        head = _FRAME_IR.pack
        pads = _PADS
        for lab, p, i, n in zip(la, payloads, ia, lens.tolist()):
            m = n + IR_SIZE
            w(head(MAGIC, m, 0, lab, i, id2))
            w(p)
            if m & 3:
                w(pads[m & 3])
        words = np.frombuffer(buf, "<u4", total >> 2, start)
        hits = int(np.count_nonzero(words == MAGIC))
        del words  # release the view of the map
        if hits != len(keys):
            return False  # sink.fill is unchanged: the chunk is dropped and redone record by record
        sink.fill = start + total
        offsets = (self._pos + np.cumsum(sizes) - sizes).tolist()
        self._commit_chunk(keys, ka, offsets, self._pos + total)
        return True

    def append_pack(self, rec_path, idx_path=None, labels=None, chunk: int = 8 << 20) -> int:
        """Append every record of another .rec (written by RecordWriter: frames in idx order) by
        copying its bytes, with the idx offsets shifted; returns the number of records.

        labels: None, or one float per record in the other file's idx order, written over each
        record's scalar IRHeader label on the way (4 bytes each). The result is the bytes that
        write(key, pack(IRHeader(0, label, id, id2), payload)) of each record would give. A
        record that is not a plain scalar-label frame (a vector label, a header split by the
        magic number) is rewritten through write() instead.
        """
        from .format import IRHeader, read_frame_at, unpack

        if self.closed:
            raise ValueError(f"{self.rec_path}: write after close")
        rec_path = Path(rec_path)
        keys, offs = read_idx(Path(idx_path) if idx_path is not None else default_idx_path(rec_path))
        n = len(keys)
        if labels is not None and len(labels) != n:
            raise ValueError(f"{rec_path}: {len(labels)} labels for {n} records")
        size = rec_path.stat().st_size
        if n == 0:
            return 0
        with open(rec_path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        whole = None
        try:
            whole = np.frombuffer(mm, np.uint8)
            plain = _plain_frames(whole, offs, size)
            if not plain:  # the general path, record by record
                for j, (k, off) in enumerate(zip(keys.tolist(), offs.tolist())):
                    record, _ = read_frame_at(mm, off, rec_path)
                    if labels is not None:
                        h, payload = unpack(record)
                        record = pack(IRHeader(0, float(labels[j]), h.id, h.id2), payload)
                    self.write(k, record)
                return n
            self._flush()
            lab = None if labels is None else np.asarray(labels, dtype="<f4")
            base = self._pos
            for a in range(0, size, chunk):
                b = min(a + chunk, size)
                buf = bytearray(mm[a:b])
                if lab is not None:
                    lo, hi = np.searchsorted(offs + 12, [a, b])
                    if lo < hi:  # label fields are 4-aligned, and so are the chunk bounds
                        np.frombuffer(buf, "<f4")[(offs[lo:hi] + 12 - a) // 4] = lab[lo:hi]
                self._rec.write(buf)  # a fresh bytearray each chunk: no copy of it needed
        finally:
            del whole
            if not isinstance(mm, bytes):
                mm.close()
        self._commit_chunk(keys.tolist(), keys, (offs + base).tolist(), base + size)
        return n

    def _flush(self) -> None:
        if self._pieces:
            self._rec.write_pieces(self._pieces)
            self._pieces = []
        if self._lines:
            _writev_all(self._idx.fileno(), [b"".join(self._lines)])
            self._lines = []

    def _check_duplicates(self) -> None:
        if not self._unordered:
            return
        keys = read_idx(self._idx_tmp)[0]
        uniq, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{self.rec_path}: key {int(uniq[counts > 1][0])} was written more than once")

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._flush()
            self._check_duplicates()
            self._rec.finish(self.durable)
            if self.durable:
                os.fsync(self._idx.fileno())
            self._idx.close()
        except BaseException:
            self.abort()
            raise
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)
        self.closed = True

    def abort(self) -> None:
        """Drop everything written so far."""
        if self.closed:
            return
        self.closed = True
        for f, p in ((self._rec, self._rec_tmp), (self._idx, self._idx_tmp)):
            try:
                f.close()
            finally:
                if p.exists():
                    p.unlink()

    def __del__(self) -> None:  # an unclosed writer must not leave temp files
        try:
            if not self.closed:
                self.abort()
        except Exception:
            pass


