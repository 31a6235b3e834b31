"""Align detected faces to the ArcFace template: data/align/<NAME>/ (faces.rec/.idx, manifest).

    python scripts/align.py --dataset NAME [--shard I/K] [--workers N]

Reads data/detect/NAME/manifest.parquet and the raw images again through arcpipe.sources (the
`source` key locates each image; its content hash must match what detect saw), and makes each
row's crop (arcpipe.align.crops). Every input row stays in the manifest: rejected ones keep
status and reason, key -1.

Writes data/align/NAME/: faces.rec, faces.idx, manifest.parquet, summary.json,
contact_sheet.jpg, and parts/ (per shard: parquet + rec + idx; reused when their digest
matches). The manifest is written last; a run that dies leaves none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..align.aligned_set import CONTACT_SHEET, IDX, MANIFEST, REC, SUMMARY, identity_labels
from ..align.contact_sheet import aligned_set_sheet
from ..align.crops import align_batch, init_worker
from ..columns import STATUS_WITH_CROP
from ..errors import PipelineError
from ..fsutil import write_bytes_atomic
from ..imageio import decode_image, decode_rgb
from ..recordio import IRHeader, RecordReader, RecordWriter, pack, unpack
from ..shards import (bounds, digest_of, invalidate, map_batches, part_is_complete, part_path, reconcile,
                      write_parquet_atomic, write_part)
from ..sources import SourceError, content_hash, open_source
from .datasets import add_arguments, dataset_config, run_each

__all__ = ["run", "add_arguments"]

BATCH = 64


def run(ctx) -> dict[str, Any]:
    return run_each(ctx, align_dataset)


def _write_part_rec(rec_path: Path, keyed: list[tuple[int, int, bytes]]) -> None:
    with RecordWriter(rec_path, rec_path.with_suffix(".idx")) as w:
        for key, label, jpeg in keyed:
            w.write(key, pack(IRHeader(0, float(label), key, 0), jpeg))


def align_dataset(ctx, name) -> dict[str, Any]:
    p = ctx.params.align
    name, cfg = dataset_config(ctx, name)
    count = ctx.shard_count(p.shards)
    det_path = ctx.require_path(f"detect manifest of {name}", Path(ctx.params.detect.out_dir) / name / MANIFEST)
    det = pd.read_parquet(det_path)
    ctx.require_path(f"detect.datasets.{name}.source", cfg.source)
    source = open_source(cfg.format, cfg.source)
    by_key = {it.source: it for it in source.items()}
    missing = [s for s in det["source"] if s not in by_key]
    if missing:
        raise PipelineError(f"{det_path}: source '{missing[0]}' is no longer in {cfg.source} "
                            f"({len(missing)} missing): rerun detect")
    out_dir = Path(p.out_dir) / name
    parts_dir = out_dir / "parts"
    det_digest = content_hash(det_path.read_bytes())
    digest = digest_of({"stage": "align", "image_size": p.image_size, "jpeg_quality": p.jpeg_quality,
                        "box_margin": p.box_margin, "detect": det_digest, "shards": count, "v": 1})
    rows = det.to_dict("records")
    todo = [ctx.shard[0]] if ctx.shard is not None else list(range(count))
    provisional = identity_labels(det.loc[det["status"].isin(STATUS_WITH_CROP), "identity"])
    reused = 0
    for i in todo:
        path = part_path(parts_dir, i, count)
        rec_path = path.with_suffix(".rec")
        if part_is_complete(path, digest) and rec_path.is_file() and rec_path.with_suffix(".idx").is_file():
            reused += 1
            ctx.log.info("%s: part %d/%d complete, reused", name, i, count)
            continue
        invalidate(out_dir, (MANIFEST, SUMMARY, REC, IDX, CONTACT_SHEET))
        lo, hi = bounds(len(rows), i, count)
        sel = [(r, by_key[r["source"]]) for r in rows[lo:hi]]
        work = [sel[a:a + BATCH] for a in range(0, len(sel), BATCH)]
        part_rows, keyed = [], []
        it = map_batches(align_batch, work, ctx.workers, init_worker,
                         (cfg.format, cfg.source, p.image_size, p.jpeg_quality, p.box_margin,
                          ctx.params.detect.max_pixels), desc=f"align {name} {i}/{count}")
        k = lo
        for res in it:
            for upd, jpeg in res:
                r = dict(rows[k])
                r.update(upd)
                r.setdefault("align_error", np.nan)
                r["key"] = k if jpeg is not None else -1
                if jpeg is not None:
                    keyed.append((k, provisional.get(r["identity"], -1), jpeg))
                part_rows.append(r)
                k += 1
        _write_part_rec(rec_path, keyed)
        df = pd.DataFrame(part_rows)
        if len(df):
            df["align_error"] = df["align_error"].astype("float64")
        write_part(path, df, digest, {"dataset": name, "index": i, "count": count})
        ctx.log.info("%s: part %d/%d written: %d rows, %d faces", name, i, count, len(df), len(keyed))
    if ctx.shard is not None:
        df = pd.read_parquet(part_path(parts_dir, ctx.shard[0], count))
        return {"dataset": name, "part": f"{ctx.shard[0]}/{count}", "parts_reused": reused, **reconcile(df)}

    # merge: final labels over identities that have a crop, one .rec, contact sheet, summary, manifest
    frames = [pd.read_parquet(part_path(parts_dir, i, count)) for i in range(count)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(df) != len(det):
        raise PipelineError(f"{parts_dir}: parts hold {len(df)} rows for {len(det)} detect rows; delete it and rerun")
    labels = identity_labels(df.loc[df["key"] >= 0, "identity"])
    df["label"] = [labels.get(i, -1) for i in df["identity"]]
    df["image_size"] = p.image_size
    front = ["row", "source", "identity", "label", "status", "reason", "key"]
    df = df[front + [c for c in df.columns if c not in front]]
    invalidate(out_dir, (MANIFEST, SUMMARY, REC, IDX, CONTACT_SHEET))
    lab_of_key = dict(zip(df.loc[df["key"] >= 0, "key"].tolist(), df.loc[df["key"] >= 0, "label"].tolist()))
    with RecordWriter(out_dir / REC, out_dir / IDX) as w:
        for i in range(count):
            pr = part_path(parts_dir, i, count).with_suffix(".rec")
            r = RecordReader(pr, pr.with_suffix(".idx"))
            for key in r.keys:
                _, jpeg = unpack(r.read(key))
                w.write(int(key), pack(IRHeader(0, float(lab_of_key[int(key)]), int(key), 0), jpeg))
            r.close()
    write_bytes_atomic(out_dir / CONTACT_SHEET, _contact_sheet(df, out_dir, source, by_key, p, ctx))
    counts = {"dataset": name, "image_size": p.image_size, "parts": count, "parts_reused": reused,
              "classes": len(labels), **reconcile(df)}
    counts["aligned"] = counts["out"]
    ctx.write_summary(out_dir / SUMMARY, counts)
    write_parquet_atomic(out_dir / MANIFEST, df)  # last: its presence means complete
    ctx.log.info("%s: %d in = %d aligned + %d rejected %s", name, counts["in"], counts["out"],
                 counts["rejected_total"], counts["rejected"])
    return counts


def _contact_sheet(df: pd.DataFrame, out_dir: Path, source, by_key: dict, p, ctx) -> bytes:
    reader = RecordReader(out_dir / REC, out_dir / IDX)

    def read_reject(row):
        try:
            d = decode_image(source.read(by_key[row["source"]]), ctx.params.detect.max_pixels)
            return d.image if d.ok else None
        except SourceError:
            return None

    try:
        return aligned_set_sheet(df, lambda key: decode_rgb(unpack(reader.read(key))[1]), read_reject,
                                 p.image_size, p.contact_sheet)
    finally:
        reader.close()
