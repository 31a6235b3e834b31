"""Align detected faces to the ArcFace template: data/align/<NAME>/ (faces.rec/.idx, manifest).

    python scripts/align.py --dataset NAME [--shard I/K] [--workers N]

Reads data/detect/NAME/manifest.parquet and makes each row's crop (arcpipe.align.crops) from the
raw image its row locates (`loc`); the bytes must be those detect saw (their content hash). A
shard job reads only its rows of the manifest and only their images, and streams the crops into
its part's RecordIO as they come, so its memory does not grow with the shard. Every input row
stays in the manifest: rejected ones keep status and reason, key -1.

Writes data/align/NAME/: faces.rec, faces.idx, manifest.parquet, summary.json,
contact_sheet.jpg, and parts/ (per shard: parquet + rec + idx; reused when their digest
matches). The manifest is written last; a run that dies leaves none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..align.aligned_set import CONTACT_SHEET, IDX, MANIFEST, REC, SUMMARY, identity_labels
from ..align.contact_sheet import aligned_set_sheet
from ..align.crops import align_batch, init_worker
from ..columns import BOX_COLUMNS, LANDMARK_COLUMNS, STATUS_WITH_CROP
from ..errors import PipelineError
from ..fsutil import digest_of, link_or_copy, sha256_file, write_bytes_atomic
from ..imageio import decode_image, decode_rgb
from ..recordio import IRHeader, RecordReader, RecordWriter, pack, read_idx, scalar_labels, unpack
from ..shards import (bounds, invalidate, map_batches, part_is_complete, part_path, ranges, read_rows,
                      reconcile, row_count, write_parquet_atomic, write_part)
from ..sources import SourceError, open_source, row_item
from .datasets import add_arguments, dataset_config, run_each

__all__ = ["run", "add_arguments"]

BATCH = 64
WORK_COLUMNS = ["source", "identity", "loc", "status", "content", "origin"] + LANDMARK_COLUMNS + BOX_COLUMNS


def run(ctx) -> dict[str, Any]:
    return run_each(ctx, align_dataset)


def _detect_digest(det_dir: Path) -> str:
    """What the detect manifest's content is, from detect's summary (no need to read the manifest)."""
    try:
        sha = json.loads((det_dir / SUMMARY).read_text()).get("manifest_sha256")
    except (OSError, ValueError):
        sha = None
    return sha or sha256_file(det_dir / MANIFEST)


def _work(rows: pd.DataFrame) -> Iterator[list[tuple[dict, Any]]]:
    cols = {c: rows[c].tolist() for c in WORK_COLUMNS}  # plain lists: a batch is a cheap slice of each
    for a, b in ranges(0, len(rows), BATCH):
        recs = [dict(zip(WORK_COLUMNS, vals)) for vals in zip(*(cols[c][a:b] for c in WORK_COLUMNS))]
        yield [(r, row_item(r["source"], r["identity"], r["loc"])) for r in recs]


def align_part(ctx, name: str, cfg, det_path: Path, lo: int, hi: int, path: Path, digest: str,
               whole: bool = False) -> tuple[int, int]:
    """Rows [lo, hi) of the detect manifest -> part parquet + rec/idx; returns (rows, faces).

    whole: the part holds every row, so the labels the merge will give are known already (unless
    an image fails here and takes an identity's last crop with it): the records carry them, and
    the merge can take the part's files as they are."""
    p = ctx.params.align
    part = read_rows(det_path, lo, hi).reset_index(drop=True)
    label = np.zeros(len(part))
    if whole:
        guess = identity_labels(part.loc[part["status"].isin(STATUS_WITH_CROP), "identity"])
        label = part["identity"].map(guess).fillna(0).to_numpy(np.float64)
    status = part["status"].to_numpy(dtype=object).copy()
    reason = part["reason"].to_numpy(dtype=object).copy()
    align_error = np.full(len(part), np.nan)
    key = np.full(len(part), -1, dtype=np.int64)
    rec_path = path.with_suffix(".rec")
    results = map_batches(align_batch, _work(part), ctx.workers, init_worker,
                          (cfg.format, cfg.source, p.image_size, p.jpeg_quality, p.box_margin,
                           ctx.params.detect.max_pixels), desc=f"align {name} {path.stem}",
                          total=len(ranges(0, len(part), BATCH)),
                          label=lambda w: f"{len(w)} rows from {w[0][1].source}" if w else "an empty batch")
    k = 0
    with RecordWriter(rec_path, rec_path.with_suffix(".idx")) as w:
        for res in results:
            for upd, jpeg in res:
                if "status" in upd:
                    status[k], reason[k] = upd["status"], upd["reason"]
                align_error[k] = upd.get("align_error", np.nan)
                if jpeg is not None:
                    key[k] = lo + k
                    w.write(lo + k, pack(IRHeader(0, label[k], lo + k, 0), jpeg))  # the merge sets the final ones
                k += 1
    part["status"], part["reason"] = status, reason
    part["align_error"] = align_error
    part["key"] = key
    write_part(path, part, digest, {"dataset": name, "lo": lo, "hi": hi})
    return len(part), int((key >= 0).sum())


def align_dataset(ctx, name) -> dict[str, Any]:
    p = ctx.params.align
    name, cfg = dataset_config(ctx, name)
    count = ctx.shard_count(p.shards)
    det_dir = Path(ctx.params.detect.out_dir) / name
    det_path = ctx.require_path(f"detect manifest of {name}", det_dir / MANIFEST)
    ctx.require_path(f"detect.datasets.{name}.source", cfg.source)
    n = row_count(det_path)
    out_dir = Path(p.out_dir) / name
    parts_dir = out_dir / "parts"
    digest = digest_of({"stage": "align", "image_size": p.image_size, "jpeg_quality": p.jpeg_quality,
                        "box_margin": p.box_margin, "detect": _detect_digest(det_dir), "shards": count, "v": 2})
    todo = [ctx.shard[0]] if ctx.shard is not None else list(range(count))
    reused = 0
    for i in todo:
        path = part_path(parts_dir, i, count)
        rec_path = path.with_suffix(".rec")
        if part_is_complete(path, digest) and rec_path.is_file() and rec_path.with_suffix(".idx").is_file():
            reused += 1
            ctx.log.info("%s: part %d/%d complete, reused", name, i, count)
            continue
        invalidate(out_dir, (MANIFEST, SUMMARY, REC, IDX, CONTACT_SHEET))
        lo, hi = bounds(n, i, count)
        with ctx.working_on(f"data set {name}, part {i}/{count}"):
            rows, faces = align_part(ctx, name, cfg, det_path, lo, hi, path, digest, whole=count == 1)
        ctx.log.info("%s: part %d/%d written: %d rows, %d faces", name, i, count, rows, faces)
    if ctx.shard is not None:
        df = pd.read_parquet(part_path(parts_dir, ctx.shard[0], count))
        return {"dataset": name, "part": f"{ctx.shard[0]}/{count}", "parts_reused": reused, **reconcile(df)}
    with ctx.working_on(f"data set {name}, merging {count} part(s)"):
        return merge(ctx, name, cfg, n, out_dir, parts_dir, count, reused)


def merge(ctx, name: str, cfg, n: int, out_dir: Path, parts_dir: Path, count: int, reused: int) -> dict[str, Any]:
    """Final labels over the identities that have a crop, one .rec, contact sheet, summary, manifest."""
    p = ctx.params.align
    frames = [pd.read_parquet(part_path(parts_dir, i, count)) for i in range(count)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(df) != n:
        raise PipelineError(f"{parts_dir}: parts hold {len(df)} rows for {n} detect rows; delete it and rerun")
    labels = identity_labels(df.loc[df["key"] >= 0, "identity"])
    df["label"] = df["identity"].map(labels).fillna(-1).astype("int64")
    df["image_size"] = p.image_size
    front = ["row", "source", "identity", "label", "status", "reason", "key"]
    df = df[front + [c for c in df.columns if c not in front]]
    invalidate(out_dir, (MANIFEST, SUMMARY, REC, IDX, CONTACT_SHEET))
    label_of_key = np.full(n, -1, dtype=np.int64)
    crops = df["key"].to_numpy() >= 0
    label_of_key[df["key"].to_numpy()[crops]] = df["label"].to_numpy()[crops]
    first = part_path(parts_dir, 0, count).with_suffix(".rec")
    if count == 1 and _labels_are(first, label_of_key):  # one part with the final labels: it is the set
        link_or_copy(first, out_dir / REC)
        link_or_copy(first.with_suffix(".idx"), out_dir / IDX)
    else:
        with RecordWriter(out_dir / REC, out_dir / IDX) as w:  # the parts' bytes, final labels patched in
            for i in range(count):
                pr = part_path(parts_dir, i, count).with_suffix(".rec")
                keys, _ = read_idx(pr.with_suffix(".idx"))
                w.append_pack(pr, labels=label_of_key[keys].astype(np.float64))
    write_bytes_atomic(out_dir / CONTACT_SHEET, _contact_sheet(df, out_dir, cfg, ctx))
    counts = {"dataset": name, "image_size": p.image_size, "parts": count, "classes": len(labels),
              **reconcile(df)}
    counts["aligned"] = counts["out"]
    ctx.write_summary(out_dir / SUMMARY, counts)  # what the data is; how this run got there is for the log
    write_parquet_atomic(out_dir / MANIFEST, df)  # last: its presence means complete
    ctx.log.info("%s: %d in = %d aligned + %d rejected %s", name, counts["in"], counts["out"],
                 counts["rejected_total"], counts["rejected"])
    return {**counts, "parts_reused": reused}


def _labels_are(rec: Path, label_of_key: np.ndarray) -> bool:
    """Do the records of `rec` carry label_of_key[key] already?"""
    have = scalar_labels(rec)
    return have is not None and bool((have[1] == label_of_key[have[0]].astype(np.float32)).all())


def _contact_sheet(df: pd.DataFrame, out_dir: Path, cfg, ctx) -> bytes:
    source = open_source(cfg.format, cfg.source)

    def read_reject(row):
        try:
            d = decode_image(source.read(row_item(row["source"], row["identity"], row["loc"])),
                             ctx.params.detect.max_pixels)
            return d.image if d.ok else None
        except SourceError:
            return None

    with RecordReader(out_dir / REC, out_dir / IDX) as reader:
        return aligned_set_sheet(df, lambda key: decode_rgb(unpack(reader.read(key))[1]), read_reject,
                                 ctx.params.align.image_size, ctx.params.align.contact_sheet)
