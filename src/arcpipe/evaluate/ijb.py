"""IJB-B / IJB-C: 1:1 template verification and 1:N identification.

Protocol (as insightface's arcface_torch/eval_ijbc.py and _evaluation_/ijb/ijb_1n.py compute it):

* meta/<t>_name_5pts_score.txt: one row per image, "<image> x1 y1 ... x5 y5 <detector score>";
  meta/<t>_face_tid_mid.txt: the same rows in the same order, "<image> <template> <media>";
  meta/<t>_template_pair_label.txt: "<template1> <template2> <label 0/1>".
* Each image of loose_crop/ is aligned from its five landmarks to 112x112 and embedded;
  F (flip): feature = emb(image) + emb(mirrored image), else emb(image) alone;
  N (keep_norm): keep the raw feature, else L2-normalise it; D (detector_score): multiply it by
  the row's detector score.
* Template = for each media of the template the mean of its image features, summed over the
  medias, then L2-normalised (a zero vector stays zero). Score of a pair = dot product.
* TAR at FAR: arcpipe.evaluate.roc.tar_at_far (the ROC point with the nearest FPR); a FAR below
  1 / impostor pairs (a FPIR below 1 / non-mated scores) is not resolvable: None, with the
  reason under "not_resolvable" (arcpipe.evaluate.roc.mark_unresolvable).
* 1:N: gallery templates = the rows of <t>_1N_gallery_G1.csv + ..._G2.csv (IJB-B: S1, S2),
  probes = <t>_1N_probe_mixed.csv; columns TEMPLATE_ID, SUBJECT_ID (first row of each template
  gives its subject). Every probe subject must have exactly one gallery template. Rank-k: the
  mated gallery template is among the k best (ties count in its favour). TPIR at FPIR r:
  threshold = the ceil(r * n_probes)-th largest non-mated score, TPIR = fraction of probes whose
  mated score is strictly above it (the 1:N script's rule).

What differs, on purpose: pooling is one sparse product (in the features' precision) instead of a
Python loop per template and media; pairs are scored by template tiles (a dense product per
tile that holds many pairs, a gather-and-dot for sparse ones) in float32; a pair naming a
template with no images is an error naming the pairs file and line (the reference silently
scores it against template row 0). Rows with missing, non-finite or degenerate landmarks (five
points that coincide or lie on one line), or an unreadable image, are skipped and reported with
file and line (on_bad_row: skip) or stop the run (error);
skipping is what the protocol allows, because a template is the pool of whatever images it
has: a template left with no image gets the zero vector, so its pairs score 0, and is counted.

Images are read and aligned in a worker pool (arcpipe.evaluate.loader) and embedded here in
batches of the model's batch_size, the same batches for any number of workers.

The runner writes nothing: it returns a dict {"metrics", "plots", "counts", "problems",
"embeddings"} and the evaluate stage writes metrics/<benchmark>.json, plots/roc_<benchmark>.csv
and <embeddings_dir>/<benchmark>.npz from it.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import PipelineError
from .embeddings import EmbeddingTable
from .roc import (ceil_rank, far_key, mark_unresolvable, merge_top_k, roc_plot_rows, roc_points,
                  tar_from_roc, top_k_desc, tpr_at_threshold_rank)

__all__ = [
    "read_tid_mid",
    "read_landmarks",
    "degenerate_landmarks",
    "read_template_pairs",
    "read_1n_csv",
    "media_weights",
    "pool_templates",
    "template_index",
    "score_pairs",
    "identify_1n",
    "evaluate_1to1",
    "run_ijb",
]

MAX_REPORTED = 20   # problems listed one by one in the result; all are counted


# ---------------------------------------------------------------- metadata readers

def _bad(path: Path | str, line: int, what: str) -> PipelineError:
    return PipelineError(f"{path}:{line}: {what}")


def read_tid_mid(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """<t>_face_tid_mid.txt -> (image names, template ids int64, media ids int64)."""
    path = Path(path)
    names: list[str] = []
    tids: list[int] = []
    mids: list[int] = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                raise _bad(path, ln, "empty line (expected '<image> <template id> <media id>')")
            if len(parts) != 3:
                raise _bad(path, ln, f"expected 3 fields '<image> <template id> <media id>', got {len(parts)}")
            try:
                tids.append(int(parts[1]))
                mids.append(int(parts[2]))
            except ValueError:
                raise _bad(path, ln, f"template and media ids must be integers, got {parts[1]!r} {parts[2]!r}") from None
            names.append(parts[0])
    return names, np.asarray(tids, dtype=np.int64), np.asarray(mids, dtype=np.int64)


@dataclass
class LandmarkRows:
    names: list[str]
    landmarks: np.ndarray      # (n, 5, 2) float32, NaN on bad rows
    scores: np.ndarray         # (n,) float32, NaN on bad rows
    bad: list[tuple[int, str]]  # (line number, reason), one per bad row

    @property
    def ok(self) -> np.ndarray:
        return np.isfinite(self.scores) & np.all(np.isfinite(self.landmarks.reshape(len(self.names), 10)), axis=1)


def read_landmarks(path: str | os.PathLike) -> LandmarkRows:
    """<t>_name_5pts_score.txt. A row without 10 finite coordinates and a finite score, or
    with degenerate landmarks (degenerate_landmarks), is bad: kept as a placeholder (its name,
    NaN values) and listed in .bad with its line and reason, in line order."""
    path = Path(path)
    names: list[str] = []
    rows: list[list[float]] = []
    bad: list[tuple[int, str]] = []
    nan11 = [math.nan] * 11
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                raise _bad(path, ln, "empty line (expected '<image> x1 y1 ... x5 y5 <detector score>')")
            names.append(parts[0])
            if len(parts) != 12:
                bad.append((ln, f"expected 10 landmark values and a score after the image name, got {len(parts) - 1} values"))
                rows.append(nan11)
                continue
            try:
                vals = [float(v) for v in parts[1:]]
            except ValueError as e:
                bad.append((ln, f"not a number: {str(e).split(': ', 1)[-1]}"))
                rows.append(nan11)
                continue
            if not all(map(math.isfinite, vals)):
                bad.append((ln, "landmarks or score not finite"))
                rows.append(nan11)
                continue
            rows.append(vals)
    arr = np.asarray(rows, dtype=np.float32).reshape(len(names), 11)
    lmk = arr[:, :10].reshape(-1, 5, 2).copy()
    why = degenerate_landmarks(lmk)
    for i in np.flatnonzero(why != ""):
        bad.append((int(i) + 1, str(why[i])))
        lmk[i] = np.nan
        arr[i, 10] = np.nan
    bad.sort()
    return LandmarkRows(names, lmk, arr[:, 10].copy(), bad)


# the centred points' scatter matrix must span two dimensions: its determinant over its squared
# trace is 0 for five points on one line (up to rounding: ~1e-16), 1/4 for a circle
_COLLINEAR_REL = 1e-9


def degenerate_landmarks(lmk: np.ndarray) -> np.ndarray:
    """(n, 5, 2) landmarks -> per row '' or why no similarity to the template can be fitted:
    the five points coincide (norm_crop refuses them) or lie on one line (a fit exists, but it
    maps a line onto a face: nothing a face detector gives). Non-finite rows get ''."""
    p = np.asarray(lmk, dtype=np.float64).reshape(-1, 5, 2)
    c = p - p.mean(axis=1, keepdims=True)
    sxx = np.einsum("ij,ij->i", c[..., 0], c[..., 0])
    syy = np.einsum("ij,ij->i", c[..., 1], c[..., 1])
    sxy = np.einsum("ij,ij->i", c[..., 0], c[..., 1])
    s = sxx + syy
    finite = np.all(np.isfinite(p.reshape(-1, 10)), axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        coincide = finite & ~(s > 1e-12)
        collinear = finite & ~coincide & (sxx * syy - sxy * sxy <= _COLLINEAR_REL * s * s)
    out = np.full(p.shape[0], "", dtype=object)
    out[coincide] = "degenerate landmarks: the five points coincide"
    out[collinear] = "degenerate landmarks: the five points lie on one line"
    return out


def _read_int_table(path: Path, ncols: int, what: str) -> np.ndarray:
    """Whitespace-separated integer table; fast path through pandas, exact line on any error."""
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.int64, engine="c")
        if df.shape[1] == ncols:
            return df.to_numpy()
    except Exception:  # noqa: BLE001 - located precisely below
        pass
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != ncols:
                raise _bad(path, ln, f"expected {ncols} fields '{what}', got {len(parts)}")
            for p in parts:
                try:
                    int(p)
                except ValueError:
                    raise _bad(path, ln, f"expected integers '{what}', got {p!r}") from None
    raise _bad(path, 1, f"could not be read as '{what}'")


def read_template_pairs(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """<t>_template_pair_label.txt -> (t1, t2, label bool)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise _bad(path, 1, "no pairs")
    a = _read_int_table(path, 3, "<template1> <template2> <label>")
    lab = a[:, 2]
    badl = np.flatnonzero((lab != 0) & (lab != 1))
    if badl.size:
        raise _bad(path, int(badl[0]) + 1, f"label must be 0 or 1, got {lab[badl[0]]}")
    return a[:, 0].copy(), a[:, 1].copy(), lab.astype(bool)


