"""The evaluate stage: embed every benchmark with one model, run each protocol, write metrics
DVC understands.

Outputs (both folders are rebuilt whole and renamed into place at the end, so a failure leaves
the previous ones untouched):

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
    <metrics_dir>/summary.json    the stage summary (counts, seconds, params digest)
    <plots_dir>/roc_<name>.csv    the verification ROC averaged over folds: threshold,fpr,tpr
"""
from __future__ import annotations

import csv
import importlib
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from ..errors import PipelineError
from ..fsutil import atomic_path, write_json_atomic
from .model import Embedder, file_sha256, load_embedder
from .verification import evaluate_embeddings

__all__ = ["run_evaluate", "decode_bin_images", "embed_bins", "verify_bin", "write_csv", "BENCHES"]

DECODE_CHUNK = 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# params section name -> (module, function) of the other benchmarks
BENCHES = {
    "ijb": ("arcpipe.evaluate.ijb", "run_ijb"),
    "megaface": ("arcpipe.evaluate.megaface", "run_megaface"),
    "ytf": ("arcpipe.evaluate.ytf", "run_ytf"),
}


def decode_bin_images(bins: list[bytes], start: int, stop: int, path: str) -> np.ndarray:
    """JPEG/PNG bytes bins[start:stop] -> RGB uint8 (n, 112, 112, 3); errors name the image."""
    import cv2

    out = np.empty((stop - start, 112, 112, 3), dtype=np.uint8)
    for i in range(start, stop):
        b = bins[i]
        img = cv2.imdecode(np.frombuffer(b, dtype=np.uint8), cv2.IMREAD_COLOR) if len(b) else None
        if img is None:
            raise PipelineError(f"{path}: image {i} (pair {i // 2}) is not a decodable image")
        if img.shape[:2] != (112, 112):
            raise PipelineError(f"{path}: image {i} (pair {i // 2}) is {img.shape[1]}x{img.shape[0]}; "
                                "expected an aligned 112x112 face")
        out[i - start] = img[:, :, ::-1]
    return out


def embed_bins(bins: list[bytes], embedder: Embedder, flip: bool, path: str, desc: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """Embed every image of a pack (decoded in chunks): (raw, raw of the flip or None), float32."""
    n = len(bins)
    a = np.empty((n, embedder.embedding_size), dtype=np.float32)
    b = np.empty_like(a) if flip else None
    with tqdm(total=n, desc=desc or Path(path).name, unit="img", disable=None) as bar:
        for s in range(0, n, DECODE_CHUNK):
            e = min(n, s + DECODE_CHUNK)
            va, vb = embedder.embed_views(decode_bin_images(bins, s, e, path), flip)
            a[s:e] = va
            if b is not None:
                b[s:e] = vb
            bar.update(e - s)
    return a, b


def _load_pack(path: str) -> tuple[list[bytes], np.ndarray]:
    from ..evalpack import load_bin

    bins, issame = load_bin(path)
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    if len(bins) != 2 * issame.shape[0]:
        raise PipelineError(f"{path}: {len(bins)} images for {issame.shape[0]} pairs; "
                            f"a verification pack holds exactly 2 images per pair")
    return bins, issame


def verify_bin(name: str, path: str, embedder: Embedder, flip: bool, folds: int, far_target: float,
               log=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One verification set: (metrics dict, ROC columns)."""
    bins, issame = _load_pack(path)
    if issame.shape[0] < folds:
        raise PipelineError(f"{path}: {issame.shape[0]} pairs cannot make {folds} folds (evaluate.folds)")
    a, b = embed_bins(bins, embedder, flip, path, desc=name)
    res = evaluate_embeddings(a, issame, folds=folds, far_target=far_target, flipped=b)
    raw = a.astype(np.float64) if b is None else a.astype(np.float64) + b.astype(np.float64)
    metrics = {
        "benchmark": name,
        "protocol": "verification-10fold" if folds == 10 else f"verification-{folds}fold",
        **res.to_dict(),
        "flip": bool(flip),
        "xnorm": float(np.mean(np.linalg.norm(raw, axis=1))),
        "data": {"path": str(path), "sha256": file_sha256(path), "images": len(bins)},
    }
    roc = {"threshold": np.round(res.roc_thresholds, 6), "fpr": res.fpr, "tpr": res.tpr}
    if log is not None:
        log.info("%s: acc %.5f +- %.5f, VAL %.5f @ FAR %.5f (target %g), %d pairs",
                 name, res.acc_mean, res.acc_std, res.val_mean, res.far_mean, far_target, res.n_pairs)
    return metrics, roc


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


def _bench_function(section: str) -> Callable[..., dict]:
    mod_name, fn_name = BENCHES[section]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise PipelineError(f"evaluate.{section}: the benchmark module {mod_name} is not available ({e})") from None
    return getattr(mod, fn_name)


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


def run_evaluate(ctx) -> dict[str, Any]:
    p = ctx.params.evaluate
    for name, path in p.verification.items():
        ctx.require_path(f"evaluate.verification.{name}", path)
    benches = _bench_runs(p)
    if not p.verification and not benches:
        raise PipelineError(f"{ctx.params_files[0]}: evaluate: nothing to evaluate (no verification sets, no ijb/megaface/ytf)")
    embedder = load_embedder(p.model, p.device, p.batch_size)
    identity = embedder.identity()
    ctx.log.info("model: %s", identity.get("name") or identity["kind"])

    counts: dict[str, Any] = {"benchmarks": [], "pairs": {}, "model": identity.get("name") or identity["kind"]}
    metrics_dir, plots_dir = Path(p.metrics_dir), Path(p.plots_dir)
    with atomic_path(metrics_dir) as mtmp, atomic_path(plots_dir) as ptmp:
        mtmp.mkdir(parents=True)
        ptmp.mkdir(parents=True)
        for name, path in sorted(p.verification.items()):
            metrics, roc = verify_bin(name, path, embedder, p.flip, p.folds, p.far_target, ctx.log)
            metrics["model"] = identity
            metrics["roc_plot"] = str(plots_dir / f"roc_{name}.csv")
            write_json_atomic(mtmp / f"{name}.json", metrics)
            write_csv(ptmp / f"roc_{name}.csv", roc)
            counts["benchmarks"].append(name)
            counts["pairs"][name] = metrics["pairs"]
        for section, name, params in benches:
            fn = _bench_function(section)
            result = dict(fn(params, embedder, ctx) or {})
            if section != "ijb":
                name = str(result.get("benchmark") or name)
            if not _SAFE_NAME.match(name) or name == "summary" or name in p.verification:
                raise PipelineError(f"evaluate.{section}: benchmark name {name!r} cannot name its metrics file "
                                    "(clashes with a verification set, or not a plain name)")
            result["benchmark"] = name
            plots = result.pop("plots", None) or {}
            for plot_name, columns in plots.items():
                plot_file = f"{plot_name}_{name}.csv"
                write_csv(ptmp / plot_file, columns)
                result.setdefault("plot_files", []).append(str(plots_dir / plot_file))
            result["model"] = identity
            write_json_atomic(mtmp / f"{name}.json", result)
            counts["benchmarks"].append(name)
        rec = ctx.summary_record(counts)
        write_json_atomic(mtmp / "summary.json", rec)
    return counts
