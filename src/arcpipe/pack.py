"""Packing: aligned faces -> insightface training RecordIO (train.rec/.idx + property).

Layout written (what insightface's MXFaceDataset reads):
  key 0            IRHeader flag 2, label (N+1, N+K+1), empty payload
  keys 1..N        images, identities contiguous in sorted identity order, scalar label 0..C-1
  keys N+1..N+K    one record per identity, label (start, end) of its image keys, end exclusive
  property         "C,H,W"
Optional: shards train_000.rec ... (each a complete pack over a contiguous block of identities,
global labels), and train_flat.rec: image records only, scalar labels, seeded shuffle (DALI).

A cleaned pack (the pack_clean stage) is the same layout over a subset of a pack's images under new
labels: `plan_repack` checks the clean stage's kept list against the pack and numbers the new
records, `RawRecords` hands the pack's own records back with the label patched (the JPEG and the
IRHeader id, the raw key, unchanged), and the writers below are shared.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .errors import PipelineError
from .imageio import decode_rgb, encode_jpeg
from .recordio import IRHeader, RecordWriter, pack

__all__ = ["plan_pack", "write_train_pack", "write_insightface_pack", "write_flat_pack", "write_flat_records",
           "flat_order", "identity_blocks", "aligned_jpeg_quality", "image_size", "plan_repack", "RawRecords"]


def aligned_jpeg_quality(directory: Path) -> Optional[int]:
    """The JPEG quality the align stage encoded with, from its summary.json (None if not recorded)."""
    path = Path(directory) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    q = summary.get("jpeg_quality")
    if q is None and isinstance(summary.get("params"), dict):
        q = summary["params"].get("jpeg_quality")
    return int(q) if isinstance(q, (int, float)) else None


def plan_pack(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per input row: which are packed (crop + identity), their labels and train.rec keys.

    Packed rows are ordered by (identity, row); labels are 0..C-1 over the sorted identities that
    keep at least one image; keys are 1..N in that order.
    """
    need = {"row", "identity", "key", "status"}
    missing = need - set(manifest.columns)
    if missing:
        raise PipelineError(f"aligned manifest lacks columns: {', '.join(sorted(missing))}")
    m = manifest.copy()
    m["identity"] = m["identity"].fillna("").astype(str)
    has_crop = m["key"].astype(np.int64) >= 0
    has_id = m["identity"] != ""
    reason = np.where(~has_crop, "no_crop:" + m["status"].astype(str), np.where(~has_id, "no_identity", ""))
    m["pack_status"] = np.where(reason == "", "packed", "rejected")
    m["pack_reason"] = reason
    packed = m[m["pack_status"] == "packed"].sort_values(["identity", "row"], kind="stable")
    ids = sorted(packed["identity"].unique())
    labels = {name: i for i, name in enumerate(ids)}
    m["pack_label"] = -1
    m["pack_key"] = -1
    m.loc[packed.index, "pack_label"] = packed["identity"].map(labels).astype(np.int64).to_numpy()
    m.loc[packed.index, "pack_key"] = np.arange(1, len(packed) + 1, dtype=np.int64)
    m["align_key"] = m["key"].astype(np.int64)
    return m


def identity_blocks(label_counts: Sequence[int], shards: int) -> list[tuple[int, int]]:
    """Split identities 0..C-1 into `shards` contiguous blocks of about equal image counts."""
    counts = np.asarray(label_counts, dtype=np.int64)
    c = len(counts)
    if shards > max(c, 1):
        raise PipelineError(f"pack.shards = {shards} exceeds the {c} identities to pack")
    cum = np.concatenate([[0], np.cumsum(counts)])
    total = cum[-1]
    cuts = [0]
    for s in range(1, shards):
        target = total * s / shards
        cut = int(np.searchsorted(cum, target))
        cut = min(max(cut, cuts[-1] + 1), c - (shards - s))
        cuts.append(cut)
    cuts.append(c)
    return [(cuts[i], cuts[i + 1]) for i in range(shards)]


def _payloads(aligned, align_keys: Sequence[int], reencode: Optional[int]):
    for k in align_keys:
        jpeg = aligned.read_jpeg(int(k))
        if reencode is not None:
            try:
                jpeg = encode_jpeg(decode_rgb(jpeg), reencode)
            except ValueError:
                raise PipelineError(f"{getattr(aligned, 'dir', '?')}/faces.rec: key {k}: stored JPEG does not decode") from None
        yield jpeg


def write_train_pack(rec_path: Path, rows: pd.DataFrame, aligned, reencode: Optional[int],
                     durable: bool = True, chunk: int = 2048, desc: str = "pack") -> dict:
    """Write one insightface-layout pack for `rows` (packed rows, in key order, labels global).

    Keys are renumbered 1..n inside the file; returns {images, identities, bytes}.
    """
    gen = _payloads(aligned, rows["align_key"].to_numpy(np.int64), reencode)
    return write_insightface_pack(rec_path, rows["pack_label"].to_numpy(np.int64),
                                  lambda a, b: ([next(gen) for _ in range(b - a)], None), durable, chunk, desc)


