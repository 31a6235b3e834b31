"""Features of a source's images under one face model: what the cleaning rules start from.

    src = open_feature_source("data/pack", "pack")   # or (aligned set dir, "aligned")
    src.keys, src.labels, src.names                    # one row per image, in the source's order
    lo, hi = src.shard_bounds(i, k)                    # shard i of k: whole identities
    embed_rows(src, lo, hi, embedder, writer, workers=4)   # writer: FeatureWriter or PartWriter

Sources:
  pack     a training pack (arcpipe.pack: train.rec, train.idx, property): the image records in
           key order; key = the record's key as a string, label = the record's label (the
           identity records give each identity's key range: a header read per identity lists
           the pack, and every image's own label is checked as it is read).
  aligned  an aligned set (arcpipe.align.aligned_set): the manifest's rows that have a crop, in
           manifest order; key = the row's `source` (the item's stable key), label = the
           position of its identity among the sorted identity names, -1 without one.

The stored JPEGs are read here and decoded in a worker pool (arcpipe.evaluate.loader: the same
pool the evaluate stage feeds its model from); the model embeds batches of exactly
`embedder.batch_size` images in this process. A shard's part keeps the raw float32 features
(PartWriter: `.npy`, then a `.parquet` with keys, labels and the digest, written last), so a
merge feeds FeatureWriter exactly the rows a run in one go does: the same bytes either way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd

from ..errors import PipelineError
from ..fsutil import atomic_path, remove_path, sha256_file
from ..shards import bounds, part_is_complete, part_meta, write_part

__all__ = ["FeatureSource", "open_feature_source", "embed_rows", "check_model", "PartWriter", "part_complete",
           "append_part", "remove_leftovers", "FORMATS"]

FORMATS = ("pack", "aligned")
FACE = 112  # what every Embedder takes: 112 x 112 aligned crops
CHUNK = 65536  # rows per read when a part is merged


@dataclass
class FeatureSource:
    """The images of one source, one row each, in the source's order."""

    format: str
    path: Path
    rec: Path
    keys: np.ndarray            # str: the image's key in its source
    labels: np.ndarray          # int64, -1 where the image has no identity
    record_keys: np.ndarray     # int64: the .rec key each row is read from
    read: Callable[[int], bytes]  # row -> stored JPEG bytes (checks what it can about the record)
    fingerprint: dict[str, Any]  # what decides the rows and their bytes (parts are keyed on it)
    names: Optional[list[str]] = None  # identity name of each label 0..C-1 (aligned sets)
    counts: dict[str, Any] = field(default_factory=dict)  # in / rejected: how the rows came about
    _starts: Optional[np.ndarray] = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def run_starts(self) -> np.ndarray:
        """Rows where a run of one label begins (a pack: where each identity begins)."""
        if self._starts is None:
            lab = self.labels
            self._starts = np.zeros(0, np.int64) if lab.size == 0 else \
                np.concatenate([[0], np.flatnonzero(lab[1:] != lab[:-1]) + 1]).astype(np.int64)
        return self._starts

    def shard_bounds(self, index: int, count: int) -> tuple[int, int]:
        """Rows [lo, hi) of shard `index` of `count`: the equal-rows cut of arcpipe.shards.bounds
        moved to the nearest identity boundary, so a shard holds whole identities (with more
        shards than identities some shards are empty)."""
        return identity_bounds(self.run_starts(), len(self), index, count)

    def identities(self) -> pd.DataFrame:
        """label -> identity name ("" where the source names none) and image count, by label."""
        lab = self.labels[self.labels >= 0]
        classes = max(len(self.names or []), int(lab.max()) + 1 if lab.size else 0)
        images = np.bincount(lab, minlength=classes) if classes else np.zeros(0, np.int64)
        names = list(self.names or []) + [""] * (classes - len(self.names or []))
        return pd.DataFrame({"label": np.arange(classes, dtype=np.int64), "identity": names,
                             "images": images.astype(np.int64)})


