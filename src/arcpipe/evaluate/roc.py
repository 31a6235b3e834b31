"""ROC curves and TAR at FAR, with the rules the insightface evaluation scripts use.

Two rules exist in the reference code base, and both are here:

* `tar_at_far` (IJB-B/C 1:1, eval_ijbc.py): the ROC as sklearn's ``roc_curve(label, score)``
  builds it (default ``drop_intermediate=True``: points collinear with both neighbours are
  dropped, then (0, 0) is prepended); the arrays are reversed and, for each target FAR, the TPR
  is read at the first index (of the reversed arrays) whose |FPR - target| is smallest. Reversed,
  the first of several points with equal FPR is the one with the largest TPR.
  `roc_points` reproduces sklearn's arrays exactly, without sklearn, from one sort.

* `tpir_at_fpir_topk` (IJB 1:N, ijb_1n.py; also used for MegaFace verification): the threshold
  is the k-th largest impostor score with k = ceil(rate * n_queries) (1:N) or
  ceil(rate * n_impostors) (MegaFace), and the TPR is the fraction of genuine scores strictly
  above it. Only the k largest impostor scores are needed, so callers can stream them.

* `mark_unresolvable`: a rate below 1 / (number of impostor comparisons) cannot be resolved
  (not one false accept is allowed at it), whichever rule reads the curve. Its TAR (TPIR) and
  threshold are reported as None, and the metrics dict gets
  "not_resolvable": {"<rate key>": "FAR <rate> needs at least <ceil(1/rate)> impostor pairs; <n> here"}
  (empty when every rate resolves). The ROC plots are not affected.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "roc_points",
    "tar_at_far",
    "tar_from_roc",
    "top_k_desc",
    "merge_top_k",
    "tpr_at_threshold_rank",
    "ceil_rank",
    "far_key",
    "roc_plot_rows",
    "pairs_needed",
    "mark_unresolvable",
]


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of equal length")
    if scores.size and not np.all(np.isfinite(scores)):
        raise ValueError("scores hold NaN or infinite values")
    return labels.astype(bool, copy=False), scores


def roc_points(labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) equal to sklearn.metrics.roc_curve(labels, scores).

    One descending sort; a threshold per distinct score; cumulative counts at the last index of
    each run of equal scores. An empty class gives NaN rates (sklearn warns and does the same).
    """
    y, s = _check(labels, scores)
    if s.size == 0:
        raise ValueError("no scores")
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    ends = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    ends = np.append(ends, s_sorted.size - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    thr = s_sorted[ends]
    if drop_intermediate and fps.size > 2:
        corner = (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0)
        keep = np.concatenate(([True], corner, [True]))
        tps, fps, thr = tps[keep], fps[keep], thr[keep]
    tps = np.concatenate(([0], tps)).astype(np.float64)
    fps = np.concatenate(([0], fps)).astype(np.float64)
    thr = np.concatenate(([np.inf], thr.astype(np.float64)))
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def tar_from_roc(fpr: np.ndarray, tpr: np.ndarray, fars: Iterable[float]) -> list[float]:
    """For each target FAR the TPR at the nearest FPR (first index of the reversed curve wins)."""
    f = np.asarray(fpr, dtype=np.float64)[::-1]
    t = np.asarray(tpr, dtype=np.float64)[::-1]
    out = []
    for x in fars:
        if np.all(np.isnan(f)):
            out.append(float("nan"))
            continue
        out.append(float(t[int(np.argmin(np.abs(f - float(x))))]))
    return out


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float]) -> dict[str, float]:
    """{'1e-06': tar, ...}: eval_ijbc.py's TAR@FAR on these scores."""
    fpr, tpr, _ = roc_points(labels, scores)
    return {far_key(x): v for x, v in zip(fars, tar_from_roc(fpr, tpr, fars))}


def far_key(x: float) -> str:
    """1e-06 -> '1e-06'; 0.1 -> '0.1' (the keys of metrics JSON files)."""
    return repr(float(x))


# ---------------------------------------------------------------- streamed top-k rule