def read_1n_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A 1:N gallery/probe csv -> (template ids, subject ids), one per row.

    With a header the TEMPLATE_ID and SUBJECT_ID columns are used; without one the first two.
    """
    path = Path(path)
    tids: list[int] = []
    sids: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        ct, cs = 0, 1
        for ln, row in enumerate(reader, 1):
            if not row or all(not c.strip() for c in row):
                continue
            if ln == 1 and not row[0].strip().lstrip("-").isdigit():
                upper = [c.strip().upper() for c in row]
                if "TEMPLATE_ID" not in upper or "SUBJECT_ID" not in upper:
                    raise _bad(path, ln, f"header must name TEMPLATE_ID and SUBJECT_ID, got {row[:4]}")
                ct, cs = upper.index("TEMPLATE_ID"), upper.index("SUBJECT_ID")
                continue
            try:
                tids.append(int(row[ct]))
                sids.append(int(row[cs]))
            except (ValueError, IndexError):
                raise _bad(path, ln, "TEMPLATE_ID and SUBJECT_ID must be integers") from None
    if not tids:
        raise _bad(path, 1, "no template rows")
    return np.asarray(tids, dtype=np.int64), np.asarray(sids, dtype=np.int64)


# ---------------------------------------------------------------- pooling

def media_weights(templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique templates sorted, template index per image, 1 / images in its (template, media))."""
    templates = np.asarray(templates, dtype=np.int64)
    medias = np.asarray(medias, dtype=np.int64)
    uniq_t, t_idx = np.unique(templates, return_inverse=True)
    _, m_idx = np.unique(medias, return_inverse=True)
    key = t_idx.astype(np.int64) * (int(m_idx.max(initial=0)) + 1) + m_idx
    _, k_inv, k_cnt = np.unique(key, return_inverse=True, return_counts=True)
    return uniq_t, t_idx.ravel(), 1.0 / k_cnt[k_inv.ravel()]