def identity_bounds(starts: np.ndarray, n: int, index: int, count: int) -> tuple[int, int]:
    """arcpipe.shards.bounds(n, index, count), each end moved to the nearest of `starts` (or n)."""
    cuts = np.append(np.asarray(starts, np.int64), n)

    def snap(t: int) -> int:
        j = int(np.searchsorted(cuts, t))  # the first cut >= t (t <= n = cuts[-1])
        if j == 0 or cuts[j] == t:
            return int(cuts[j])
        return int(cuts[j]) if cuts[j] - t < t - cuts[j - 1] else int(cuts[j - 1])

    lo, hi = bounds(n, index, count)
    return snap(lo), snap(hi)


# ------------------------------------------------------------------------------------ sources

def open_feature_source(path: str | os.PathLike, fmt: str) -> FeatureSource:
    """List a source's images (see the module docstring); one-line PipelineError on a bad one."""
    if fmt == "pack":
        return _pack_source(Path(path))
    if fmt == "aligned":
        return _aligned_source(Path(path))
    raise PipelineError(f"{path}: unknown source format {fmt!r} ({', '.join(FORMATS)})")


def _require_files(*files: Path, what: str) -> None:
    for f in files:
        if not f.is_file():
            raise PipelineError(f"{f}: does not exist ({what})")


def _check_records(reader, keys: np.ndarray) -> None:
    """Every key is in the index, and the record furthest into the file is whole (a truncated
    .rec fails here, before anything is embedded)."""
    offsets = reader.offsets
    have = np.fromiter(offsets.keys(), np.int64, len(offsets))
    missing = np.asarray(keys, np.int64)[~np.isin(keys, have)]
    if missing.size:
        raise PipelineError(f"{reader.idx_path}: key {int(missing[0])} is not in the index ({missing.size} missing)")
    if offsets:
        last = max(offsets, key=offsets.__getitem__)
        reader.read(last)  # RecordIOError naming the file and offset when it is cut short


def _pack_source(path: Path) -> FeatureSource:
    from ..recordio import RecordReader, class_label, image_label, read_layout, read_property

    rec, idx, prop = path / "train.rec", path / "train.idx", path / "property"
    _require_files(rec, idx, prop, what="a training pack holds train.rec, train.idx and property")
    classes, h, w = read_property(prop)
    if (h, w) != (FACE, FACE):
        raise PipelineError(f"{prop}: the pack's images are {h}x{w}; the face models take {FACE}x{FACE} aligned faces")
    reader = RecordReader(rec, idx)
    layout = read_layout(reader)
    keys = np.asarray(layout.image_keys, dtype=np.int64)
    _check_records(reader, keys)
    if layout.kind == "insightface":
        labels = np.full(len(keys), -1, dtype=np.int64)
        expect = 1  # image keys are 1..N; identity ranges must tile them, in order
        for id_key, (s, e) in zip(layout.identity_keys, layout.identity_ranges):
            if s != expect or e < s:
                raise PipelineError(f"{rec}: key {id_key}: identity record range ({s}, {e}) does not start where "
                                    f"the previous identity ended (key {expect})")
            if e > s:
                labels[s - 1:e - 1] = image_label(reader, s)
            expect = e
        if expect != len(keys) + 1:
            raise PipelineError(f"{rec}: identity records cover image keys 1..{expect - 1}, the header says "
                                f"1..{len(keys)}")
    else:  # a plain im2rec pack: every record an image, each label read from its header
        labels = np.asarray([image_label(reader, int(k)) for k in keys], dtype=np.int64)
    if labels.size and labels.max() >= classes:
        k = int(keys[int(np.argmax(labels))])
        raise PipelineError(f"{rec}: key {k}: label {int(labels.max())} is not below the {classes} classes of {prop}")

    def read(row: int) -> bytes:
        key = int(keys[row])
        header, payload = reader.unpack(key)
        got = class_label(header, rec, key)
        want = int(labels[row])
        if got != want:
            raise PipelineError(f"{rec}: key {key}: label {got}, but its identity record puts it in label {want}")
        return payload

    return FeatureSource(
        "pack", path, rec, keys.astype(str), labels, keys, read,
        {"idx_sha256": sha256_file(idx), "rec_bytes": rec.stat().st_size, "property": [classes, h, w],
         "layout": layout.kind},
        counts={"in": int(len(keys)), "rejected": {}, "classes": classes})


