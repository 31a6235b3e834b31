"""Shards, parts and resume: the machinery every sharded stage uses (detect, align, and later
feature extraction and training data preparation).

A sharded stage splits its rows 0..n-1 into `count` contiguous blocks (`bounds`). Shard i
writes `parts/part-IIIII-of-KKKKK.parquet` (plus its own side files) whose parquet metadata
carries the digest of everything that decides its rows; a part with another digest is stale
and recomputed, never reused. A job without --shard computes the missing parts, then merges.

    lo, hi = bounds(n, i, k)
    rows = read_rows("listing.parquet", lo, hi)      # reads only the row groups of [lo, hi)
    for out in map_batches(fn, work, workers, init, initargs, desc): ...
    write_part(path, frame, digest); part_is_complete(path, digest)
    counts = reconcile(manifest)                       # in = out + rejected, by status and reason
"""
from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .errors import BatchError, PipelineError
from .fsutil import atomic_path

META_KEY = b"arcpipe_part"
MAX_REASONS = 25
ROW_GROUP = 16384  # rows per parquet row group of listings and manifests: a shard reads only its groups


def bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Rows [lo, hi) of shard `index` of `count`: contiguous, the same for the same n."""
    return index * n // count, (index + 1) * n // count


def ranges(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into consecutive [a, b) of at most `size` rows."""
    return [(a, min(a + size, hi)) for a in range(lo, hi, size)]


def part_path(parts_dir: Path, index: int, count: int) -> Path:
    return Path(parts_dir) / f"part-{index:05d}-of-{count:05d}.parquet"


def part_meta(path: Path) -> dict:
    """The metadata a part (or a manifest) was written with; {} when absent or unreadable."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(META_KEY, b"{}"))
    except Exception:
        return {}


def part_is_complete(path: Path, digest: str) -> bool:
    return Path(path).is_file() and part_meta(path).get("digest") == digest


def write_part(path: Path, df: pd.DataFrame, digest: str, extra: Optional[dict] = None) -> None:
    """A part or manifest, atomically, with {"digest", "rows", **extra} in its metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({"digest": digest, "rows": len(df), **(extra or {})}).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP)


def write_parquet_atomic(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, row_group_size=ROW_GROUP)


def row_count(path: Path) -> int:
    """Rows of a parquet file, from its footer (no data read)."""
    return pq.ParquetFile(path).metadata.num_rows


def read_rows(path: Path, lo: int, hi: int, columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Rows [lo, hi) of a parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(path)
    md = f.metadata
    groups, first, start = [], None, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if start < hi and start + n > lo:
            groups.append(g)
            first = start if first is None else first
        start += n
    if not groups:
        return f.schema_arrow.empty_table().to_pandas() if columns is None else \
            f.schema_arrow.empty_table().select(list(columns)).to_pandas()
    table = f.read_row_groups(groups, columns=list(columns) if columns is not None else None)
    return table.slice(lo - first, hi - lo).to_pandas()


def invalidate(out_dir: Path, names: Iterable[str] = ("manifest.parquet", "summary.json")) -> None:
    """Remove merged outputs that are about to be stale, so a run that dies leaves none."""
    for n in names:
        try:
            (Path(out_dir) / n).unlink()
        except FileNotFoundError:
            pass


def map_batches(fn: Callable, work: Iterable, workers: int, initializer: Callable, initargs: tuple,
                desc: str, total: Optional[int] = None, label: Optional[Callable[[Any], str]] = None) -> Iterator:
    """fn over the work items, results in order; in a process pool when workers > 1 (fn and
    initializer are module-level functions, each worker initialised once).

    At most 2 x workers items are in flight, and `work` may be a generator, so neither the
    items waiting to be done nor the results waiting to be consumed grow with the data set.
    An exception that fn did not handle comes back as BatchError naming the item (`label(w)`)."""
    if total is None and hasattr(work, "__len__"):
        total = len(work)
    name = label or (lambda w: "one batch")

    def failed(w, e: Exception) -> BatchError:
        return e if isinstance(e, (BatchError, PipelineError)) else BatchError(name(w), e)

    if workers <= 1 or (total is not None and total <= 1):
        initializer(*initargs)
        for w in tqdm(work, total=total, desc=desc, disable=None, unit="batch"):
            try:
                r = fn(w)
            except Exception as e:
                raise failed(w, e) from e
            yield r
        return
    import multiprocessing as mp

    # Never plain fork: the parent has used torch/OpenCV thread pools by now (a stage that runs
    # several data sets in one process merges one before it forks for the next), and a forked
    # child inherits their locks held: it hangs at 0% CPU. forkserver children start clean.
    method = os.environ.get("ARCPIPE_START_METHOD") or (
        "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    ctx = mp.get_context(method)
    if method == "forkserver":  # the server imports what the workers run once, before it forks them
        ctx.set_forkserver_preload(sorted({fn.__module__, initializer.__module__} - {"__main__", "builtins"}))
    window = 2 * workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer,
                             initargs=initargs) as ex, \
            tqdm(total=total, desc=desc, disable=None, unit="batch") as bar:
        pending: deque = deque()

        def take():
            w, fut = pending.popleft()
            try:
                r = fut.result()
            except Exception as e:
                raise failed(w, e) from e
            bar.update()
            return r

        for w in work:
            pending.append((w, ex.submit(fn, w)))
            if len(pending) >= window:
                yield take()
        while pending:
            yield take()


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
