"""Tools over RecordIO packs: verify, rebuild the .idx, unpack to folders, stats, list.

verify walks the whole .rec, resynchronising after a bad frame, so it reports every bad record
(not only the first), then checks the .idx offsets, the insightface header/identity ranges and
the property file.
"""
from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .fsutil import atomic_path
from .recordio import (
    MAGIC_BYTES, RecordIOError, RecordReader, default_idx_path, label_of, read_frame_at, read_idx,
    read_layout, read_property, unpack,
)

__all__ = ["verify", "VerifyReport", "rebuild_idx", "unpack_tree", "stats", "list_records", "scan_tolerant"]

_HEAD = struct.Struct("<II")


@dataclass
class VerifyReport:
    rec_path: str
    records: int = 0
    bytes: int = 0
    split_records: int = 0
    images: int = 0
    identities: int = 0
    layout: str = "unknown"
    num_classes: Optional[int] = None
    problems: list = field(default_factory=list)  # one line each, naming offset or key

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"rec": self.rec_path, "ok": self.ok, "records": self.records, "bytes": self.bytes,
                "split_records": self.split_records, "images": self.images, "identities": self.identities,
                "layout": self.layout, "num_classes": self.num_classes, "problems": list(self.problems)}


def _next_frame_start(buf, pos: int) -> int:
    """The next 4-aligned offset after `pos` that looks like the start of a record, or len(buf)."""
    size = len(buf)
    i = pos + 4
    while True:
        i = buf.find(MAGIC_BYTES, i)
        if i < 0:
            return size
        if i % 4 == 0 and i + 8 <= size:
            _, lrec = _HEAD.unpack_from(buf, i)
            if lrec >> 29 in (0, 1) and i + 8 + (lrec & ((1 << 29) - 1)) <= size:
                return i
        i += 1


def scan_tolerant(reader: RecordReader) -> Iterator[tuple[int, Optional[bytes], Optional[str]]]:
    """(offset, record, None) for good records, (offset, None, message) for bad stretches."""
    buf = reader.buffer
    size = len(buf)
    pos = 0
    while pos < size:
        try:
            rec, nxt = read_frame_at(buf, pos, reader.rec_path)
        except RecordIOError as e:
            nxt = _next_frame_start(buf, pos)
            yield pos, None, f"{e}; skipped {nxt - pos} bytes to the next record"
            pos = nxt
            continue
        yield pos, rec, None
        pos = nxt


