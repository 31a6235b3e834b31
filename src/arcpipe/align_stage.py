"""The align stage: detect manifest + raw images -> aligned faces (contract 2 in arcpipe.aligned).

    python scripts/align.py --dataset NAME [--shard I/K] [--workers N]

Reads data/detect/NAME/manifest.parquet and the raw images again through arcpipe.sources (the
`source` key locates each image; its content hash must match what detect saw). Rows with
landmarks are warped onto the template (arcpipe.align.norm_crop); fallback rows without
landmarks are cropped from their box and resized, as the reference scripts do. Every input row
stays in the manifest: rejected ones keep status and reason, key -1.

Writes data/align/NAME/: faces.rec, faces.idx, manifest.parquet, summary.json,
contact_sheet.jpg, and parts/ (per shard: parquet + rec + idx; reused when their digest
matches). The manifest is written last; a run that dies leaves none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import align as A
from .aligned import (BOX_COLUMNS, CONTACT_SHEET, IDX, LANDMARK_COLUMNS, MANIFEST, REC, STATUS_WITH_CROP,
                      SUMMARY, identity_labels)
from .contact_sheet import encode_sheet, make_contact_sheet
from .detect.stage import (batches, content_hash, dataset_config, digest_of, invalidate, map_batches,
                           part_is_complete, part_path, reconcile, write_parquet_atomic, write_part)
from .errors import PipelineError
from .fsutil import write_bytes_atomic
from .imageio import decode_image, encode_jpeg
from .sources import SourceError, open_source, shard_bounds

_W: dict[str, Any] = {}


def _init_worker(fmt: str, root: str, size: int, quality: int, margin: float, max_pixels: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    _W.clear()
    _W.update(source=open_source(fmt, root), size=size, quality=quality, margin=margin, max_pixels=max_pixels)


def _align_batch(work: list[tuple[dict, Any]]) -> list[tuple[dict, bytes | None]]:
    """(manifest row, item) -> (updates for the row, JPEG of the aligned face or None)."""
    src, size = _W["source"], _W["size"]
    out = []
    for row, item in work:
        upd: dict[str, Any] = {}
        if row["status"] not in STATUS_WITH_CROP:
            out.append((upd, None))
            continue
        try:
            data = src.read(item)
        except SourceError as e:
            out.append(({"status": "align_failed", "reason": f"cannot read the image again: {e}"}, None))
            continue
        if row["content"] and content_hash(data) != row["content"]:
            out.append(({"status": "align_failed", "reason": "image bytes changed since detection"}, None))
            continue
        d = decode_image(data, _W["max_pixels"])
        if not d.ok:
            out.append(({"status": "align_failed", "reason": f"{d.status}: {d.reason}"}, None))
            continue
        lm = np.array([row[c] for c in LANDMARK_COLUMNS], dtype=np.float64).reshape(5, 2)
        try:
            if np.isfinite(lm).all():
                M = A.estimate_norm(lm, size)
                face = A.warp(d.image, M, size)
                err = float(np.sqrt(((A.transform_points(lm, M) - A.template(size)) ** 2).sum(1)).mean())
                upd["align_error"] = err * 112.0 / size  # in pixels of a 112 crop
            else:
                box = [row[c] for c in BOX_COLUMNS]
                margin = _W["margin"] if row["origin"] == "given_box" else 0.0
                face = A.crop_box(d.image, box, size, margin)
        except ValueError as e:
            out.append(({"status": "align_failed", "reason": str(e)}, None))
            continue
        out.append((upd, encode_jpeg(face, _W["quality"])))
    return out


def _write_part_rec(rec_path: Path, keyed: list[tuple[int, int, bytes]]) -> None:
    from .recordio import IRHeader, RecordWriter, pack

    with RecordWriter(rec_path, rec_path.with_suffix(".idx")) as w:
        for key, label, jpeg in keyed:
            w.write(key, pack(IRHeader(0, float(label), key, 0), jpeg))


def run_align(ctx) -> dict[str, Any]:
    name = getattr(ctx.args, "dataset", None)
    datasets = ctx.params.detect.datasets
    if name is None and ctx.shard is None and len(datasets) > 1:
        return {"datasets": {n: align_dataset(ctx, n) for n in datasets}}
    if name is None and len(datasets) == 1:
        name = next(iter(datasets))
    return align_dataset(ctx, name)


def align_dataset(ctx, name) -> dict[str, Any]:
    from .recordio import IRHeader, RecordReader, RecordWriter, pack, unpack

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
        lo, hi = shard_bounds(len(rows), i, count)
        work = batches([(r, by_key[r["source"]]) for r in rows[lo:hi]], 64)
        part_rows, keyed = [], []
        it = map_batches(_align_batch, work, ctx.workers, _init_worker,
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
    import cv2

    from .recordio import RecordReader, unpack

    n = p.contact_sheet
    faces_df = df[df["key"] >= 0]
    pick = faces_df.iloc[np.linspace(0, len(faces_df) - 1, min(n, len(faces_df))).astype(int)] if len(faces_df) else faces_df
    reader = RecordReader(out_dir / REC, out_dir / IDX)
    faces = []
    size = p.image_size
    for _, row in pick.iterrows():
        jpeg = unpack(reader.read(int(row["key"])))[1]
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        lm = np.array([row[c] for c in LANDMARK_COLUMNS], np.float64).reshape(5, 2)
        pts = None
        if np.isfinite(lm).all():
            pts = A.transform_points(lm, A.estimate_norm(lm, size)) * (112.0 / size)
        if size != 112:
            rgb = cv2.resize(rgb, (112, 112), interpolation=cv2.INTER_AREA)
        faces.append((rgb, pts, f"{row['status']} {row['identity']}"[:20]))
    reader.close()
    rejects = []
    rej = df[df["key"] < 0].head(max(n // 6, 4))
    for _, row in rej.iterrows():
        rgb = None
        try:
            d = decode_image(source.read(by_key[row["source"]]), ctx.params.detect.max_pixels)
            rgb = d.image if d.ok else None
        except SourceError:
            pass
        rejects.append((rgb, f"{row['status']}: {row['reason']}"))
    return encode_sheet(make_contact_sheet(faces, rejects, template=A.template(112)))
