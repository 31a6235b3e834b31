"""MXNet RecordIO, read and written natively (no mxnet import), byte-compatible with mxnet 1.9.

File format (dmlc recordio, as mxnet writes it):
  frame  = uint32 magic 0xced7230a, uint32 lrec, data, zero padding to a multiple of 4
  lrec   = (cflag << 29) | len(data); cflag 0 = whole record, 1/2/3 = first/middle/last part of a
           record that was split where the magic number appeared (4-aligned) inside it; the split
           drops those 4 bytes and the reader puts them back between the parts.
  record = IRHeader 'IfQQ' (flag, label, id, id2; 24 bytes), flag float32 labels when flag > 0,
           then the payload (usually a JPEG).
  .idx   = text, one "key<TAB>offset-of-the-frame's-magic" line per record.

Errors from a bad file are RecordIOError (a PipelineError) with one line naming the file and the
key or byte offset.
"""
from __future__ import annotations

import mmap
import numbers
import os
import struct
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Union

import numpy as np

from .errors import PipelineError

__all__ = [
    "MAGIC", "MAGIC_BYTES", "IR_SIZE", "IRHeader", "RecordIOError", "RecordKeyError", "pack", "unpack", "label_of",
    "frame", "RecordWriter", "RecordReader", "encode_jpeg", "decode_rgb", "pack_img", "unpack_img",
    "read_idx", "read_frame_at", "default_idx_path", "PackLayout", "read_layout", "read_property",
    "write_property", "image_label", "class_label",
]

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_LENGTH = (1 << 29) - 1
_LEN_MASK = (1 << 29) - 1
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24
_HEAD = struct.Struct("<II")
_FRAME_IR = struct.Struct("<IIIfQQ")  # frame head + scalar IRHeader, 32 bytes
_CHUNK_BYTES = 4 << 20  # write_images frames this much at a time
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by len % 4


class RecordIOError(PipelineError):
    """A RecordIO file (or its .idx / property) is malformed; the message names file and key/offset."""


class RecordKeyError(RecordIOError, KeyError):
    """A key that the .idx does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IRHeader(NamedTuple):
    flag: int
    label: Union[float, np.ndarray]
    id: int
    id2: int


# --------------------------------------------------------------------------- records

def pack(header: IRHeader | tuple, payload: bytes) -> bytes:
    """IRHeader + payload -> record bytes, exactly as mxnet.recordio.pack.

    A number label goes into the header (flag 0); anything else is a float32 vector stored
    after the header (flag = its length, header label 0).
    """
    flag, label, id_, id2 = header
    t = type(label)
    if t is float or t is int or isinstance(label, numbers.Number):
        return _IR.pack(0, label, id_, id2) + payload
    vec = np.asarray(label, dtype=np.float32).reshape(-1)
    return _IR.pack(vec.size, 0.0, id_, id2) + vec.tobytes() + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Record bytes -> (IRHeader, payload). flag > 0: label is a float32 vector of `flag` values."""
    if len(record) < IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if end > len(record):
            raise ValueError(f"IRHeader flag {flag} asks for {flag} float labels but the record has "
                             f"{len(record) - IR_SIZE} bytes after the header")
        vec = np.frombuffer(record, np.float32, flag, IR_SIZE)
        return IRHeader(flag, vec, id_, id2), record[end:] if type(record) is bytes else bytes(record[end:])
    return IRHeader(flag, label, id_, id2), record[IR_SIZE:] if type(record) is bytes else bytes(record[IR_SIZE:])


def label_of(header: IRHeader) -> float:
    """The class label of an image record: the scalar, or label[0] of a vector label."""
    lab = header.label
    if isinstance(lab, np.ndarray):
        if lab.size == 0:
            raise ValueError("empty label vector")
        return float(lab.flat[0])
    return float(lab)