def verify(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None,
           property_path: str | os.PathLike | None = None, max_problems: int = 10_000) -> VerifyReport:
    rec_path = Path(rec_path)
    reader = RecordReader(rec_path, idx_path) if idx_path else RecordReader(rec_path)
    rep = VerifyReport(str(rec_path))
    rep.bytes = rec_path.stat().st_size
    problems = rep.problems

    def problem(msg: str) -> None:
        if len(problems) < max_problems:
            problems.append(msg)
        elif len(problems) == max_problems:
            problems.append(f"{rec_path}: more problems not listed")

    starts: dict[int, int] = {}  # offset -> position in file
    headers = []  # (offset, IRHeader or None)
    empty: dict[int, bool] = {}  # offset -> payload is empty
    buf = reader.buffer
    for off, rec, err in scan_tolerant(reader):
        if err:
            problem(err)
            continue
        _, lrec = _HEAD.unpack_from(buf, off)
        if lrec >> 29 == 1:
            rep.split_records += 1
        starts[off] = len(starts)
        try:
            h, payload = unpack(rec)
            empty[off] = len(payload) == 0
        except ValueError as e:
            problem(f"{rec_path}: offset {off}: {e}")
            h = None
        headers.append((off, h))
    rep.records = len(starts)
    header_at = dict(headers)

    # the index
    if reader.idx_path is None:
        problem(f"{default_idx_path(rec_path)}: index file does not exist (rebuild it with: rectool.py rebuild-idx)")
        return rep
    try:
        keys, offs = read_idx(reader.idx_path)
    except RecordIOError as e:
        problem(str(e))
        return rep
    key_at: dict[int, int] = {}
    seen_offsets = Counter()
    for k, o in zip(keys.tolist(), offs.tolist()):
        if k in key_at:
            problem(f"{reader.idx_path}: key {k} appears more than once")
        key_at[k] = o
        seen_offsets[o] += 1
        if o not in starts:
            problem(f"{reader.idx_path}: key {k}: offset {o} is not the start of a record in {rec_path}")
    for o, c in seen_offsets.items():
        if c > 1 and o in starts:
            problem(f"{reader.idx_path}: offset {o} is listed under {c} keys")
    unindexed = len(set(starts) - set(seen_offsets))
    if unindexed:
        problem(f"{reader.idx_path}: {unindexed} record(s) of {rec_path} have no index entry")

    def hdr(k: int):
        o = key_at.get(k)
        return header_at.get(o) if o is not None else None

    # the layout
    h0 = hdr(0)
    if h0 is not None and h0.flag >= 2 and empty.get(key_at[0], False):
        rep.layout = "insightface"
        first_id, end_id = int(h0.label[0]), int(h0.label[1])
        image_keys = range(1, first_id)
        rep.images = len(image_keys)
        rep.identities = max(end_id - first_id, 0)
        expected_start = 1
        for j, k in enumerate(range(first_id, end_id)):
            ih = hdr(k)
            if ih is None:
                problem(f"{reader.idx_path}: identity record key {k} (from header record 0) is missing")
                continue
            if ih.flag < 2:
                problem(f"{rec_path}: key {k}: identity record has no (start, end) label")
                continue
            s, e = int(ih.label[0]), int(ih.label[1])
            if s != expected_start or not s < e <= first_id:
                problem(f"{rec_path}: key {k}: identity range ({s}, {e}) does not continue at {expected_start} "
                        f"within images 1..{first_id - 1}")
            expected_start = e
            for ik in range(max(s, 1), min(e, first_id)):
                lh = hdr(ik)
                if lh is not None and lh.flag == 0 and lh.label != j:
                    problem(f"{rec_path}: key {ik}: label {lh.label} inside identity {j}'s range ({s}, {e})")
        if rep.identities and expected_start != first_id:
            problem(f"{rec_path}: identity ranges end at {expected_start}, images run to {first_id - 1}")
    else:
        rep.layout = "plain"
        image_keys = list(key_at)
        rep.images = len(image_keys)
    labels = set()
    for k in image_keys:
        ih = hdr(k)
        if ih is None:
            if k not in key_at:
                problem(f"{reader.idx_path}: image key {k} is missing")
            continue
        try:
            lab = label_of(ih)
        except ValueError as e:
            problem(f"{rec_path}: key {k}: label: {e}")
            continue
        if not np.isfinite(lab) or lab != int(lab) or lab < 0:
            problem(f"{rec_path}: key {k}: label {lab!r} is not a class number")
            continue
        labels.add(int(lab))
    if rep.layout == "plain":
        rep.identities = len(labels)

    # the property file
    prop = Path(property_path) if property_path else rec_path.parent / "property"
    if not prop.exists() and rep.layout == "insightface":
        problem(f"{prop}: property file does not exist (an insightface pack needs 'num_classes,H,W' beside it)")
    elif prop.exists() or property_path:
        try:
            c, _, _ = read_property(prop)
            rep.num_classes = c
            if labels and max(labels) >= c:
                problem(f"{prop}: num_classes {c} but labels go up to {max(labels)}")
            if rep.layout == "insightface" and rep.identities != c:
                problem(f"{prop}: num_classes {c} but {rec_path} holds {rep.identities} identity records")
        except RecordIOError as e:
            problem(str(e))
    return rep


