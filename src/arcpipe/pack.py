"""Packing: aligned faces -> insightface training RecordIO (train.rec/.idx + property).

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
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .errors import PipelineError
from .imageio import decode_rgb, encode_jpeg
from .recordio import IRHeader, RecordWriter, pack

__all__ = ["plan_pack", "write_train_pack", "write_flat_pack", "identity_blocks", "aligned_jpeg_quality", "image_size"]


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


def image_size(aligned, align_key: int) -> tuple[int, int]:
    rgb = decode_rgb(aligned.read_jpeg(int(align_key)))
    return int(rgb.shape[0]), int(rgb.shape[1])