def frame(record: bytes) -> bytes:
    """The bytes dmlc's RecordIOWriter puts in the file for one record (split at aligned magics)."""
    n = len(record)
    if n > MAX_LENGTH:
        raise ValueError(f"record of {n} bytes exceeds the RecordIO limit of {MAX_LENGTH} bytes")
    i = record.find(MAGIC_BYTES)
    while i >= 0 and i & 3:
        i = record.find(MAGIC_BYTES, i + 1)
    if i < 0:
        return _HEAD.pack(MAGIC, n) + record + _PADS[n & 3]
    parts = []
    lower = n & ~3
    dptr = 0
    while 0 <= i < lower:
        if i & 3 == 0:
            parts.append(_HEAD.pack(MAGIC, ((1 if dptr == 0 else 2) << 29) | (i - dptr)))
            parts.append(record[dptr:i])
            dptr = i + 4
            i = record.find(MAGIC_BYTES, dptr)
        else:
            i = record.find(MAGIC_BYTES, i + 1)
    parts.append(_HEAD.pack(MAGIC, (3 << 29) | (n - dptr)))
    parts.append(record[dptr:])
    parts.append(_PADS[n & 3])
    return b"".join(parts)


def read_frame_at(buf, off: int, path: object = "<buffer>") -> tuple[bytes, int]:
    """Decode the record whose frame starts at `off`; return (record bytes, offset after it)."""
    size = len(buf)
    parts: Optional[list] = None
    pos = off
    first = True
    while True:
        if pos + 8 > size:
            what = "truncated" if pos < size or not first else "past the end of the file"
            raise RecordIOError(f"{path}: offset {pos}: {what} (frame header needs 8 bytes, "
                                f"{max(size - pos, 0)} left)")
        magic, lrec = _HEAD.unpack_from(buf, pos)
        if magic != MAGIC:
            raise RecordIOError(f"{path}: offset {pos}: bad magic 0x{magic:08x} (not the start of a record)")
        cflag = lrec >> 29
        n = lrec & _LEN_MASK
        start = pos + 8
        end = start + n
        if end > size:
            raise RecordIOError(f"{path}: offset {pos}: truncated record (needs {n} bytes, {size - start} left)")
        nxt = start + ((n + 3) & ~3)
        if first:
            if cflag == 0:
                return bytes(buf[start:end]), nxt
            if cflag != 1:
                raise RecordIOError(f"{path}: offset {pos}: continuation frame (cflag {cflag}) where a "
                                    f"record should start")
            parts = [buf[start:end]]
            first = False
        else:
            if cflag not in (2, 3):
                raise RecordIOError(f"{path}: offset {pos}: split record started at offset {off} is not "
                                    f"continued (cflag {cflag})")
            parts.append(MAGIC_BYTES)
            parts.append(buf[start:end])
            if cflag == 3:
                return b"".join(parts), nxt
        pos = nxt


# --------------------------------------------------------------------------- images