def write_insightface_pack(rec_path: Path, labels: np.ndarray, images: Callable[[int, int], tuple[list, Optional[list]]],
                           durable: bool = True, chunk: int = 2048, desc: str = "pack") -> dict:
    """The insightface layout over images 0..n-1 with `labels` (non-decreasing, each identity one run):
    the header record, image records at keys 1..n, one identity record per run.

    images(a, b) -> (payloads, ids) of images a..b-1: their JPEG bytes, and the IRHeader ids to give
    them (None: their keys). Returns {images, identities, bytes}.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    # identity ranges over the local keys 1..n
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change]) + 1
    ends = np.concatenate([change, [n]]) + 1
    k = len(starts) if n else 0
    with RecordWriter(rec_path, durable=durable) as w:
        w.write(0, pack(IRHeader(0, [n + 1, n + k + 1], 0, 0), b""))
        bar = tqdm(total=n, desc=desc, unit="img", disable=None)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            payloads, ids = images(a, b)
            keys = list(range(a + 1, b + 1))
            w.write_images(keys, labels[a:b].astype(np.float64).tolist(), payloads, ids=ids)
            bar.update(b - a)
        bar.close()
        for j in range(k):
            w.write(n + 1 + j, pack(IRHeader(0, [int(starts[j]), int(ends[j])], 0, 0), b""))
    return {"images": n, "identities": k, "bytes": rec_path.stat().st_size}


def flat_order(n: int, seed: int) -> np.ndarray:
    """The flat copy's seeded shuffle: positions 0..n-1 in flat-file order."""
    return np.random.default_rng(seed).permutation(n)


def write_flat_pack(rec_path: Path, rows: pd.DataFrame, aligned, reencode: Optional[int], seed: int,
                    durable: bool = True, chunk: int = 2048) -> np.ndarray:
    """Image records only, scalar labels, shuffled with `seed`; keys 0..N-1 in file order.

    IRHeader id = the image's train.rec key, so a flat record traces back. Returns the order
    (train.rec keys in flat-file order).
    """
    shuffled = rows.iloc[flat_order(len(rows), seed)]
    train_keys = shuffled["pack_key"].to_numpy(np.int64).tolist()
    gen = _payloads(aligned, shuffled["align_key"].to_numpy(np.int64), reencode)
    write_flat_records(rec_path, shuffled["pack_label"].to_numpy(np.int64), train_keys,
                       lambda a, b: [next(gen) for _ in range(b - a)], durable, chunk)
    return np.asarray(train_keys, dtype=np.int64)


def write_flat_records(rec_path: Path, labels: np.ndarray, ids: Sequence[int],
                       payloads: Callable[[int, int], list], durable: bool = True, chunk: int = 2048) -> None:
    """Image records at keys 0..n-1 in the given order: scalar `labels`, IRHeader `ids`, and
    payloads(a, b) -> the JPEG bytes of records a..b-1."""
    labels = np.asarray(labels, dtype=np.int64).astype(np.float64).tolist()
    ids = list(ids)
    n = len(labels)
    with RecordWriter(rec_path, durable=durable) as w:
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            w.write_images(range(a, b), labels[a:b], payloads(a, b), ids=ids[a:b])


def image_size(aligned, align_key: int) -> tuple[int, int]:
    rgb = decode_rgb(aligned.read_jpeg(int(align_key)))
    return int(rgb.shape[0]), int(rgb.shape[1])


# --------------------------------------------------------------------------- cleaned packs

