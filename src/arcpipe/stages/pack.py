"""Pack aligned faces into insightface training RecordIO: data/pack/ (train.rec/.idx, property).

    python scripts/pack.py [--shard I/K]

Reads data/align/<pack.dataset>/ and writes the insightface layout (arcpipe.pack): train.rec,
train.idx, property, manifest.parquet (one row per aligned row, packed or why not), optional
identity-block shards train_NNN.rec and a flat shuffled image-only copy train_flat.rec (DALI).
The whole pack is built in a sibling folder and renamed into place at the end: a failure
anywhere (the flat copy included) leaves the previous pack as it was.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..align.aligned_set import AlignedSet
from ..errors import PipelineError
from ..fsutil import atomic_path
from ..shards import write_parquet_atomic
from ..pack import (aligned_jpeg_quality, identity_blocks, image_size, plan_pack, write_flat_pack,
                    write_train_pack)
from ..recordio import write_property


def run(ctx) -> dict:
    p = ctx.params.pack
    src = ctx.require_path("pack.dataset", Path(ctx.params.align.out_dir) / p.dataset)
    out = Path(p.out_dir)
    aligned = AlignedSet(src)
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
    h, w = image_size(aligned, int(packed["align_key"].iloc[0]))
    shards = ctx.shard_count(p.shards)
    only = ctx.shard[0] if ctx.shard is not None else None
    job = dict(plan=plan, packed=packed, aligned=aligned, reencode=reencode, num_classes=num_classes, h=h, w=w,
               shards=shards, only=only, align_q=align_q)
    if only is None:  # the whole pack: built in a sibling folder, renamed into place only when all of it is there
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            return _write(ctx, tmp, **job)
    out.mkdir(parents=True, exist_ok=True)  # one shard of a sharded pack: its own files, each atomic
    return _write(ctx, out, **job)


def _write(ctx, out: Path, plan, packed, aligned, reencode, num_classes: int, h: int, w: int, shards: int,
           only, align_q: int) -> dict:
    p = ctx.params.pack
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
        for i, (c0, c1) in enumerate(identity_blocks(counts, shards)):
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
    write_parquet_atomic(out / "manifest.parquet", manifest)

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
