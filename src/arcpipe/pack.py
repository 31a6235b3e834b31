"""The pack stage: aligned faces -> insightface training RecordIO (train.rec/.idx + property).

Layout written (what insightface's MXFaceDataset reads):
  key 0            IRHeader flag 2, label (N+1, N+K+1), empty payload
  keys 1..N        images, identities contiguous in sorted identity order, scalar label 0..C-1
  keys N+1..N+K    one record per identity, label (start, end) of its image keys, end exclusive
  property         "C,H,W"
Optional: shards train_000.rec ... (each a complete pack over a contiguous block of identities,
global labels), and train_flat.rec: image records only, scalar labels, seeded shuffle (DALI).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .errors import PipelineError
from .fsutil import atomic_path
from .recordio import IRHeader, RecordReader, RecordWriter, decode_rgb, encode_jpeg, pack, write_property

__all__ = ["open_aligned", "plan_pack", "write_train_pack", "write_flat_pack", "run_pack", "shard_bounds"]

log = logging.getLogger("arcpipe.pack")


class _MinimalAligned:
    """Contract-2 reader used only when arcpipe.aligned is not importable."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        mpath = self.dir / "manifest.parquet"
        if not mpath.is_file():
            raise PipelineError(f"{mpath}: aligned-set manifest does not exist (run the align stage)")
        self.manifest = pd.read_parquet(mpath)
        self._reader: Optional[RecordReader] = None

    def read_jpeg(self, key: int) -> bytes:
        if self._reader is None:
            self._reader = RecordReader(self.dir / "faces.rec", self.dir / "faces.idx")
        return self._reader.unpack(int(key))[1]


def open_aligned(directory: str | os.PathLike):
    """The align stage's output for one data set (arcpipe.aligned.AlignedSet when available)."""
    directory = Path(directory)
    try:
        from .aligned import AlignedSet
    except ImportError:  # pragma: no cover - only before the align module exists
        return _MinimalAligned(directory)
    return AlignedSet(directory)


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


def shard_bounds(label_counts: Sequence[int], shards: int) -> list[tuple[int, int]]:
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
    labels = rows["pack_label"].to_numpy(np.int64)
    align_keys = rows["align_key"].to_numpy(np.int64)
    n = len(rows)
    # identity ranges over the local keys 1..n
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], change]) + 1
    ends = np.concatenate([change, [n]]) + 1
    k = len(starts) if n else 0
    with RecordWriter(rec_path, durable=durable) as w:
        w.write(0, pack(IRHeader(0, [n + 1, n + k + 1], 0, 0), b""))
        gen = _payloads(aligned, align_keys, reencode)
        bar = tqdm(total=n, desc=desc, unit="img", disable=None)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            payloads = [next(gen) for _ in range(b - a)]
            keys = list(range(a + 1, b + 1))
            w.write_images(keys, labels[a:b].astype(np.float64).tolist(), payloads)
            bar.update(b - a)
        bar.close()
        for j in range(k):
            w.write(n + 1 + j, pack(IRHeader(0, [int(starts[j]), int(ends[j])], 0, 0), b""))
    return {"images": n, "identities": k, "bytes": rec_path.stat().st_size}


def write_flat_pack(rec_path: Path, rows: pd.DataFrame, aligned, reencode: Optional[int], seed: int,
                    durable: bool = True, chunk: int = 2048) -> np.ndarray:
    """Image records only, scalar labels, shuffled with `seed`; keys 0..N-1 in file order.

    IRHeader id = the image's train.rec key, so a flat record traces back. Returns the order
    (train.rec keys in flat-file order).
    """
    order = np.random.default_rng(seed).permutation(len(rows))
    shuffled = rows.iloc[order]
    labels = shuffled["pack_label"].to_numpy(np.int64).astype(np.float64).tolist()
    train_keys = shuffled["pack_key"].to_numpy(np.int64).tolist()
    gen = _payloads(aligned, shuffled["align_key"].to_numpy(np.int64), reencode)
    n = len(rows)
    with RecordWriter(rec_path, durable=durable) as w:
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            w.write_images(range(a, b), labels[a:b], [next(gen) for _ in range(b - a)], ids=train_keys[a:b])
    return np.asarray(train_keys, dtype=np.int64)