def rebuild_idx(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None,
                keys: str = "position") -> int:
    """Write a fresh .idx from the .rec (atomically). keys: 'position' (0..n-1 in file order, right
    for insightface packs and our writers) or 'id' (each record's IRHeader id, as im2rec sets it).
    Raises at the first bad frame: fix or truncate the .rec first (verify lists them)."""
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else default_idx_path(rec_path)
    reader = RecordReader(rec_path)  # scan() walks the .rec only; the old .idx is never read
    lines = []
    seen = set()
    for i, (off, rec) in enumerate(reader.scan()):
        if keys == "position":
            k = i
        elif keys == "id":
            try:
                k = int(unpack(rec)[0].id)
            except ValueError as e:
                raise RecordIOError(f"{rec_path}: offset {off}: {e}") from None
            if k in seen:
                raise RecordIOError(f"{rec_path}: offset {off}: header id {k} repeats; use keys='position'")
            seen.add(k)
        else:
            raise ValueError(f"keys must be 'position' or 'id', got {keys!r}")
        lines.append(f"{k}\t{off}\n")
    with atomic_path(idx_path) as tmp:
        Path(tmp).write_text("".join(lines), encoding="ascii")
    return len(lines)


def unpack_tree(rec_path: str | os.PathLike, out_dir: str | os.PathLike, idx_path=None) -> dict:
    """Image records -> <out_dir>/<label>/<key>.jpg (payload bytes unchanged). Returns counts."""
    reader = RecordReader(rec_path, idx_path) if idx_path else RecordReader(rec_path)
    layout = read_layout(reader)
    counts: Counter = Counter()
    with atomic_path(out_dir) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True)
        for k in layout.image_keys:
            h, payload = reader.unpack(k)
            try:
                lab = label_of(h)
            except ValueError as e:
                raise RecordIOError(f"{reader.rec_path}: key {k}: label: {e}") from None
            if not np.isfinite(lab) or lab != int(lab):
                raise RecordIOError(f"{reader.rec_path}: key {k}: label {lab!r} is not a class number")
            d = tmp / str(int(lab))
            if counts[int(lab)] == 0:
                d.mkdir(exist_ok=True)
            (d / f"{k}.jpg").write_bytes(payload)
            counts[int(lab)] += 1
    return {"images": sum(counts.values()), "identities": len(counts), "out": str(out_dir)}


def stats(rec_path: str | os.PathLike, idx_path=None) -> dict:
    reader = RecordReader(rec_path, idx_path) if idx_path else RecordReader(rec_path)
    layout = read_layout(reader)
    labels = []
    sizes = []
    for k in layout.image_keys:
        h, payload = reader.unpack(k)
        labels.append(label_of(h))
        sizes.append(len(payload))
    lab = np.asarray(labels, dtype=np.float64)
    per_id = np.unique(lab, return_counts=True)[1] if len(lab) else np.zeros(0, int)
    out = {
        "rec": str(reader.rec_path), "layout": layout.kind, "records": len(reader), "images": len(layout.image_keys),
        "identity_records": len(layout.identity_keys), "classes": int(len(per_id)),
        "bytes": Path(reader.rec_path).stat().st_size,
        "payload_bytes_mean": float(np.mean(sizes)) if sizes else 0.0,
        "images_per_class": ({"min": int(per_id.min()), "median": float(np.median(per_id)), "max": int(per_id.max())}
                             if len(per_id) else {}),
        "label_range": [float(lab.min()), float(lab.max())] if len(lab) else [],
    }
    prop = Path(reader.rec_path).parent / "property"
    if prop.exists():
        out["property"] = list(read_property(prop))
    return out


def list_records(rec_path: str | os.PathLike, idx_path=None, limit: Optional[int] = None) -> Iterator[dict]:
    reader = RecordReader(rec_path, idx_path) if idx_path else RecordReader(rec_path)
    for n, k in enumerate(reader.keys):
        if limit is not None and n >= limit:
            return
        h, payload = reader.unpack(k)
        lab = h.label.tolist() if isinstance(h.label, np.ndarray) else h.label
        yield {"key": k, "offset": reader.offsets[k], "flag": h.flag, "label": lab, "id": h.id, "id2": h.id2,
               "payload_bytes": len(payload)}
