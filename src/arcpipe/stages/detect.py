"""Detect faces (MTCNN) in one data set of detect.datasets: data/detect/<NAME>/manifest.parquet.

    python scripts/detect.py --dataset NAME [--shard I/K] [--workers N]

One manifest row per input image, with the chosen face or why there is none. With --shard I/K
only part I is written (a cluster runs one job per shard); without it every missing part is
computed, then the parts are merged. A part is complete when its metadata carries the digest of
everything that decides its rows (the data set's params, the resolved preset, the item list):
parts from other params are recomputed, not reused. Parts, manifest and summary are each
written atomically; a run that dies leaves no manifest.parquet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..detect.rows import detect_batch, frame, init_worker, resolved_preset
from ..errors import PipelineError
from ..shards import (bounds, digest_of, invalidate, map_batches, part_is_complete, part_path, ranges, reconcile,
                      write_parquet_atomic, write_part)
from ..sources import items_fingerprint, open_source
from .datasets import add_arguments, dataset_config, run_each

__all__ = ["run", "add_arguments"]


def run(ctx) -> dict[str, Any]:
    return run_each(ctx, detect_dataset)


def detect_dataset(ctx, name: Optional[str]) -> dict[str, Any]:
    p = ctx.params.detect
    name, cfg = dataset_config(ctx, name)
    count = ctx.shard_count(p.shards)
    ctx.require_path(f"detect.datasets.{name}.source", cfg.source)
    source = open_source(cfg.format, cfg.source)
    items = source.items()
    preset = resolved_preset(cfg)
    out_dir = Path(p.out_dir) / name
    parts_dir = out_dir / "parts"
    digest = digest_of({"stage": "detect", "format": cfg.format, "source": cfg.source, "preset": preset,
                        "max_pixels": p.max_pixels, "min_face_score": p.min_face_score, "device": p.device,
                        "items": items_fingerprint(items), "n": len(items), "shards": count, "v": 1})
    todo = [ctx.shard[0]] if ctx.shard is not None else list(range(count))
    need_detector = any(it.landmarks is None and not it.error for it in items)
    reused = 0
    for i in todo:
        path = part_path(parts_dir, i, count)
        if part_is_complete(path, digest):
            reused += 1
            ctx.log.info("%s: part %d/%d complete, reused (%s)", name, i, count, path)
            continue
        invalidate(out_dir)
        lo, hi = bounds(len(items), i, count)
        work = [(a, items[a:b]) for a, b in ranges(lo, hi, p.batch_size)]
        frames = list(map_batches(detect_batch, work, ctx.workers, init_worker,
                                  (cfg.format, cfg.source, preset, p.device, p.max_pixels, p.min_face_score,
                                   need_detector), desc=f"detect {name} {i}/{count}"))
        df = frame([r for rows in frames for r in rows])
        write_part(path, df, digest, {"dataset": name, "index": i, "count": count})
        ctx.log.info("%s: part %d/%d written: %d rows", name, i, count, len(df))
    if ctx.shard is not None:
        df = pd.read_parquet(part_path(parts_dir, ctx.shard[0], count))
        return {"dataset": name, "part": f"{ctx.shard[0]}/{count}", "parts_reused": reused, **reconcile(df)}
    df = pd.concat([pd.read_parquet(part_path(parts_dir, i, count)) for i in range(count)], ignore_index=True)
    if len(df) != len(items) or (len(df) and not (df["row"].to_numpy() == np.arange(len(df))).all()):
        raise PipelineError(f"{parts_dir}: parts hold {len(df)} rows for {len(items)} inputs; delete the folder and rerun")
    counts = {"dataset": name, "format": cfg.format, "source": cfg.source, "preset": preset,
              "parts": count, "parts_reused": reused, **reconcile(df)}
    invalidate(out_dir)
    ctx.write_summary(out_dir / "summary.json", counts)
    write_parquet_atomic(out_dir / "manifest.parquet", df)  # last: its presence means complete
    ctx.log.info("%s: %d in = %d ok + %d fallback + %d rejected %s", name, counts["in"], counts["ok"],
                 counts["fallback"], counts["rejected_total"], counts["rejected"])
    return counts
