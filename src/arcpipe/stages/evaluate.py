"""Evaluate one face model on every benchmark in params.yaml `evaluate` (metrics/, plots/).

    python scripts/evaluate.py

Embeds every benchmark with one model and runs each protocol (arcpipe.evaluate); writes metrics
DVC understands.

Benchmarks are switched off by name without restating the others: `evaluate.only: [lfw]`,
`evaluate.skip: [ijbs, megaface]`.

Outputs (written into temporary folders and moved into place file by file at the end, so a
failure leaves the previous ones untouched, and the files of benchmarks this run did not judge
stay: evaluating one benchmark by hand does not delete the others' metrics. Under DVC and
Snakemake the three folders are outputs, removed before the stage runs):

    <metrics_dir>/<name>.json     one per verification set (evaluate.verification {name: .bin}):
                                  acc_mean/acc_std, fold_acc, fold_threshold, val_mean/val_std/
                                  far_mean at far_target, pair counts, the .bin's path + sha256,
                                  the model's identity, flip, xnorm (mean raw embedding norm)
    <metrics_dir>/<bench>.json    each IJB set by its name in evaluate.ijb (ijbb, ijbc...), megaface, ytf,
                                  when their params sections are set: the dict their
                                  run_<bench>(section, embedder, ctx) returns, plus the
                                  model identity. A key "plots" in that dict ({plot name:
                                  {column: list} or [row dicts]}) is taken out and written
                                  as plots/<plot name>_<bench>.csv (e.g. roc_ijbc.csv).
    <metrics_dir>/summary.json    the stage summary (counts and the params digest; timings go to logs/timings.jsonl)
    <plots_dir>/roc_<name>.csv    the verification ROC averaged over folds: threshold,fpr,tpr
    <embeddings_dir>/<name>.npz   every benchmark's embeddings: key + float16 unit vectors + norms
                                  (arcpipe.evaluate.embeddings), with summary.json listing them

IJB, MegaFace and YTF read and align (decode) their images in evaluate.workers processes
(arcpipe.evaluate.loader; --workers N overrides, capped at the CPUs); the model runs here.
Metrics and embeddings do not depend on the number of workers.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import PipelineError
from ..evaluate.embeddings import EmbeddingTable
from ..evaluate.ijb import run_ijb
from ..evaluate.megaface import run_megaface
from ..evaluate.model import load_embedder
from ..evaluate.packs import verify_bin
from ..evaluate.ytf import run_ytf
from ..fsutil import atomic_files_into, write_json_atomic

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# params section name -> the function that runs that benchmark
BENCHES: dict[str, Callable[..., dict]] = {"ijb": run_ijb, "megaface": run_megaface, "ytf": run_ytf}


def write_csv(path: Path, columns: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Plot data as CSV: either {column: values} or a list of row dicts with the same keys."""
    if isinstance(columns, list):
        rows = columns
        names = list(rows[0]) if rows else []
        columns = {c: [r[c] for r in rows] for c in names}
    names = list(columns)
    cols = [list(np.asarray(columns[c]).reshape(-1)) for c in names]
    if len({len(c) for c in cols}) > 1:
        raise ValueError(f"{path}: plot columns differ in length")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in zip(*cols):
            w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])


def _bench_runs(p) -> list[tuple[str, str, Any]]:
    """(section, metrics name, params) for each benchmark to run: every IJB set by its name."""
    runs: list[tuple[str, str, Any]] = []
    for section in BENCHES:
        value = getattr(p, section, None)
        if section == "ijb":
            runs += [(section, name, v) for name, v in sorted((value or {}).items()) if v is not None]
        elif value is not None:
            runs.append((section, section, value))
    return runs


class _ViewTap:
    """The embedder as verify_bin uses it, keeping a copy of every image's feature (the two
    views added, as the protocol adds them) for the embeddings file."""

    def __init__(self, embedder, table: EmbeddingTable):
        self._embedder = embedder
        self._table = table

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def embed_views(self, rgb, flip: bool = True):
        a, b = self._embedder.embed_views(rgb, flip)
        feat = a if b is None else a.astype(np.float64) + b.astype(np.float64)
        start = len(self._table)
        self._table.add(np.arange(start, start + feat.shape[0], dtype=np.int64), feat)
        return a, b