def top_k_desc(values: np.ndarray, k: int) -> np.ndarray:
    """The k largest values (all when fewer), sorted in descending order."""
    v = np.asarray(values).ravel()
    if k <= 0:
        return v[:0].copy()
    if v.size > k:
        v = np.partition(v, v.size - k)[v.size - k:]
    return np.sort(v)[::-1]


def merge_top_k(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Top k of two descending top-k lists (or any arrays)."""
    return top_k_desc(np.concatenate((np.asarray(a).ravel(), np.asarray(b).ravel())), k)


def tpr_at_threshold_rank(pos: np.ndarray, neg_top_desc: np.ndarray, ranks: Sequence[int]
                          ) -> tuple[list[float], list[float]]:
    """For each rank k: threshold = neg_top_desc[k-1]; rate = fraction of pos strictly above it.

    `neg_top_desc` must hold at least max(ranks) impostor scores in descending order (the k
    largest of all of them). A rank below 1 (a rate too small to allow one false accept) would
    make the 1:N script index neg[-1]; here it is refused with a ValueError.
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg_top_desc, dtype=np.float64)
    ths, rates = [], []
    for k in ranks:
        if k < 1:
            raise ValueError(f"threshold rank {k}: the rate is too small for this many comparisons")
        if k > neg.size:
            raise ValueError(f"threshold rank {k} but only {neg.size} impostor scores")
        th = float(neg[k - 1])
        ths.append(th)
        rates.append(float(np.count_nonzero(pos > th)) / pos.size if pos.size else float("nan"))
    return rates, ths


def ceil_rank(rate: float, n: int) -> int:
    """math.ceil(n * rate), as the 1:N script computes the number of tolerated false alarms."""
    return int(math.ceil(n * rate))


# ---------------------------------------------------------------- rates too small for the data

def pairs_needed(rate: float) -> int:
    """ceil(1 / rate): the fewest impostor comparisons at which `rate` allows one false accept.

    1 / 1e-6 is 999999.99999999988 in floating point; a quotient within 1e-9 (relative) of an
    integer is taken as that integer, so decimal rates give the count they name.
    """
    q = 1.0 / float(rate)
    r = round(q)
    return int(r) if abs(q - r) <= 1e-9 * q else int(math.ceil(q))


def mark_unresolvable(rates: Sequence[float], n: int, *tables: dict) -> dict[str, str]:
    """Set to None, in each of `tables` ({far_key(rate): value}), every rate below 1 / n.

    Returns {far_key(rate): "FAR <rate> needs at least <ceil(1/rate)> impostor pairs; <n> here"}
    for those rates ({} when all resolve). n = 0 resolves none.
    """
    n = int(n)
    out: dict[str, str] = {}
    for x in rates:
        need = pairs_needed(x)
        if n < need:
            key = far_key(x)
            out[key] = f"FAR {key} needs at least {need} impostor pairs; {n} here"
            for t in tables:
                if key in t:
                    t[key] = None
    return out


# ---------------------------------------------------------------- plots

def roc_plot_rows(fpr: np.ndarray, tpr: np.ndarray, points: int = 400, min_fpr: float = 1e-7
                  ) -> list[dict[str, float]]:
    """A compact ROC for a DVC plot: for FPR values on a log grid, the best TPR reached there.

    Rows {'fpr': x, 'tpr': y} with x non-decreasing; at most `points` rows plus the end point.
    A curve of at most `points` points is returned whole.
    """
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    ok = np.isfinite(f) & np.isfinite(t)
    f, t = f[ok], t[ok]
    if f.size == 0:
        return []
    if f.size <= points:                         # small curves: every point, exactly
        return [{"fpr": float(x), "tpr": float(y)} for x, y in zip(f, t)]
    best = np.maximum.accumulate(t)              # f is non-decreasing along the curve
    lo = max(min_fpr, float(f[f > 0].min()) if np.any(f > 0) else min_fpr)
    grid = np.unique(np.concatenate((np.geomspace(lo, 1.0, points), [1.0])))
    idx = np.searchsorted(f, grid, side="right") - 1
    rows = []
    for x, i in zip(grid, idx):
        if i >= 0:
            rows.append({"fpr": float(x), "tpr": float(best[i])})
    return rows