def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes (cv2 from BGR, as insightface's packers do)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 HxWx3; ValueError when it is not an image."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("payload is not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def pack_img(header: IRHeader | tuple, rgb: np.ndarray, quality: int = 95) -> bytes:
    return pack(header, encode_jpeg(rgb, quality))


def unpack_img(record: bytes) -> tuple[IRHeader, np.ndarray]:
    header, payload = unpack(record)
    return header, decode_rgb(payload)


# --------------------------------------------------------------------------- writer

def _has_aligned_magic(record: bytes, n: int) -> bool:
    """Does the magic number sit at a 4-aligned offset of the record (where dmlc splits)?"""
    if n < 4:
        return False
    if n < 256:
        return any(record[i:i + 4] == MAGIC_BYTES for i in range(0, n - 3, 4))
    return bool((np.frombuffer(record, "<u4", n >> 2) == MAGIC).any())


def _writev_all(fd: int, pieces: list) -> None:
    total = sum(len(p) for p in pieces)
    done = os.writev(fd, pieces)
    if done == total:
        return
    rest = b"".join(bytes(p) for p in pieces)[done:]  # a short write: finish it plainly
    while rest:
        done = os.write(fd, rest)
        rest = rest[done:]


def default_idx_path(rec_path: str | os.PathLike) -> Path:
    return Path(rec_path).with_suffix(".idx")


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


# --------------------------------------------------------------------------- reader

def read_idx(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse a .idx into (keys int64, offsets int64), in file order. One-line error on a bad line."""
    idx_path = Path(idx_path)
    try:
        data = idx_path.read_bytes()
    except FileNotFoundError:
        raise RecordIOError(f"{idx_path}: index file does not exist") from None
    tokens = data.split()
    if len(tokens) % 2 == 0:
        try:
            arr = np.array(tokens, dtype=np.int64).reshape(-1, 2) if tokens else np.zeros((0, 2), np.int64)
            lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
            if lines == len(arr):
                return arr[:, 0].copy(), arr[:, 1].copy()
        except ValueError:
            pass
    # slow path: find the first bad line for the message
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            if lineno == data.count(b"\n") + 1:
                break
            raise RecordIOError(f"{idx_path}: line {lineno}: empty line (expected 'key<TAB>offset')")
        fields = line.split()
        if len(fields) != 2 or not all(f.lstrip(b"-").isdigit() for f in fields):
            raise RecordIOError(f"{idx_path}: line {lineno}: expected 'key<TAB>offset', got {line[:60]!r}")
    raise RecordIOError(f"{idx_path}: malformed index")  # pragma: no cover


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


# --------------------------------------------------------------------------- insightface layout

class PackLayout(NamedTuple):
    """What a training .rec holds: image keys, and per identity its (start, end) key range."""

    kind: str                   # "insightface" (header record 0) or "plain" (im2rec: every record an image)
    image_keys: list            # keys of image records
    identity_keys: list         # keys of identity records (insightface only)
    identity_ranges: list       # (start, end) image key range per identity record, end exclusive


def read_layout(reader: RecordReader) -> PackLayout:
    """Tell an insightface pack (record 0: flag >= 2, label (N+1, N+K+1), no payload) from a plain pack."""
    keys = reader.keys
    if 0 in reader.offsets:
        h, payload = reader.unpack(0)
        if h.flag >= 2 and len(payload) == 0:  # an image record 0 (plain pack, vector label) has a payload
            first_id, end_id = int(h.label[0]), int(h.label[1])
            if not 1 <= first_id <= end_id:
                raise RecordIOError(f"{reader.rec_path}: key 0: header label ({first_id}, {end_id}) is not a "
                                    f"valid (first identity key, end) range")
            id_keys = list(range(first_id, end_id))
            ranges = []
            for k in id_keys:
                if k not in reader.offsets:
                    raise RecordKeyError(f"{reader.idx_path}: identity record key {k} (from header record 0) "
                                         f"is not in the index")
                ih = reader.header(k)
                if ih.flag < 2:
                    raise RecordIOError(f"{reader.rec_path}: key {k}: identity record has no (start, end) label")
                ranges.append((int(ih.label[0]), int(ih.label[1])))
            return PackLayout("insightface", list(range(1, first_id)), id_keys, ranges)
    return PackLayout("plain", list(keys), [], [])


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """`property` file -> (num_classes, height, width)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise RecordIOError(f"{path}: property file does not exist (expected one line 'num_classes,H,W')") from None
    except UnicodeDecodeError:
        raise RecordIOError(f"{path}: property file is not text") from None
    try:
        c, h, w = (int(x) for x in text.split(","))
    except ValueError:
        raise RecordIOError(f"{path}: line 1: expected 'num_classes,H,W', got {text[:60]!r}") from None
    return c, h, w


def write_property(path: str | os.PathLike, num_classes: int, height: int, width: int) -> None:
    from .fsutil import write_text_atomic

    write_text_atomic(path, f"{num_classes},{height},{width}\n")


def image_label(reader: RecordReader, key: int) -> int:
    """Integer class label of an image record; one clear error when it is not a number."""
    return class_label(reader.header(key), reader.rec_path, key)


def class_label(header: IRHeader, rec_path: str | os.PathLike, key: int) -> int:
    """The class number in an image record's header; one clear error naming file and key."""
    try:
        lab = label_of(header)
    except ValueError as e:
        raise RecordIOError(f"{rec_path}: key {key}: label: {e}") from None
    if not np.isfinite(lab) or lab != int(lab) or lab < 0:
        raise RecordIOError(f"{rec_path}: key {key}: label {lab!r} is not a class number")
    return int(lab)
