"""The detect stage: one manifest row per input image, with the chosen face or why there is none.

    python scripts/detect.py --dataset NAME [--shard I/K] [--workers N]

Output data/detect/NAME/: manifest.parquet, summary.json, and parts/part-IIIII-of-KKKKK.parquet.
With --shard I/K only part I is written (a cluster runs one job per shard); without it every
missing part is computed, then the parts are merged. A part is complete when its parquet file
exists and its metadata carries the digest of everything that decides its rows (the dataset's
params, the resolved preset, the item list): parts from other params are recomputed, not
reused. Parts, manifest and summary are each written atomically; a run that dies leaves no
manifest.parquet.

The part machinery (digest, file names, completeness, pool) is shared with the align stage.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..aligned import BOX_COLUMNS, LANDMARK_COLUMNS
from ..errors import PipelineError
from ..fsutil import atomic_path
from ..imageio import decode_image
from ..sources import Item, SourceError, open_source, shard_bounds

META_KEY = b"arcpipe_part"
MAX_REASONS = 25

# --------------------------------------------------------------------------- shared part machinery


def digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def items_fingerprint(items: list[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.source.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def part_path(parts_dir: Path, index: int, count: int) -> Path:
    return parts_dir / f"part-{index:05d}-of-{count:05d}.parquet"


def part_is_complete(path: Path, digest: str) -> bool:
    if not path.is_file():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:
        return False
    try:
        return json.loads(meta.get(META_KEY, b"{}")).get("digest") == digest
    except ValueError:
        return False


def write_part(path: Path, df: pd.DataFrame, digest: str, extra: Optional[dict] = None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({"digest": digest, "rows": len(df), **(extra or {})}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_parquet_atomic(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def invalidate(out_dir: Path, names=("manifest.parquet", "summary.json")) -> None:
    """Remove merged outputs that are about to be stale, so a run that dies leaves none."""
    for n in names:
        try:
            (out_dir / n).unlink()
        except FileNotFoundError:
            pass


def batches(seq: list, size: int) -> list[list]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def map_batches(fn: Callable, work: list, workers: int, initializer: Callable, initargs: tuple,
                desc: str) -> Iterable:
    """fn over work items, in order; in a process pool when workers > 1 (fn and initializer are
    module-level functions, each worker initialised once)."""
    if workers <= 1 or len(work) <= 1:
        initializer(*initargs)
        for w in tqdm(work, desc=desc, disable=None, unit="batch"):
            yield fn(w)
        return
    import multiprocessing as mp

    # Never plain fork: the parent has used torch/OpenCV thread pools by now (a stage that runs
    # several data sets in one process merges one before it forks for the next), and a forked
    # child inherits their locks held: it hangs at 0% CPU. forkserver children start clean.
    method = os.environ.get("ARCPIPE_START_METHOD") or (
        "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer,
                             initargs=initargs) as ex:
        for r in tqdm(ex.map(fn, work), total=len(work), desc=desc, disable=None, unit="batch"):
            yield r


def reconcile(df: pd.DataFrame, ok_statuses=("ok", "fallback")) -> dict[str, Any]:
    """Counts in / out / rejected by status and by reason; raises if they do not add up."""
    n = len(df)
    status = df["status"].value_counts().to_dict() if n else {}
    out = int(sum(status.get(s, 0) for s in ok_statuses))
    rejected = {str(k): int(v) for k, v in sorted(status.items()) if k not in ok_statuses}
    rej_rows = df[~df["status"].isin(ok_statuses)] if n else df
    reasons: dict[str, int] = {}
    if len(rej_rows):  # the most frequent reasons (reasons that name a file are one-offs)
        top = rej_rows.groupby(["status", "reason"]).size().sort_values(ascending=False, kind="stable")
        for (s, r), c in top.iloc[:MAX_REASONS].items():
            reasons[f"{s}: {r}"] = int(c)
        if len(top) > MAX_REASONS:
            reasons["(other reasons)"] = int(top.iloc[MAX_REASONS:].sum())
    if n != out + sum(rejected.values()):  # pragma: no cover - a bug, not a data problem
        raise PipelineError(f"counts do not reconcile: {n} in, {out} out, {sum(rejected.values())} rejected")
    notes = {}
    if "note" in df.columns and n:
        for note, c in df.loc[df["note"] != "", "note"].value_counts().items():
            notes[str(note)] = int(c)
    return {"in": n, "out": out, **{s: int(status.get(s, 0)) for s in ok_statuses},
            "rejected": rejected, "rejected_total": int(sum(rejected.values())),
            "rejected_reasons": reasons, "notes": notes}


def dataset_config(ctx, name: Optional[str]) -> tuple[str, Any]:
    ds = ctx.params.detect.datasets
    if not ds:
        raise PipelineError(f"{ctx.params_files[0]}: detect.datasets is empty")
    if name is None:
        raise PipelineError(f"--dataset is required: one of {', '.join(ds)}")
    if name not in ds:
        raise PipelineError(f"--dataset {name}: not in detect.datasets ({', '.join(ds)})")
    return name, ds[name]


def add_dataset_argument(parser) -> None:
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="which entry of detect.datasets to process (default: all, one after another)")


# --------------------------------------------------------------------------- detection rows


def resolved_preset(cfg) -> dict[str, Any]:
    from . import preset_for

    p = preset_for(cfg.preset)
    return {
        "name": cfg.preset,
        "minsize": cfg.minsize if cfg.minsize is not None else p.minsize,
        "thresholds": list(cfg.thresholds) if cfg.thresholds is not None else list(p.thresholds),
        "factor": cfg.factor if cfg.factor is not None else p.factor,
        "no_face": cfg.no_face if cfg.no_face is not None else p.no_face,
    }


def content_hash(data: bytes) -> str:
    """Cheap fingerprint of an input's bytes (the align stage checks the image did not change)."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}{len(data):x}"


