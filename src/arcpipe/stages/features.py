"""Embed the images of a training pack or an aligned set with one model: data/features/<NAME>/.

    python scripts/features.py --dataset NAME [--shard I/K] [--workers N]

NAME is a key of features.sets ({source, format: pack | aligned}); without --dataset every set
is done, one after another. The model is features.model (the shape of evaluate.model); images
are decoded in `--workers` processes and embedded in batches of features.batch_size here.

Writes data/features/NAME/: features.npy, index.parquet, meta.json (arcpipe.clean.store: a
FeatureStore), identities.parquet (label -> identity name, "" where the source names none, and
its image count) and summary.json (counts), and with shards, parts/. A shard job (--shard I/K)
embeds one block of whole identities into parts/part-IIIII-of-KKKKK.npy + .parquet; a part whose
digest (source, model, settings, shard count) matches is reused, never recomputed. A run without
--shard computes the missing parts and concatenates them in order, or, when no part is there,
embeds everything in one go: the same bytes either way. The old outputs are removed before
anything is computed and summary.json is renamed into place last, so a run that dies leaves no
store, and a part that dies leaves no part.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from ..clean.features import (PartWriter, append_part, check_model, embed_rows, open_feature_source,
                              part_complete, remove_leftovers)
from ..clean.store import FEATURES, INDEX, META, FeatureWriter
from ..errors import PipelineError
from ..evaluate.model import find_sidecar, load_embedder
from ..fsutil import digest_of, remove_path
from ..shards import invalidate, part_path, write_parquet_atomic

__all__ = ["run", "add_arguments"]

IDENTITIES, SUMMARY = "identities.parquet", "summary.json"
OUTPUTS = (SUMMARY, META, FEATURES, INDEX, IDENTITIES)
STAGING = ".merging"


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="which entry of features.sets to embed (default: all, one after another)")


def run(ctx) -> dict[str, Any]:
    sets = ctx.params.features.sets
    if not sets:
        raise PipelineError(f"{ctx.params_files[0]}: features.sets is empty")
    name = getattr(ctx.args, "dataset", None)
    if name is None and len(sets) == 1:
        name = next(iter(sets))
    if name is None:
        if ctx.shard is not None:
            raise PipelineError(f"--shard needs --dataset: one of {', '.join(sets)}")
        return {"sets": {n: features_set(ctx, n) for n in sets}}
    if name not in sets:
        raise PipelineError(f"--dataset {name}: not in features.sets ({', '.join(sets)})")
    return features_set(ctx, name)


def _embedder(ctx):
    p = ctx.params.features
    m = p.model
    if m.kind != "pixels":
        ctx.require_path("features.model.path", m.path)
        if m.sidecar is not None:
            ctx.require_path("features.model.sidecar", m.sidecar)
        try:
            find_sidecar(m.path, m.sidecar)
        except PipelineError as e:
            raise PipelineError(str(e).replace("evaluate.model", "features.model")) from None
    return load_embedder(m, device=p.device, batch_size=p.batch_size)


def features_set(ctx, name: str) -> dict[str, Any]:
    p = ctx.params.features
    cfg = p.sets[name]
    count = ctx.shard_count(p.shards)
    ctx.require_path(f"features.sets.{name}.source", cfg.source)
    with ctx.working_on(f"set {name}"):
        src = open_feature_source(cfg.source, cfg.format)
        embedder = _embedder(ctx)
        n = len(src)
        if n == 0:
            raise PipelineError(f"{cfg.source}: no images to embed")
        model = embedder.identity()
        dim = embedder.embedding_size
        meta = {"dataset": name, "format": cfg.format, "source": str(cfg.source), "model": model, "flip": p.flip}
        digest = digest_of({"stage": "features", **meta, "fingerprint": src.fingerprint, "n": n, "shards": count,
                            "device": p.device, "batch_size": p.batch_size, "v": 1})
        out_dir = Path(p.out_dir) / name
        parts_dir = out_dir / "parts"
        todo = [ctx.shard[0]] if ctx.shard is not None else list(range(count))
        done = {i for i in todo if part_complete(part_path(parts_dir, i, count), digest,
                                                 _rows(src, i, count), dim)}
        checked = False

        def ensure_model():
            nonlocal checked
            if not checked:
                check_model(embedder)
                checked = True

        if ctx.shard is None and not done:  # nothing to resume from: all of it in one go
            ensure_model()
            invalidate(out_dir, OUTPUTS)
            for i in todo:  # what killed shard jobs left
                remove_leftovers(part_path(parts_dir, i, count))
            return _publish(ctx, src, name, out_dir, dim, meta, count, 0, lambda w: embed_rows(
                src, 0, n, embedder, w, ctx.workers, p.flip, desc=f"features {name}"))
        for i in todo:
            path = part_path(parts_dir, i, count)
            if i in done:
                ctx.log.info("%s: part %d/%d complete, reused", name, i, count)
                continue
            ensure_model()
            invalidate(out_dir, OUTPUTS)
            lo, hi = src.shard_bounds(i, count)
            remove_leftovers(path)
            with ctx.working_on(f"part {i}/{count}, rows {lo}..{hi - 1}"), \
                    PartWriter(path, hi - lo, dim, digest, {"dataset": name, "index": i, "count": count,
                                                           "lo": lo, "hi": hi}) as w:
                embed_rows(src, lo, hi, embedder, w, ctx.workers, p.flip, desc=f"features {name} {i}/{count}")
            ctx.log.info("%s: part %d/%d written: rows %d..%d", name, i, count, lo, hi - 1)
        if ctx.shard is not None:
            lo, hi = src.shard_bounds(ctx.shard[0], count)
            return {"dataset": name, "part": f"{ctx.shard[0]}/{count}", "rows": [lo, hi], "out": hi - lo,
                    "parts_reused": len(done)}

        def merge(w: FeatureWriter) -> None:
            for i in range(count):
                append_part(part_path(parts_dir, i, count), w)

        with ctx.working_on(f"merging {count} part(s)"):
            return _publish(ctx, src, name, out_dir, dim, meta, count, len(done), merge)


def _rows(src, i: int, count: int) -> int:
    lo, hi = src.shard_bounds(i, count)
    return hi - lo


def _publish(ctx, src, name: str, out_dir: Path, dim: int, meta: dict, count: int, reused: int,
             fill: Callable[[FeatureWriter], Optional[int]]) -> dict[str, Any]:
    """Write the store into a staging folder, then move its files into out_dir, summary last."""
    staging = out_dir / STAGING
    remove_path(staging)
    remove_leftovers(staging)
    with FeatureWriter(staging, dim, meta) as w:
        fill(w)
        written = w.count
    if written != len(src):  # pragma: no cover - a bug, not a data problem
        raise PipelineError(f"{staging}: {written} features for {len(src)} images")
    identities = src.identities()
    write_parquet_atomic(staging / IDENTITIES, identities)
    labels = src.labels
    counts = {"dataset": name, "format": src.format, "source": str(src.path),
              "model": {k: meta["model"].get(k) for k in ("kind", "name", "path", "sha256")},
              "dim": dim, "flip": meta["flip"], "shards": count,
              "in": src.counts.get("in", len(src)), "out": written, "rejected": src.counts.get("rejected", {}),
              "identities": int((identities["images"] > 0).sum()), "unlabelled": int((labels < 0).sum())}
    ctx.write_summary(staging / SUMMARY, counts)
    for f in OUTPUTS[::-1]:  # summary.json last: its presence means the folder is whole
        os.replace(staging / f, out_dir / f)
    staging.rmdir()
    ctx.log.info("%s: %d images embedded (%d identities, %d without one), %d-d, %s", name, written,
                 counts["identities"], counts["unlabelled"], dim, out_dir)
    return {**counts, "parts_reused": reused}