def _aligned_source(path: Path) -> FeatureSource:
    from ..align.aligned_set import IDX, MANIFEST, REC, AlignedSet, identity_labels
    from ..recordio import RecordReader

    _require_files(path / MANIFEST, path / REC, path / IDX, what="an aligned set holds faces.rec, faces.idx and "
                                                                 "manifest.parquet (the align stage)")
    aset = AlignedSet(path)
    man = aset.manifest
    missing = sorted({"key", "source", "identity"} - set(man.columns))
    if missing:
        raise PipelineError(f"{path / MANIFEST}: lacks columns {', '.join(missing)}")
    faces = man[man["key"].to_numpy() >= 0]
    keys = faces["source"].astype(str).to_numpy()
    dup = pd.Index(keys).duplicated()
    if dup.any():
        raise PipelineError(f"{path / MANIFEST}: item key {keys[dup][0]!r} appears more than once")
    names = identity_labels(faces["identity"])
    labels = faces["identity"].map(names).fillna(-1).astype(np.int64).to_numpy()
    record_keys = faces["key"].to_numpy(np.int64)
    reader = RecordReader(path / REC, path / IDX)
    _check_records(reader, record_keys)

    def read(row: int) -> bytes:
        return reader.unpack(int(record_keys[row]))[1]

    return FeatureSource(
        "aligned", path, path / REC, keys, labels, record_keys, read,
        {"manifest_sha256": sha256_file(path / MANIFEST), "idx_sha256": sha256_file(path / IDX),
         "rec_bytes": (path / REC).stat().st_size},
        names=sorted(names, key=names.__getitem__),
        counts={"in": int(len(man)), "rejected": {"no_crop": int(len(man) - len(faces))} if len(man) > len(faces) else {}})


# ------------------------------------------------------------------------------------ embedding

def check_model(embedder) -> None:
    """One gray face through the model: an output that is not (1, embedding_size) fails here, in one
    line naming the model, before any worker starts or any file is opened."""
    face = np.full((1, FACE, FACE, 3), 128, dtype=np.uint8)
    embedder.embed(face, flip=False)