def plan_repack(packed: pd.DataFrame, kept: pd.DataFrame, removed: pd.DataFrame, kept_path: str = "kept.parquet",
                pack_path: str = "manifest.parquet") -> pd.DataFrame:
    """One row per image of a pack (`packed`: its manifest's packed rows), kept or removed.

    kept: key (the pack's record key), old_label, new_label (contiguous 0..C'-1); removed: key and
    rule of each removed image. Every image of the pack must be exactly one of the two, and a kept
    image's old label its label in the pack (one-line PipelineError naming the key otherwise).
    Kept rows get new keys 1..N ordered by (new label, raw key): each identity one run, as the
    layout needs (a merge can put a label's images after another's). Columns: key, label (new;
    -1 removed), raw_key, old_label, packed, reason ("" or "clean:<rule>"), and the pack manifest's
    identity, source, align_key where it has them.
    """
    need = {"key", "old_label", "new_label"}
    if need - set(kept.columns):
        raise PipelineError(f"{kept_path}: lacks columns {', '.join(sorted(need - set(kept.columns)))}")
    raw_keys = packed["key"].to_numpy(np.int64)
    raw_label = pd.Series(packed["label"].to_numpy(np.int64), index=raw_keys)
    keys = kept["key"].to_numpy(np.int64)
    dup = pd.Index(keys).duplicated()
    if dup.any():
        raise PipelineError(f"{kept_path}: key {int(keys[dup][0])} is listed more than once")
    absent = ~np.isin(keys, raw_keys)
    if absent.any():
        raise PipelineError(f"{kept_path}: key {int(keys[absent][0])} is not an image of {pack_path} "
                            f"({int(absent.sum())} kept keys are not; another pack's cleaning?)")
    old = kept["old_label"].to_numpy(np.int64)
    wrong = raw_label.loc[keys].to_numpy() != old
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise PipelineError(f"{kept_path}: key {int(keys[i])} has old_label {int(old[i])}, {pack_path} says "
                            f"{int(raw_label.loc[keys[i]])}")
    new = kept["new_label"].to_numpy(np.int64)
    classes = int(new.max()) + 1 if len(new) else 0
    if len(new) and (new.min() < 0 or len(np.unique(new)) != classes):
        raise PipelineError(f"{kept_path}: new labels are not contiguous 0..C-1 (min {int(new.min())}, "
                            f"max {int(new.max())}, {len(np.unique(new))} distinct)")
    rule_of = pd.Series(removed["rule"].astype(str).to_numpy(), index=removed["key"].to_numpy(np.int64))
    both = np.intersect1d(keys, rule_of.index.to_numpy())
    if len(both):
        raise PipelineError(f"{kept_path}: key {int(both[0])} is both kept and removed (by {rule_of.loc[both[0]]})")
    if rule_of.index.duplicated().any():
        raise PipelineError(f"removals: key {int(rule_of.index[rule_of.index.duplicated()][0])} is removed twice")
    neither = ~np.isin(raw_keys, keys) & ~np.isin(raw_keys, rule_of.index.to_numpy())
    if neither.any():
        raise PipelineError(f"{pack_path}: key {int(raw_keys[neither][0])} is neither kept nor removed by the "
                            f"cleaning ({int(neither.sum())} such images; the cleaning of another pack?)")
    plan = packed.copy()
    plan["raw_key"] = raw_keys
    plan["old_label"] = plan["label"].to_numpy(np.int64)
    new_of = pd.Series(new, index=keys)
    is_kept = np.isin(raw_keys, keys)
    plan["packed"] = is_kept
    plan["label"] = np.where(is_kept, new_of.reindex(raw_keys).fillna(-1).to_numpy(np.int64), -1)
    plan["reason"] = np.where(is_kept, "", "clean:" + rule_of.reindex(raw_keys).fillna("").astype(str).to_numpy())
    order = np.lexsort((raw_keys, np.where(is_kept, plan["label"].to_numpy(), np.iinfo(np.int64).max)))
    plan = plan.iloc[order].reset_index(drop=True)
    plan["key"] = -1
    plan.loc[plan["packed"], "key"] = np.arange(1, int(is_kept.sum()) + 1, dtype=np.int64)
    cols = [c for c in ["key", "label", "raw_key", "old_label", "packed", "reason", "identity", "source", "align_key"]
            if c in plan.columns]
    return plan[cols]


class RawRecords:
    """A pack's image records by raw key, as (payloads, ids) for the writers: the payload bytes and
    the IRHeader id as stored (re-encoded only when asked), the stored label checked against
    `labels` (the pack manifest's) on the way."""

    def __init__(self, rec_path: Path, raw_keys: np.ndarray, labels: np.ndarray, reencode: Optional[int] = None):
        from .recordio import RecordReader

        self.rec_path = Path(rec_path)
        self.reader = RecordReader(self.rec_path)
        self.raw_keys = np.asarray(raw_keys, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.reencode = reencode
        missing = self.raw_keys[~np.isin(self.raw_keys, np.fromiter(self.reader.offsets, np.int64))]
        if len(missing):
            raise PipelineError(f"{self.reader.idx_path}: key {int(missing[0])} of the manifest is not in the index "
                                f"({len(missing)} missing)")

    def __call__(self, a: int, b: int) -> tuple[list, list]:
        payloads, ids = [], []
        for k, want in zip(self.raw_keys[a:b].tolist(), self.labels[a:b].tolist()):
            h, payload = self.reader.unpack(k)
            if h.flag != 0 or h.id2 != 0:
                raise PipelineError(f"{self.rec_path}: key {k}: IRHeader flag {h.flag}, id2 {h.id2}; expected the "
                                    f"pack stage's scalar-label image records (flag 0, id2 0)")
            if h.label != want:
                raise PipelineError(f"{self.rec_path}: key {k}: label {h.label:g}, its manifest.parquet says {want}")
            if self.reencode is not None:
                try:
                    payload = encode_jpeg(decode_rgb(payload), self.reencode)
                except ValueError:
                    raise PipelineError(f"{self.rec_path}: key {k}: stored JPEG does not decode") from None
            payloads.append(bytes(payload))
            ids.append(int(h.id))
        return payloads, ids

    def payloads(self, a: int, b: int) -> list:
        return self(a, b)[0]
