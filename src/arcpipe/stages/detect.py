"""Detect faces (MTCNN) in one data set of detect.datasets: data/detect/<NAME>/manifest.parquet.

    python scripts/detect.py --dataset NAME [--list | --shard I/K] [--workers N]

One manifest row per input image, with the chosen face or why there is none, and the image's
locator (`loc`), so later stages read any row's image without listing the source again.

The source is listed once into data/detect/NAME/listing.parquet (`--list` does only that; a
cluster runs it as its own job). A shard job (--shard I/K) reads only its rows of the listing
and only their images, and writes part I; a run without --shard lists the source (or reuses
the listing when the source's files are unchanged), computes the missing parts and merges them.
A part is complete when its metadata carries the digest of everything that decides its rows
(the data set's params, the resolved preset, the listing): parts from other params are
recomputed, not reused. Listing, parts, manifest and summary are each written atomically; a run
that dies leaves no manifest.parquet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..detect.rows import detect_batch, frame, init_worker, resolved_preset
from ..errors import PipelineError
from ..fsutil import atomic_path, digest_of, sha256_file
from ..shards import (ROW_GROUP, bounds, invalidate, map_batches, part_is_complete, part_path, ranges,
                      read_rows, reconcile, write_part)
from ..sources import frame_items, listing_meta, open_source, write_listing
from . import datasets

LISTING = "listing.parquet"

__all__ = ["run", "add_arguments"]


def add_arguments(parser) -> None:
    datasets.add_arguments(parser)
    parser.add_argument("--list", action="store_true",
                        help="only write data/detect/NAME/listing.parquet (the job shard jobs start from)")


def run(ctx) -> dict[str, Any]:
    return datasets.run_each(ctx, detect_dataset)


def _label(work) -> str:
    start, items = work
    return f"rows {start}..{start + len(items) - 1} ({items[0].source} ...)" if items else f"row {start}"


def ensure_listing(ctx, name: str, cfg, out_dir: Path, force: bool = False) -> dict[str, Any]:
    """data/detect/NAME/listing.parquet, current: rewritten only when the item list changed
    (and not even listed again when the source is a few files whose size and mtime match)."""
    path = out_dir / LISTING
    source = open_source(cfg.format, cfg.source)
    want = {"format": cfg.format, "source": str(cfg.source), "signature": source.signature()}
    have = listing_meta(path)
    same_source = all(have.get(k) == v for k, v in want.items())
    if not force and same_source and want["signature"] is not None:
        ctx.log.info("%s: listing of %d items reused (source files unchanged)", name, have["rows"])
        return have
    tmp = out_dir / f".{LISTING}.new"
    info = write_listing(tmp, source.iter_items(), want, stamp=source.stamp)
    if same_source and have.get("items") == info["items"] and have.get("rows") == info["rows"]:
        tmp.unlink()  # same items: keep the file as it is (its readers need not rerun)
        ctx.log.info("%s: listed %d items, unchanged", name, info["rows"])
        return have
    tmp.replace(path)
    ctx.log.info("%s: listed %d items into %s", name, info["rows"], path)
    return info


def shard_listing(ctx, name: str, cfg, out_dir: Path) -> dict[str, Any]:
    """The listing a shard job starts from: it must exist, for this source."""
    path = out_dir / LISTING
    have = listing_meta(path)
    if not have:
        raise PipelineError(f"{path}: no listing of detect.datasets.{name}; run "
                            f"`scripts/detect.py --dataset {name} --list` first (the detect_list job)")
    if have.get("format") != cfg.format or have.get("source") != str(cfg.source):
        raise PipelineError(f"{path}: lists {have.get('format')} {have.get('source')}, not "
                            f"{cfg.format} {cfg.source}; run `scripts/detect.py --dataset {name} --list` again")
    sig = open_source(cfg.format, cfg.source).signature()
    if sig is not None and have.get("signature") != sig:
        raise PipelineError(f"{path}: {cfg.source} changed since it was listed; run "
                            f"`scripts/detect.py --dataset {name} --list` again")
    return have


def detect_dataset(ctx, name: Optional[str]) -> dict[str, Any]:
    p = ctx.params.detect
    name, cfg = datasets.dataset_config(ctx, name)
    count = ctx.shard_count(p.shards)
    ctx.require_path(f"detect.datasets.{name}.source", cfg.source)
    out_dir = Path(p.out_dir) / name
    if getattr(ctx.args, "list", False):
        if ctx.shard is not None:
            raise PipelineError("--list lists the whole source: it takes no --shard")
        info = ensure_listing(ctx, name, cfg, out_dir, force=True)
        return {"dataset": name, "listed": info["rows"], "in": info["rows"], "out": info["rows"]}
    listing = shard_listing(ctx, name, cfg, out_dir) if ctx.shard is not None else \
        ensure_listing(ctx, name, cfg, out_dir)
    n = listing["rows"]
    preset = resolved_preset(cfg)
    parts_dir = out_dir / "parts"
    digest = digest_of({"stage": "detect", "format": cfg.format, "source": cfg.source, "preset": preset,
                        "max_pixels": p.max_pixels, "min_face_score": p.min_face_score, "device": p.device,
                        "items": listing["items"], "signature": listing.get("signature"), "n": n,
                        "shards": count, "v": 3})
    todo = [ctx.shard[0]] if ctx.shard is not None else list(range(count))
    reused = 0
    for i in todo:
        path = part_path(parts_dir, i, count)
        if part_is_complete(path, digest):
            reused += 1
            ctx.log.info("%s: part %d/%d complete, reused (%s)", name, i, count, path)
            continue
        invalidate(out_dir)
        lo, hi = bounds(n, i, count)
        work = _batches(out_dir / LISTING, lo, hi, p.batch_size)
        with ctx.working_on(f"data set {name}, part {i}/{count}"):
            frames = list(map_batches(detect_batch, work, ctx.workers, init_worker,
                                      (cfg.format, cfg.source, preset, p.device, p.max_pixels, p.min_face_score,
                                       listing["needs_detector"]), desc=f"detect {name} {i}/{count}",
                                      total=len(ranges(lo, hi, p.batch_size)), label=_label))
        df = pd.concat(frames, ignore_index=True) if frames else frame([])
        write_part(path, df, digest, {"dataset": name, "index": i, "count": count})
        ctx.log.info("%s: part %d/%d written: %d rows", name, i, count, len(df))
    if ctx.shard is not None:
        df = pd.read_parquet(part_path(parts_dir, ctx.shard[0], count))
        return {"dataset": name, "part": f"{ctx.shard[0]}/{count}", "parts_reused": reused, **reconcile(df)}
    df = pd.concat([pd.read_parquet(part_path(parts_dir, i, count)) for i in range(count)], ignore_index=True)
    if len(df) != n or (len(df) and not (df["row"].to_numpy() == np.arange(len(df))).all()):
        raise PipelineError(f"{parts_dir}: parts hold {len(df)} rows for {n} inputs; delete the folder and rerun")
    counts = {"dataset": name, "format": cfg.format, "source": cfg.source, "preset": preset,
              "parts": count, **reconcile(df)}
    invalidate(out_dir)
    with atomic_path(out_dir / "manifest.parquet") as tmp:  # renamed last: its presence means complete
        df.to_parquet(tmp, index=False, row_group_size=ROW_GROUP)
        counts["manifest_sha256"] = sha256_file(tmp)  # what align's parts are keyed on
        ctx.write_summary(out_dir / "summary.json", counts)  # what the data is; reuse is for the log
    ctx.log.info("%s: %d in = %d ok + %d fallback + %d rejected %s", name, counts["in"], counts["ok"],
                 counts["fallback"], counts["rejected_total"], counts["rejected"])
    return {**counts, "parts_reused": reused}


def _batches(listing: Path, lo: int, hi: int, size: int):
    """(first row, Items) batches of rows [lo, hi), reading the listing a row group at a time."""
    for c0, c1 in ranges(lo, hi, ROW_GROUP):
        items = frame_items(read_rows(listing, c0, c1))
        for a, b in ranges(c0, c1, size):
            yield a, items[a - c0:b - c0]
