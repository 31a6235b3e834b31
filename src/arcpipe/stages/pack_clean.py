"""Repack the cleaned training set: the kept images under their new labels, data/pack_clean/.

    python scripts/pack_clean.py [--params params.yaml ...]

The pack stage's layout (arcpipe.pack) over other inputs: the raw pack pack_clean.pack_dir
(train.rec/.idx, property, manifest.parquet, summary.json) and the clean stage's pack_clean.clean_dir
(kept.parquet, removals.parquet). Writes pack_clean.out_dir, whole or not at all:

    train.rec, train.idx   header record, the kept images at keys 1..N ordered by (new label, raw
                           key), one identity record per new label: insightface's layout
    property               "C',H,W" (H, W: the raw pack's)
    train_flat.rec/.idx    (pack_clean.flat_shuffled) the same image records, seeded shuffle
    manifest.parquet       one row per image of the raw pack: key (new; -1 removed), label (new),
                           raw_key, old_label, packed, reason ("clean:<rule>" for a removed image),
                           identity, source, align_key, flat_key
    summary.json           in (the raw pack's images) = out + rejected by rule

Image records are copied from the raw pack's train.rec by key: the same JPEG bytes and IRHeader
(id = the raw pack's key, so a record traces back) with only the label patched; re-encoded only
when pack_clean.quality is set and differs from the raw pack's quality.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PipelineError
from ..fsutil import atomic_path
from ..pack import RawRecords, flat_order, plan_repack, write_flat_records, write_insightface_pack
from ..recordio import read_property, write_property
from ..shards import write_parquet_atomic

__all__ = ["run"]


def _raw_quality(pack_dir: Path):
    try:
        q = json.loads((pack_dir / "summary.json").read_text()).get("quality")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return int(q) if isinstance(q, (int, float)) else None


def run(ctx) -> dict:
    p = ctx.params.pack_clean
    raw = ctx.require_path("pack_clean.pack_dir", p.pack_dir)
    clean_dir = ctx.require_path("pack_clean.clean_dir", p.clean_dir)
    for f in ("manifest.parquet", "property", "train.idx", "train.rec"):
        if not (raw / f).is_file():
            hint = " (a sharded pack, pack.shards > 1, has no train.rec: repack it with pack.shards 1)" \
                if f == "train.rec" else ""
            raise PipelineError(f"{raw / f}: does not exist{hint}")
    for f in ("kept.parquet", "removals.parquet"):
        if not (clean_dir / f).is_file():
            raise PipelineError(f"{clean_dir / f}: does not exist (the clean stage writes it)")
    man = pd.read_parquet(raw / "manifest.parquet")
    missing = sorted({"key", "label", "packed"} - set(man.columns))
    if missing:
        raise PipelineError(f"{raw / 'manifest.parquet'}: lacks columns {', '.join(missing)}")
    packed = man[man["packed"].astype(bool)].sort_values("key", kind="stable").reset_index(drop=True)
    kept = pd.read_parquet(clean_dir / "kept.parquet")
    removals = pd.read_parquet(clean_dir / "removals.parquet")
    removed = removals[removals["level"] == "image"]
    try:
        removed = removed.assign(key=removed["key"].astype(np.int64))
    except (ValueError, TypeError):
        raise PipelineError(f"{clean_dir / 'removals.parquet'}: image keys are not record keys of a pack") from None
    plan = plan_repack(packed, kept, removed, str(clean_dir / "kept.parquet"), str(raw / "manifest.parquet"))
    rows = plan[plan["packed"]]
    if rows.empty:
        raise PipelineError(f"{clean_dir / 'kept.parquet'}: the cleaning kept no image; nothing to pack")
    raw_classes, h, w = read_property(raw / "property")
    num_classes = int(rows["label"].max()) + 1
    raw_q = _raw_quality(raw)
    reencode = None if p.quality is None or p.quality == raw_q else p.quality
    if reencode is not None:
        ctx.log.warning("re-encoding at quality %d the raw pack's JPEGs (quality %s): a second lossy generation",
                        reencode, raw_q if raw_q is not None else "not recorded")
    raw_keys = rows["raw_key"].to_numpy(np.int64)
    labels = rows["label"].to_numpy(np.int64)
    old = rows["old_label"].to_numpy(np.int64)
    out = Path(p.out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        files = {"train.rec": write_insightface_pack(
            tmp / "train.rec", labels, RawRecords(raw / "train.rec", raw_keys, old, reencode), p.durable,
            desc="pack_clean")}
        plan["flat_key"] = -1
        if p.flat_shuffled:
            order = flat_order(len(rows), p.seed)
            flat = RawRecords(raw / "train.rec", raw_keys[order], old[order], reencode)
            write_flat_records(tmp / "train_flat.rec", labels[order], raw_keys[order], flat.payloads, p.durable)
            flat_key = np.empty(len(rows), dtype=np.int64)
            flat_key[order] = np.arange(len(rows))
            plan.loc[rows.index, "flat_key"] = flat_key
            files["train_flat.rec"] = {"images": len(order), "bytes": (tmp / "train_flat.rec").stat().st_size}
        write_property(tmp / "property", num_classes, h, w)
        write_parquet_atomic(tmp / "manifest.parquet", plan)
        rejected = plan.loc[~plan["packed"], "reason"].value_counts().sort_index()
        counts = {
            "pack_dir": str(raw), "clean_dir": str(clean_dir),
            "in": len(plan), "out": len(rows),
            "rejected": {str(k): int(v) for k, v in rejected.items()},
            "num_classes": num_classes, "num_classes_in": raw_classes, "image_size": [h, w],
            "quality": raw_q if reencode is None else reencode, "raw_quality": raw_q,
            "reencoded": reencode is not None, "flat_shuffled": bool(p.flat_shuffled), "seed": p.seed,
            "records": "copied from the raw pack's train.rec, label patched (IRHeader id: the raw key)"
                       + (", JPEG re-encoded" if reencode is not None else ""),
            "files": files,
        }
        ctx.write_summary(tmp / "summary.json", counts)
    ctx.log.info("%d of %d images packed under %d labels (of %d) -> %s", counts["out"], counts["in"], num_classes,
                 raw_classes, out)
    return counts