def _image_size(aligned, align_key: int) -> tuple[int, int]:
    rgb = decode_rgb(aligned.read_jpeg(int(align_key)))
    return int(rgb.shape[0]), int(rgb.shape[1])


def run_pack(ctx) -> dict:
    """Stage body: data/align/<pack.dataset>/ -> pack.out_dir (train.rec, train.idx, property, ...)."""
    p = ctx.params.pack
    src = ctx.require_path("pack.dataset", Path(ctx.params.align.out_dir) / p.dataset)
    out = Path(p.out_dir)
    aligned = open_aligned(src)
    plan = plan_pack(aligned.manifest)
    packed = plan[plan["pack_status"] == "packed"].sort_values("pack_key")
    if packed.empty:
        raise PipelineError(f"{src}/manifest.parquet: no row has both a crop and an identity; nothing to pack")
    align_q = aligned_jpeg_quality(src)
    if align_q is None:
        align_q = ctx.params.align.jpeg_quality
        ctx.log.warning("%s/summary.json records no jpeg_quality; assuming align.jpeg_quality = %d", src, align_q)
    reencode = None if p.quality == align_q else p.quality
    num_classes = int(packed["pack_label"].max()) + 1
    h, w = _image_size(aligned, int(packed["align_key"].iloc[0]))
    shards = ctx.shard_count(p.shards)
    only = ctx.shard[0] if ctx.shard is not None else None

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    plan["shard"] = -1
    plan["shard_key"] = -1
    if shards == 1:
        if only in (None, 0):
            files["train.rec"] = write_train_pack(out / "train.rec", packed, aligned, reencode, p.durable)
        plan.loc[packed.index, "shard"] = 0
        plan.loc[packed.index, "shard_key"] = packed["pack_key"].to_numpy()
    else:
        counts = np.bincount(packed["pack_label"].to_numpy(), minlength=num_classes)
        for i, (c0, c1) in enumerate(shard_bounds(counts, shards)):
            part = packed[(packed["pack_label"] >= c0) & (packed["pack_label"] < c1)]
            plan.loc[part.index, "shard"] = i
            plan.loc[part.index, "shard_key"] = np.arange(1, len(part) + 1)
            if only is None or only == i:
                name = f"train_{i:03d}.rec"
                files[name] = write_train_pack(out / name, part, aligned, reencode, p.durable, desc=f"shard {i}")
    plan["flat_key"] = -1
    if p.flat_shuffled and only in (None, 0):
        order = write_flat_pack(out / "train_flat.rec", packed, aligned, reencode, p.seed, p.durable)
        flat_of = pd.Series(np.arange(len(order)), index=order)
        plan.loc[packed.index, "flat_key"] = flat_of.loc[packed["pack_key"].to_numpy()].to_numpy()
        files["train_flat.rec"] = {"images": len(order), "bytes": (out / "train_flat.rec").stat().st_size}
    write_property(out / "property", num_classes, h, w)

    cols = [c for c in ["row", "source", "identity", "status", "pack_status", "pack_reason", "pack_label",
                        "pack_key", "align_key", "shard", "shard_key", "flat_key"] if c in plan.columns]
    manifest = plan[cols].rename(columns={"pack_label": "label", "pack_key": "key", "pack_status": "packed",
                                          "pack_reason": "reason", "status": "align_status"})
    manifest["packed"] = manifest["packed"] == "packed"
    with atomic_path(out / "manifest.parquet") as tmp:
        manifest.to_parquet(tmp, index=False)

    rejected = plan.loc[plan["pack_status"] != "packed", "pack_reason"].value_counts().sort_index()
    counts = {
        "in": int(len(plan)),
        "out": int(len(packed)),
        "rejected": {str(k): int(v) for k, v in rejected.items()},
        "num_classes": num_classes,
        "image_size": [h, w],
        "quality": p.quality,
        "align_jpeg_quality": align_q,
        "reencoded": reencode is not None,
        "shards": shards,
        "flat_shuffled": bool(p.flat_shuffled),
        "seed": p.seed,
        "files": files,
    }
    name = "summary.json" if only is None else f"summary_shard{only:03d}.json"
    ctx.write_summary(out / name, counts)
    return counts