def _faces(src: FeatureSource, lo: int, hi: int, workers: int, desc: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, RGB faces) of rows [lo, hi), in order: JPEG bytes read here, decoded in the pool."""
    from ..evaluate.loader import decode_unit, init_decode, ordered_units, unit_size

    n = hi - lo
    size = unit_size(n, workers)
    rec = str(src.rec)

    def unit(i: int):
        a, b = lo + i * size, min(lo + (i + 1) * size, hi)
        return rec, src.record_keys[a:b].tolist(), [src.read(r) for r in range(a, b)]

    s = lo
    for imgs, err in ordered_units(decode_unit, n, size, unit, workers, init_decode, (), desc):
        if err is not None:
            raise PipelineError(err)
        yield np.arange(s, s + imgs.shape[0]), imgs
        s += imgs.shape[0]


def embed_rows(src: FeatureSource, lo: int, hi: int, embedder, writer, workers: int = 1, flip: bool = False,
               desc: str = "features") -> int:
    """Embed rows [lo, hi) of `src` in batches of embedder.batch_size and append them (raw) to
    `writer` (anything with append(keys, labels, features)); returns the rows written."""
    from ..evaluate.loader import rebatch

    done = 0
    for rows, imgs in rebatch(_faces(src, lo, hi, workers, desc), embedder.batch_size):
        feats = embedder.embed(imgs, flip=flip)
        writer.append(src.keys[rows], src.labels[rows], feats)
        done += len(rows)
    return done


# ------------------------------------------------------------------------------------ parts

class PartWriter:
    """One shard's part: `<part>.npy` (raw float32 rows, the model's output) written first, then
    `<part>.parquet` (key, label; the digest in its metadata) last: the part is complete when the
    parquet carries the digest. Used as a context manager, an error leaves neither file."""

    def __init__(self, path: Path, rows: int, dim: int, digest: str, extra: Optional[dict] = None):
        self.path, self.rows, self.dim, self.digest = Path(path), int(rows), int(dim), digest
        self.extra = dict(extra or {})
        remove_path(self.path)  # a part being rewritten is not complete meanwhile
        self._atomic = atomic_path(self.path.with_suffix(".npy"))
        tmp = self._atomic.__enter__()
        self._file = open(tmp, "wb")
        np.lib.format.write_array_header_1_0(self._file, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (self.rows, self.dim)})
        self._keys: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.count = 0

    def append(self, keys, labels, features) -> None:
        feats = np.ascontiguousarray(features, dtype="<f4")
        if feats.ndim != 2 or feats.shape[1] != self.dim or len(keys) != len(feats) or len(labels) != len(feats):
            raise PipelineError(f"{self.path}: {len(keys)} keys, {len(labels)} labels, features of shape "
                                f"{tuple(feats.shape)}; expected (n, {self.dim})")
        if self.count + len(feats) > self.rows:
            raise PipelineError(f"{self.path}: more than the {self.rows} rows of this part")
        self._file.write(feats.tobytes())
        self._keys.append(np.asarray(keys, dtype=str))
        self._labels.append(np.asarray(labels, dtype=np.int64))
        self.count += len(feats)

    def close(self) -> Path:
        self._file.close()
        if self.count != self.rows:
            raise PipelineError(f"{self.path}: {self.count} rows written, the part has {self.rows}")
        self._atomic.__exit__(None, None, None)
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
        df = pd.DataFrame({"key": cat(self._keys, str), "label": cat(self._labels, np.int64)})
        write_part(self.path, df, self.digest, {"dim": self.dim, **self.extra})
        return self.path

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.close()
            except BaseException as e:
                self._discard(type(e), e, None)
                raise
        else:
            self._discard(exc_type, exc, tb)
        return False

    def _discard(self, exc_type, exc, tb) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            self._atomic.__exit__(exc_type, exc or exc_type(), tb)  # removes the temporary .npy
        except BaseException:
            pass
        remove_path(self.path.with_suffix(".npy"))
        remove_path(self.path)


def part_complete(path: Path, digest: str, rows: int, dim: int) -> bool:
    """The part's parquet carries `digest` and its .npy holds rows x dim float32."""
    path = Path(path)
    npy = path.with_suffix(".npy")
    if not part_is_complete(path, digest) or not npy.is_file():
        return False
    meta = part_meta(path)
    if meta.get("rows") != rows or meta.get("dim") != dim:
        return False
    try:
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.dtype == np.dtype("<f4") and arr.shape == (rows, dim)


def append_part(path: Path, writer, chunk: int = CHUNK) -> int:
    """Feed a complete part's rows to `writer` (a FeatureWriter), `chunk` rows at a time."""
    path = Path(path)
    index = pd.read_parquet(path, columns=["key", "label"])
    keys, labels = index["key"].to_numpy(str), index["label"].to_numpy(np.int64)
    feats = np.load(path.with_suffix(".npy"), mmap_mode="r")
    if feats.shape[0] != len(keys):
        raise PipelineError(f"{path.with_suffix('.npy')}: {feats.shape[0]} rows, {path.name} lists {len(keys)}")
    for a in range(0, len(keys), chunk):
        writer.append(keys[a:a + chunk], labels[a:a + chunk], np.array(feats[a:a + chunk]))
    del feats
    return len(keys)


def remove_leftovers(path: Path) -> None:
    """What a killed writer of `path` (or of its .npy) left: the temporary siblings atomic_path makes."""
    path = Path(path)
    for p in path.parent.glob(f".{path.stem}.*.tmp-*"):
        remove_path(p)
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        remove_path(p)
