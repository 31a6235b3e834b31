"""MXNet RecordIO, the format: frames, IRHeader records, the .idx text index, the insightface
pack layout and its `property` file (no mxnet import; byte-compatible with mxnet 1.9).

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

import numbers
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

import numpy as np

from ..errors import PipelineError
from ..imageio import decode_rgb, encode_jpeg

if TYPE_CHECKING:  # pragma: no cover
    from .reader import RecordReader

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_LENGTH = (1 << 29) - 1
_LEN_MASK = (1 << 29) - 1
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24
_HEAD = struct.Struct("<II")
_FRAME_IR = struct.Struct("<IIIfQQ")  # frame head + scalar IRHeader, 32 bytes
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

def pack_img(header: IRHeader | tuple, rgb: np.ndarray, quality: int = 95) -> bytes:
    return pack(header, encode_jpeg(rgb, quality))


def unpack_img(record: bytes) -> tuple[IRHeader, np.ndarray]:
    header, payload = unpack(record)
    return header, decode_rgb(payload)


def default_idx_path(rec_path: str | os.PathLike) -> Path:
    return Path(rec_path).with_suffix(".idx")



# --------------------------------------------------------------------------- index

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


# --------------------------------------------------------------------------- insightface layout

class PackLayout(NamedTuple):
    """What a training .rec holds: image keys, and per identity its (start, end) key range."""

    kind: str                   # "insightface" (header record 0) or "plain" (im2rec: every record an image)
    image_keys: list            # keys of image records
    identity_keys: list         # keys of identity records (insightface only)
    identity_ranges: list       # (start, end) image key range per identity record, end exclusive


def read_layout(reader: "RecordReader") -> PackLayout:
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
    from ..fsutil import write_text_atomic

    write_text_atomic(path, f"{num_classes},{height},{width}\n")


def image_label(reader: "RecordReader", key: int) -> int:
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