def run_baselines(p, ctx) -> dict[str, Any]:
    """Each evaluate.baselines model on every verification pack: the numbers the main model is
    judged against (the pixels baseline; the trained network before training)."""
    out: dict[str, Any] = {"benchmark": "baselines", "models": {}}
    for name, spec in sorted(p.baselines.items()):
        embedder = load_embedder(spec, p.device, p.batch_size)
        sets = {}
        for set_name, path in sorted(p.verification.items()):
            metrics, _ = verify_bin(set_name, path, embedder, p.flip, p.folds, p.far_target)
            sets[set_name] = {k: metrics.get(k) for k in ("acc_mean", "acc_std", "pairs", "fold_rule")}
            ctx.log.info("baseline %s: %s accuracy %.4f", name, set_name, metrics["acc_mean"])
        out["models"][name] = {"model": embedder.identity(), "verification": sets}
    return out


def run(ctx) -> dict[str, Any]:
    p = ctx.params.evaluate.selected()  # only/skip applied
    for name, path in p.verification.items():
        ctx.require_path(f"evaluate.verification.{name}", path)
    for name, spec in p.baselines.items():
        if spec.path:
            ctx.require_path(f"evaluate.baselines.{name}.path", spec.path)
    benches = _bench_runs(p)
    if not p.verification and not benches:
        raise PipelineError(f"{ctx.params_files[0]}: evaluate: nothing to evaluate (no verification sets, no ijb/megaface/ytf, "
                            "or evaluate.only/skip leave none)")
    embedder = load_embedder(p.model, p.device, p.batch_size)
    identity = embedder.identity()
    ctx.log.info("model: %s; decode/align workers: %d", identity.get("name") or identity["kind"], ctx.workers)

    counts: dict[str, Any] = {"benchmarks": [], "pairs": {}, "model": identity.get("name") or identity["kind"]}
    metrics_dir, plots_dir, emb_dir = Path(p.metrics_dir), Path(p.plots_dir), Path(p.embeddings_dir)
    saved: dict[str, Any] = {}
    with atomic_files_into(metrics_dir) as mtmp, atomic_files_into(plots_dir) as ptmp, \
            atomic_files_into(emb_dir) as etmp:
        mtmp.mkdir(parents=True)
        ptmp.mkdir(parents=True)
        etmp.mkdir(parents=True)
        for name, path in sorted(p.verification.items()):
            table = EmbeddingTable("image index in the .bin pack (pair i = images 2i, 2i+1)")
            with ctx.working_on(f"verification set {name} ({path})"):
                metrics, roc = verify_bin(name, path, _ViewTap(embedder, table), p.flip, p.folds, p.far_target,
                                          ctx.log)
            saved[name] = table.write(etmp / f"{name}.npz")
            saved[name]["file"] = str(emb_dir / f"{name}.npz")
            metrics["model"] = identity
            metrics["roc_plot"] = str(plots_dir / f"roc_{name}.csv")
            write_json_atomic(mtmp / f"{name}.json", metrics)
            write_csv(ptmp / f"roc_{name}.csv", roc)
            counts["benchmarks"].append(name)
            counts["pairs"][name] = metrics["pairs"]
        for section, name, params in benches:
            fn = BENCHES[section]
            with ctx.working_on(f"benchmark {name} (evaluate.{section})"):
                result = dict(fn(params, embedder, ctx) or {})
            if section != "ijb":
                name = str(result.get("benchmark") or name)
            if not _SAFE_NAME.match(name) or name in ("summary", "baselines") or name in p.verification:
                raise PipelineError(f"evaluate.{section}: benchmark name {name!r} cannot name its metrics file "
                                    "(clashes with a verification set, or not a plain name)")
            result["benchmark"] = name
            table = result.pop("embeddings", None)
            if table is not None:
                saved[name] = table.write(etmp / f"{name}.npz")
                saved[name]["file"] = str(emb_dir / f"{name}.npz")
            plots = result.pop("plots", None) or {}
            for plot_name, columns in plots.items():
                plot_file = f"{plot_name}_{name}.csv"
                write_csv(ptmp / plot_file, columns)
                result.setdefault("plot_files", []).append(str(plots_dir / plot_file))
            result["model"] = identity
            write_json_atomic(mtmp / f"{name}.json", result)
            counts["benchmarks"].append(name)
        if p.baselines:
            with ctx.working_on("baselines"):
                base = run_baselines(p, ctx)
            write_json_atomic(mtmp / "baselines.json", base)
            counts["baselines"] = sorted(base["models"])
        counts["embeddings"] = {k: v["rows"] for k, v in saved.items()}
        write_json_atomic(etmp / "summary.json", {"model": identity, "files": saved})
        rec = ctx.summary_record(counts)
        write_json_atomic(mtmp / "summary.json", rec)
    return counts