def empty_row(index: int, item: Item) -> dict[str, Any]:
    row: dict[str, Any] = {"row": index, "source": item.source, "identity": item.identity,
                           "status": "", "reason": "", "note": "", "origin": "", "width": 0, "height": 0,
                           "n_faces": 0, "score": np.nan, "content": ""}
    for c in BOX_COLUMNS + LANDMARK_COLUMNS:
        row[c] = np.nan
    return row


COLUMNS = list(empty_row(0, Item("")).keys())

_W: dict[str, Any] = {}


def _init_worker(fmt: str, root: str, preset: dict, device: str, max_pixels: int, min_score: float,
                 need_detector: bool) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _W.clear()
    _W.update(source=open_source(fmt, root), preset=preset, max_pixels=max_pixels, min_score=min_score)
    if need_detector:
        from . import MTCNN

        _W["det"] = MTCNN(device=device, minsize=preset["minsize"], thresholds=tuple(preset["thresholds"]),
                          factor=preset["factor"])


def _detect_batch(work: tuple[int, list[Item]]) -> list[dict]:
    from . import choose_face, fallback_box

    start, items = work
    src, preset = _W["source"], _W["preset"]
    rows, todo = [], []
    for k, item in enumerate(items):
        row = empty_row(start + k, item)
        rows.append(row)
        try:
            data = src.read(item)
        except SourceError as e:
            row["status"], row["reason"] = "unreadable", str(e)
            continue
        row["content"] = content_hash(data)
        d = decode_image(data, _W["max_pixels"])
        row["note"] = d.note
        if not d.ok:
            row["status"], row["reason"] = d.status, d.reason
            continue
        h, w = d.image.shape[:2]
        row["width"], row["height"] = w, h
        if item.landmarks is not None:  # IJB: the protocol's landmarks, no detection
            lm = np.asarray(item.landmarks, dtype=np.float64)
            if not np.isfinite(lm).all():
                row["status"], row["reason"] = "no_face", "given landmarks are not finite"
                continue
            row.update(zip(LANDMARK_COLUMNS, lm.tolist()))
            xs, ys = lm[0::2], lm[1::2]
            row.update(zip(BOX_COLUMNS, [xs.min(), ys.min(), xs.max(), ys.max()]))
            row["status"], row["origin"] = "ok", "given_landmarks"
            row["score"] = np.nan if item.score is None else float(item.score)
            continue
        todo.append((row, item, d.image))
    if todo:
        dets = _W["det"].detect([im for _, _, im in todo])
        for (row, item, img), det in zip(todo, dets):
            row["n_faces"] = len(det)
            keep = choose_face(det, img.shape) if len(det) else None
            if keep is not None and float(det.scores[keep]) >= _W["min_score"]:
                row["status"], row["origin"] = "ok", "detected"
                row["score"] = float(det.scores[keep])
                row.update(zip(BOX_COLUMNS, np.asarray(det.boxes[keep], np.float64).tolist()))
                row.update(zip(LANDMARK_COLUMNS, np.asarray(det.landmarks[keep], np.float64).reshape(-1).tolist()))
                continue
            why = "no face found" if keep is None else \
                f"best face score {float(det.scores[keep]):.3f} < min_face_score {_W['min_score']}"
            policy = preset["no_face"]
            if policy == "center_crop":
                row["status"], row["origin"], row["reason"] = "fallback", "center_crop", f"{why}: centre crop"
                row.update(zip(BOX_COLUMNS, [float(v) for v in fallback_box(img.shape)]))
            elif policy == "given_box" and item.box is not None:
                row["status"], row["origin"], row["reason"] = "fallback", "given_box", f"{why}: box given with the data"
                row.update(zip(BOX_COLUMNS, [float(v) for v in item.box]))
            else:
                extra = " and no given box" if policy == "given_box" else ""
                row["status"], row["reason"] = "no_face", f"{why}{extra} (policy {policy})"
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("row", "width", "height", "n_faces"):
        df[c] = df[c].astype("int64")
    for c in BOX_COLUMNS + LANDMARK_COLUMNS + ["score"]:
        df[c] = df[c].astype("float64")
    return df


def run_detect(ctx) -> dict[str, Any]:
    name = getattr(ctx.args, "dataset", None)
    if name is None and ctx.shard is None and len(ctx.params.detect.datasets) > 1:
        return {"datasets": {n: detect_dataset(ctx, n) for n in ctx.params.detect.datasets}}
    if name is None and len(ctx.params.detect.datasets) == 1:
        name = next(iter(ctx.params.detect.datasets))
    return detect_dataset(ctx, name)


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
        lo, hi = shard_bounds(len(items), i, count)
        work = [(lo + j, b) for j, b in zip(range(0, hi - lo, p.batch_size), batches(items[lo:hi], p.batch_size))]
        rows: list[dict] = []
        for r in map_batches(_detect_batch, work, ctx.workers, _init_worker,
                             (cfg.format, cfg.source, preset, p.device, p.max_pixels, p.min_face_score, need_detector),
                             desc=f"detect {name} {i}/{count}"):
            rows.extend(r)
        write_part(path, _frame(rows), digest, {"dataset": name, "index": i, "count": count})
        ctx.log.info("%s: part %d/%d written: %d rows", name, i, count, len(rows))
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