def pool_templates(
    feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    det_scores: Optional[np.ndarray] = None,
    keep_norm: bool = True,
    chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Image features (n, D) -> (unique template ids, L2-normalised template features float64).

    Per image: optionally L2-normalised (keep_norm=False; a zero row stays zero), optionally
    multiplied by its detector score; then the mean within each (template, media), the sum over
    the template's medias, and an L2 normalisation. All of that is one weighted sparse sum:
    template = sum_i w_i x_i with w_i = score_i / (|x_i| or 1) / count(template_i, media_i),
    one sparse (templates x images) by dense (images x D) product in the features' precision
    (float32 features: float32 sums, like the reference's np.mean / np.sum on float32), then
    normalised in float64. No copy of the features is made.
    """
    from scipy import sparse

    feats = np.asarray(feats)
    if feats.dtype not in (np.float32, np.float64):
        feats = feats.astype(np.float32)
    n, d = feats.shape
    if len(templates) != n or len(medias) != n:
        raise ValueError(f"{n} features but {len(templates)} template and {len(medias)} media ids")
    uniq_t, t_idx, w = media_weights(templates, medias)
    if det_scores is not None:
        w = w * np.asarray(det_scores, dtype=np.float64)
    if not keep_norm:
        nrm = np.empty(n, dtype=np.float64)
        for s in range(0, n, chunk):
            x = feats[s:s + chunk]
            nrm[s:s + chunk] = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        w = w / np.where(nrm > 0, nrm, 1.0)
    m = sparse.csr_matrix((w.astype(feats.dtype), (t_idx, np.arange(n))), shape=(uniq_t.size, n))
    out = np.asarray(m @ feats, dtype=np.float64)
    nrm_t = np.sqrt(np.einsum("ij,ij->i", out, out))
    out /= np.where(nrm_t > 0, nrm_t, 1.0)[:, None]
    return uniq_t, out


# ---------------------------------------------------------------- pair scoring

def template_index(uniq_t: np.ndarray, ids: np.ndarray, where: str = "pairs") -> np.ndarray:
    """Row of each template id in uniq_t (sorted); PipelineError naming the first unknown one."""
    ids = np.asarray(ids, dtype=np.int64)
    if uniq_t.size == 0:
        pos_c = np.zeros(ids.shape, dtype=np.int64)
        missing = np.ones(ids.shape, dtype=bool)
    elif 0 <= uniq_t[0] and uniq_t[-1] < max(1 << 24, 8 * uniq_t.size):
        # small non-negative ids (IJB's are < 200,000): a lookup table, one pass
        lut = np.full(int(uniq_t[-1]) + 2, -1, dtype=np.int32)
        lut[uniq_t] = np.arange(uniq_t.size, dtype=np.int32)
        pos_c = lut[np.clip(ids, -1, uniq_t[-1] + 1)]
        missing = pos_c < 0
    else:
        pos_c = np.minimum(np.searchsorted(uniq_t, ids), uniq_t.size - 1)
        missing = uniq_t[pos_c] != ids
    if np.any(missing):
        i = int(np.flatnonzero(missing)[0])
        raise PipelineError(f"{where}: template {ids[i]} (row {i + 1}) has no images in the template/media list")
    return pos_c.astype(np.int32)


def score_pairs(
    tfeats: np.ndarray,
    i1: np.ndarray,
    i2: np.ndarray,
    tile: int = 2048,
    dense_min_density: float = 1 / 128,
    dtype: Any = np.float32,
    gather_chunk: int = 8192,
) -> np.ndarray:
    """Dot product of rows i1[p] and i2[p] of tfeats for every pair p.

    Pairs are bucketed by (i1 // tile, i2 // tile) after renumbering (see below). A bucket that
    holds at least dense_min_density of its tile's entries is scored by one matrix product of the two tiles
    (a BLAS product costs a few ns per entry, a gathered dot product about a microsecond per
    pair), a sparse bucket by gathering rows. Memory: the pair indices, one tile product and one
    gathered chunk. Scores are float32 by default: they differ from a float64 computation by
    about 1e-7, which moves a TAR only when a genuine and an impostor score lie that close.
    """
    i1 = np.asarray(i1)
    i2 = np.asarray(i2)
    nt = np.asarray(tfeats).shape[0]
    # Renumber templates by role (only first in a pair, both, only second): IJB's pairs are
    # gallery x probe, and with the gallery numbered first they fill a few tiles densely.
    left = np.zeros(nt, dtype=bool)
    left[i1] = True
    right = np.zeros(nt, dtype=bool)
    right[i2] = True
    role = np.where(left & ~right, 0, np.where(left & right, 1, np.where(right, 2, 3)))
    perm = np.argsort(role, kind="stable")
    inv = np.empty(nt, dtype=np.int32)
    inv[perm] = np.arange(nt, dtype=np.int32)
    f = np.ascontiguousarray(np.asarray(tfeats)[perm], dtype=dtype)
    a1, a2 = inv[i1], inv[i2]
    # (a, b) and (b, a), and repeated pairs, must give bit-identical scores (as the reference's
    # float64 elementwise sum does), else ties split and the ROC gains points: score (min, max)
    i1, i2 = np.minimum(a1, a2), np.maximum(a1, a2)
    del a1, a2
    n = i1.size
    out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    nb = (nt + tile - 1) // tile
    key_dtype = np.uint16 if nb * nb <= np.iinfo(np.uint16).max else np.int64
    key = (i1 // tile).astype(key_dtype) * key_dtype(nb) + (i2 // tile).astype(key_dtype)
    order = np.argsort(key, kind="stable")     # radix sort for 16-bit keys
    counts = np.bincount(key, minlength=nb * nb)
    del key
    starts = np.concatenate(([0], np.cumsum(counts)))
    for b in np.flatnonzero(counts):
        sel = order[starts[b]:starts[b + 1]]
        r0 = (b // nb) * tile
        c0 = (b % nb) * tile
        a = i1[sel]
        c = i2[sel]
        rows = min(tile, nt - r0)
        cols = min(tile, nt - c0)
        if sel.size >= dense_min_density * rows * cols:
            prod = f[r0:r0 + rows] @ f[c0:c0 + cols].T
            out[sel] = prod[a - r0, c - c0]
        else:
            for s in range(0, sel.size, gather_chunk):
                aa = a[s:s + gather_chunk]
                cc = c[s:s + gather_chunk]
                out[sel[s:s + gather_chunk]] = np.einsum("ij,ij->i", f[aa], f[cc])
    return out


def evaluate_1to1(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float]) -> dict[str, Any]:
    """TAR at each FAR (eval_ijbc.py's rule), AUC-free summary and the ROC for a plot.

    A FAR below 1 / impostor pairs cannot be resolved: its TAR is None and "not_resolvable"
    says why (arcpipe.evaluate.roc.mark_unresolvable).
    """
    fpr, tpr, _ = roc_points(labels, scores)
    tars = tar_from_roc(fpr, tpr, fars)
    genuine = int(np.count_nonzero(labels))
    impostor = int(labels.size - genuine)
    tar = {far_key(x): v for x, v in zip(fars, tars)}
    return {
        "tar_at_far": tar,
        "not_resolvable": mark_unresolvable(fars, impostor, tar),
        "pairs": int(labels.size),
        "genuine": genuine,
        "impostor": impostor,
        "_roc": (fpr, tpr),
    }


# ---------------------------------------------------------------- 1:N

def _unique_first(tids: np.ndarray, sids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, first = np.unique(tids, return_index=True)
    return u, sids[first]


def identify_1n(
    gallery_feats: np.ndarray,
    gallery_sids: np.ndarray,
    probe_feats: np.ndarray,
    probe_sids: np.ndarray,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (1e-2, 1e-1),
    chunk: int = 1024,
    where: str = "1:N probe list",
) -> dict[str, Any]:
    """Closed-set ranks and the 1:N script's TPIR at FPIR on (already normalised) templates."""
    g = np.asarray(gallery_feats, dtype=np.float64)
    p = np.asarray(probe_feats, dtype=np.float64)
    gs = np.asarray(gallery_sids)
    ps = np.asarray(probe_sids)
    g_order = np.argsort(gs, kind="stable")
    gs_sorted = gs[g_order]
    left = np.searchsorted(gs_sorted, ps, side="left")
    right = np.searchsorted(gs_sorted, ps, side="right")
    n_match = right - left
    if np.any(n_match != 1):
        i = int(np.flatnonzero(n_match != 1)[0])
        raise PipelineError(f"{where}: probe subject {ps[i]} has {int(n_match[i])} gallery templates (expected exactly 1)")
    mate = g_order[left]
    if g.shape[0] < 2:
        raise PipelineError(f"{where}: the 1:N gallery holds {g.shape[0]} template, so no probe has a non-mated "
                            "score: TPIR at FPIR cannot be measured (the gallery needs at least 2 templates)")
    nq = p.shape[0]
    ks = [ceil_rank(r, nq) for r in fpirs]
    kmax = max(ks)
    pos = np.empty(nq, dtype=np.float64)
    better = np.empty(nq, dtype=np.int64)
    neg_top = np.empty(0, dtype=np.float64)
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        sim = p[s:e] @ g.T
        r = np.arange(e - s)
        pos[s:e] = sim[r, mate[s:e]]
        better[s:e] = np.count_nonzero(sim > pos[s:e, None], axis=1)
        sim[r, mate[s:e]] = -np.inf
        neg_top = merge_top_k(neg_top, top_k_desc(sim[np.isfinite(sim)], kmax), kmax)
    n_neg = nq * g.shape[0] - nq
    tpirs, ths = tpr_at_threshold_rank(pos, neg_top, ks)
    tpir = {far_key(x): v for x, v in zip(fpirs, tpirs)}
    th = {far_key(x): v for x, v in zip(fpirs, ths)}
    return {
        "probes": int(nq),
        "gallery": int(g.shape[0]),
        "rank": {str(k): float(np.count_nonzero(better < k)) / nq for k in ranks},
        "tpir_at_fpir": tpir,
        "threshold_at_fpir": th,
        "not_resolvable": mark_unresolvable(fpirs, n_neg, tpir, th),
        "non_mated_scores": int(n_neg),
    }


# ---------------------------------------------------------------- runner

def _meta_paths(root: Path, t: str) -> dict[str, Path]:
    m = root / "meta"
    return {
        "tid_mid": m / f"{t}_face_tid_mid.txt",
        "pairs": m / f"{t}_template_pair_label.txt",
        "lmk": m / f"{t}_name_5pts_score.txt",
    }


def _embed_rows(params, embedder, root: Path, lm: LandmarkRows, rows: np.ndarray, lmk_path: Path,
                problems: list[str], counts: dict[str, int], log, workers: int = 1
                ) -> tuple[np.ndarray, np.ndarray]:
    """Align (in `workers` processes) and embed (here, batch_size crops a call) the given meta
    rows; returns (features float32, rows that were embedded)."""
    from .loader import ijb_crops, rebatch

    bs = max(1, int(getattr(embedder, "batch_size", 64) or 64))

    def aligned():
        for ok_rows, crops, failed in ijb_crops(root / "loose_crop", rows, lm.names, lm.landmarks, workers):
            for r, kind, why in failed:
                _bad_row(params, counts, problems, kind, f"{lmk_path}:{r + 1}: {why}")
            yield ok_rows, crops

    feats: list[np.ndarray] = []
    done: list[np.ndarray] = []
    for r, crops in rebatch(aligned(), bs):
        feats.append(np.asarray(embedder.embed(crops, flip=params.flip), dtype=np.float32))
        done.append(r)
    if not feats:
        raise PipelineError(f"{lmk_path}: no image could be embedded")
    return np.concatenate(feats), np.concatenate(done).astype(np.int64)


def _bad_row(params, counts: dict, problems: list[str], kind: str, msg: str) -> None:
    """A metadata row the protocol can do without: stop (on_bad_row: error) or count and report it."""
    if params.on_bad_row == "error":
        raise PipelineError(msg)
    counts[kind] += 1
    if len(problems) < MAX_REPORTED:
        problems.append(msg)


def run_ijb(params, embedder, ctx=None) -> dict[str, Any]:
    """Run IJB 1:1 (and 1:N when its csv files exist) on <root>/meta + <root>/loose_crop.

    Returns {"benchmark", "metrics": {...}, "plots": {"roc": [{fpr, tpr}, ...]}, "counts",
    "problems": ["file:line: reason", ...] (first 20), "embeddings": EmbeddingTable}; writes
    nothing. Images are read and aligned in ctx.workers processes (1 without a ctx).
    """
    log = getattr(ctx, "log", None)
    root = Path(params.root)
    t = params.target.lower()
    paths = _meta_paths(root, t)
    for key, p in paths.items():
        if not p.is_file():
            raise PipelineError(f"evaluate.ijb.root: {p} does not exist")
    names, tids, mids = read_tid_mid(paths["tid_mid"])
    lm = read_landmarks(paths["lmk"])
    if len(names) != len(lm.names):
        raise PipelineError(f"{paths['lmk']}: {len(lm.names)} rows but {paths['tid_mid']} has {len(names)}")
    for i, (a, b) in enumerate(zip(names, lm.names)):
        if a != b:
            raise PipelineError(f"{paths['lmk']}:{i + 1}: image {b!r} but {paths['tid_mid']} line {i + 1} names {a!r}")
    n_rows = len(names)
    limit = n_rows if params.max_images is None else min(n_rows, params.max_images)

    counts = {"rows": n_rows, "rows_used": limit, "skipped_bad_landmarks": 0, "skipped_unreadable": 0}
    problems: list[str] = []
    ok = lm.ok[:limit]
    for ln, why in lm.bad:
        if ln > limit:
            break
        _bad_row(params, counts, problems, "skipped_bad_landmarks", f"{paths['lmk']}:{ln}: {why}")
    rows = np.flatnonzero(ok)
    workers = max(1, int(getattr(ctx, "workers", 1) or 1))
    feats, done = _embed_rows(params, embedder, root, lm, rows, paths["lmk"], problems, counts, log, workers)
    counts["images_embedded"] = int(done.size)
    table = EmbeddingTable("IJB image name (meta files, first column); row = its line there")
    table.add(np.asarray([lm.names[r] for r in done]), feats, row=done + 1)

    # every template of the list keeps its row even when all its images were skipped (zero vector)
    all_t = np.unique(tids[:limit])
    uniq_t, tf = pool_templates(feats, tids[done], mids[done],
                                lm.scores[done] if params.detector_score else None, params.keep_norm)
    full = np.zeros((all_t.size, tf.shape[1]), dtype=np.float64)
    full[np.searchsorted(all_t, uniq_t)] = tf
    counts["templates"] = int(all_t.size)
    counts["templates_without_images"] = int(all_t.size - uniq_t.size)

    t1, t2, labels = read_template_pairs(paths["pairs"])
    if params.max_images is not None:
        known = np.isin(t1, all_t) & np.isin(t2, all_t)
        counts["pairs_outside_max_images"] = int(np.count_nonzero(~known))
        t1, t2, labels = t1[known], t2[known], labels[known]
    if t1.size == 0:
        raise PipelineError(f"{paths['pairs']}: no pair left whose templates are among the first "
                            f"{limit} meta rows (evaluate.ijb max_images)")
    i1 = template_index(all_t, t1, str(paths["pairs"]))
    i2 = template_index(all_t, t2, str(paths["pairs"]))
    scores = score_pairs(full, i1, i2, tile=params.pair_chunk)
    res = evaluate_1to1(labels, scores, params.fars)
    fpr, tpr = res.pop("_roc")
    metrics: dict[str, Any] = {
        "target": params.target,
        "switches": {"flip": params.flip, "keep_norm": params.keep_norm, "detector_score": params.detector_score},
        "verification": res,
    }

    if params.one_to_n:
        m = root / "meta"
        g_files = [m / f"{t}_1N_gallery_{g}.csv" for g in params.gallery]
        p_file = m / f"{t}_1N_probe_{params.probe}.csv"
        if all(p.is_file() for p in g_files) and p_file.is_file():
            gt, gsid = zip(*(read_1n_csv(p) for p in g_files))
            g_t, g_s = _unique_first(np.concatenate(gt), np.concatenate(gsid))
            pt, psid = read_1n_csv(p_file)
            p_t, p_s = _unique_first(pt, psid)
            g_where = "1:N gallery " + ", ".join(map(str, g_files))
            gi = template_index(all_t, g_t, g_where)
            pi = template_index(all_t, p_t, f"1:N probes {p_file}")
            if g_t.size < 2:
                raise PipelineError(f"{g_where}: the {params.target} 1:N gallery holds {g_t.size} template, so "
                                    "no probe has a non-mated score: TPIR at FPIR cannot be measured "
                                    "(the gallery needs at least 2 templates)")
            metrics["identification"] = identify_1n(full[gi], g_s, full[pi], p_s, params.ranks, params.fpirs,
                                                    where=str(p_file))
        else:
            counts["one_to_n_skipped_missing_csv"] = 1
    if log is not None and problems:
        log.warning("ijb: %d rows skipped (%s)", counts["skipped_bad_landmarks"] + counts["skipped_unreadable"],
                    problems[0])
    return {
        "benchmark": t,
        "metrics": metrics,
        "plots": {"roc": roc_plot_rows(fpr, tpr)},
        "counts": counts,
        "problems": problems,
        "embeddings": table,
    }
