"""The maths under the cleaning rules: identity centres, cosines to them, nearest neighbours and
sub-centre angles, all streamed over a FeatureStore.

Nothing here holds the (N, D) feature matrix: every function walks the store in chunks of `chunk`
rows, so memory is bounded by a chunk plus per-identity arrays ((C, D) centres). Per-image outputs
are (N,) vectors. Rows are grouped by label inside a chunk with a stable sort (skipped where the
chunk's labels are already in order, as a training pack writes them), so results do not depend on
whether labels are contiguous, and the same inputs give the same bits (for the same chunk size).
"""
from __future__ import annotations

import importlib.util
from typing import Iterator, Optional

import numpy as np

from ..errors import PipelineError
from .store import FeatureStore

CHUNK = 65536          # store rows per read: 64 MB of float16 at 512-d
BLOCK = 4096           # rows per side of one similarity block in `nearest` / `pairs_above` (64 MB)
SUB_BLOCK = 8192       # rows per gather of (rows, K, D) sub-centres (100 MB at K=3, D=512)

__all__ = ["CHUNK", "BLOCK", "label_sums", "unit_rows", "identity_centres", "robust_centres",
           "centre_pass", "centre_cosines", "nearest", "nearest_other", "pairs_above", "subcentre_angles"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32; all-zero rows (labels with no images) stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _labels_mask(store: FeatureStore, labels, mask, num_classes) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked (labels, mask, C): default the store's labels, rows with a label, C = max label + 1."""
    labels = store.labels if labels is None else np.asarray(labels, dtype=np.int64)
    if labels.shape != (store.count,):
        raise ValueError(f"labels: shape {labels.shape}, the store has {store.count} rows")
    mask = labels >= 0 if mask is None else np.asarray(mask, dtype=bool) & (labels >= 0)
    if mask.shape != (store.count,):
        raise ValueError(f"mask: shape {mask.shape}, the store has {store.count} rows")
    top = int(labels[mask].max()) + 1 if mask.any() else 0
    c = top if num_classes is None else int(num_classes)
    if top > c:
        raise ValueError(f"num_classes: {c}, but a label {top - 1} is used")
    return labels, mask, c


def _walk(store: FeatureStore, labels, mask, chunk: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(start, float32 rows, their labels, their mask) per chunk; chunks with no selected row are not read.

    The rows live in one float32 buffer reused for every chunk (valid until the next step): a fresh
    array per chunk would cost as much in page faults as the float16 conversion itself."""
    if chunk < 1:
        raise ValueError(f"chunk: {chunk}, expected >= 1")
    buf = np.empty((min(chunk, store.count), store.dim), dtype=np.float32)
    for start in range(0, store.count, chunk):
        stop = min(store.count, start + chunk)
        sel = mask[start:stop]
        if sel.any():
            x = buf[:stop - start]
            np.copyto(x, store.read(start, stop, np.float16))
            yield start, x, labels[start:stop], sel


def _add_by_label(sums: np.ndarray, counts: np.ndarray, x: np.ndarray, lab: np.ndarray, sel: np.ndarray) -> None:
    """sums[l] += the selected rows of x with label l; counts likewise.

    One sum per run of equal labels after a stable sort: tens of times faster than np.add.reduceat
    or np.add.at along the rows of a 2-D array, and pairwise-summed. The loop costs per run, which
    a training pack keeps to one per identity and chunk."""
    if not sel.any():
        return
    if sel.all() and (lab[1:] >= lab[:-1]).all():
        xs, ls = x, lab
    else:
        idx = np.flatnonzero(sel)
        idx = idx[np.argsort(lab[idx], kind="stable")]
        xs, ls = x[idx], lab[idx]
    bounds = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1], True])
    part = np.empty((len(bounds) - 1, x.shape[1]), dtype=np.float32)
    for g, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        part[g] = xs[a:b].sum(axis=0)
    uniq = ls[bounds[:-1]]
    sums[uniq] += part
    counts[uniq] += np.diff(bounds)


def label_sums(store: FeatureStore, *, labels=None, mask=None, num_classes: Optional[int] = None,
               chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(sums (C, D) float64, counts (C,) int64) of the unit features per label, over rows in `mask`.

    Sums rather than centres, so a caller can merge or drop identities without another pass."""
    labels, mask, c = _labels_mask(store, labels, mask, num_classes)
    sums = np.zeros((c, store.dim), dtype=np.float64)
    counts = np.zeros(c, dtype=np.int64)
    for _, x, lab, sel in _walk(store, labels, mask, chunk):
        _add_by_label(sums, counts, x, lab, sel)
    return sums, counts


def identity_centres(store: FeatureStore, *, labels=None, mask=None, num_classes: Optional[int] = None,
                     chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(centres (C, D) float32, counts (C,) int64): the renormalised mean feature of each label
    (a zero row where a label has no image)."""
    sums, counts = label_sums(store, labels=labels, mask=mask, num_classes=num_classes, chunk=chunk)
    return unit_rows(sums), counts


def _cosine_chunks(store: FeatureStore, centres: np.ndarray, labels, mask, chunk: int):
    """(start, rows, labels, mask, cosine of each row to its own label's centre) per chunk read."""
    centres = np.asarray(centres, dtype=np.float32)
    labels, mask, c = _labels_mask(store, labels, mask, len(centres))
    if centres.shape != (c, store.dim):
        raise ValueError(f"centres: shape {centres.shape}, expected ({c}, {store.dim})")
    own = np.empty((min(chunk, store.count), store.dim), dtype=np.float32)  # reused, as in _walk
    for start, x, lab, sel in _walk(store, labels, mask, chunk):
        mine = np.take(centres, np.where(sel, lab, 0), axis=0, out=own[:len(x)])
        got = np.einsum("ij,ij->i", x, mine)
        got[~sel] = np.nan
        yield start, x, lab, sel, got


def centre_cosines(store: FeatureStore, centres: np.ndarray, *, labels=None, mask=None,
                   chunk: int = CHUNK) -> np.ndarray:
    """(N,) float32: each row's cosine to its own label's centre; NaN for rows outside `mask`."""
    cos = np.full(store.count, np.nan, dtype=np.float32)
    for start, x, _, _, got in _cosine_chunks(store, centres, labels, mask, chunk):
        cos[start:start + len(x)] = got
    return cos


def centre_pass(store: FeatureStore, centres: np.ndarray, keep_min: float, *, labels=None, mask=None,
                chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`centre_cosines` plus, from the same read, (sums, counts) as `label_sums` of the rows whose
    cosine is >= keep_min: the centres of what a cosine cut keeps, without reading the store again."""
    cos = np.full(store.count, np.nan, dtype=np.float32)
    sums = np.zeros((len(centres), store.dim), dtype=np.float64)
    counts = np.zeros(len(centres), dtype=np.int64)
    for start, x, lab, sel, got in _cosine_chunks(store, centres, labels, mask, chunk):
        cos[start:start + len(x)] = got
        _add_by_label(sums, counts, x, lab, sel & (got >= keep_min))
    return cos, sums, counts


def robust_centres(store: FeatureStore, cut: float, passes: int = 2, *, labels=None, mask=None,
                   num_classes: Optional[int] = None, initial: Optional[np.ndarray] = None,
                   chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(centres, counts) after `passes` rounds of: drop the images whose cosine to the current centre
    is below `cut`, re-average the rest. Outliers then do not drag the centre toward themselves.

    Starts from `initial` (unit (C, D)) or the plain mean (one more read). A label all of whose images
    fall below the cut keeps its previous centre (an identity does not vanish here: deciding that is
    a rule's job); counts are the images each final centre averages (the previous count where kept)."""
    if not -1.0 <= cut <= 1.0:
        raise ValueError(f"cut: {cut}, expected a cosine in [-1, 1]")
    if passes < 0:
        raise ValueError(f"passes: {passes}, expected >= 0")
    labels, mask, c = _labels_mask(store, labels, mask, num_classes)
    if initial is None:
        centres, counts = identity_centres(store, labels=labels, mask=mask, num_classes=c, chunk=chunk)
    else:
        centres = np.asarray(initial, dtype=np.float32)
        counts = np.bincount(labels[mask], minlength=c).astype(np.int64)
    for _ in range(passes):
        _, sums, got = centre_pass(store, centres, cut, labels=labels, mask=mask, chunk=chunk)
        kept = got > 0
        centres = np.where(kept[:, None], unit_rows(sums), centres)
        counts = np.where(kept, got, counts)
    return centres, counts


def _topk(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k largest, best first, ties to the lower index."""
    if k == 1:
        idx = s.argmax(axis=1)[:, None]
    elif k >= s.shape[1]:
        idx = np.argsort(-s, axis=1, kind="stable")
    else:
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(s, idx, 1).min(axis=1, keepdims=True)
        tied = np.flatnonzero((s >= kth).sum(axis=1) > k)  # an equal value left out: redo exactly
        if len(tied):
            idx[tied] = np.argsort(-s[tied], axis=1, kind="stable")[:, :k]
    val = np.take_along_axis(s, idx, 1)
    order = np.lexsort((idx, -val), axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)


def _faiss_wanted(backend: str) -> bool:
    if backend not in ("auto", "numpy", "faiss"):
        raise ValueError(f"backend: {backend!r}, expected auto, numpy or faiss")
    found = importlib.util.find_spec("faiss") is not None
    if backend == "faiss" and not found:
        raise ValueError("backend: 'faiss', but faiss is not installed (pip install faiss-cpu)")
    return backend == "faiss" or (backend == "auto" and found)


def nearest(a: np.ndarray, b: np.ndarray, k: int = 1, chunk: int = BLOCK, exclude_same_index: bool = False,
            backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """For each row of `a` (n, D), the k rows of `b` (m, D) with the largest dot product (the cosine:
    rows are unit vectors): (indices (n, k) int64, cosines (n, k) float32), best first, ties to the
    lower index; padded with -1 / -inf where b has fewer than k candidates.

    numpy: chunk x chunk blocks of a @ b.T, keeping a running top-k, so memory is bounded by one block
    whatever n and m. exclude_same_index: a and b index the same items (b is a), and a row may not
    pick itself. backend auto uses faiss (exact inner-product search) when it is installed."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} and b {b.shape}: expected (n, D) and (m, D)")
    if k < 1 or chunk < 1:
        raise ValueError(f"k: {k}, chunk: {chunk}, expected both >= 1")
    n, m = len(a), len(b)
    if exclude_same_index and n != m:
        raise ValueError(f"exclude_same_index: a has {n} rows, b has {m}; they must index the same items")
    if _faiss_wanted(backend) and n and m:
        return _nearest_faiss(a, b, k, exclude_same_index)
    best_i = np.full((n, k), -1, dtype=np.int64)
    best_v = np.full((n, k), -np.inf, dtype=np.float32)
    for s0 in range(0, n, chunk):
        s1 = min(n, s0 + chunk)
        bi, bv = best_i[s0:s1], best_v[s0:s1]
        for t0 in range(0, m, chunk):
            t1 = min(m, t0 + chunk)
            block = a[s0:s1] @ b[t0:t1].T
            if exclude_same_index and t0 < s1 and s0 < t1:
                rows = np.arange(max(s0, t0), min(s1, t1))
                block[rows - s0, rows - t0] = -np.inf
            idx, val = _topk(block, min(k, t1 - t0))
            cand_i = np.concatenate([bi, idx + t0], axis=1)
            cand_v = np.concatenate([bv, val], axis=1)
            order = np.lexsort((np.where(cand_i < 0, m, cand_i), -cand_v), axis=1)[:, :k]
            bi[:] = np.take_along_axis(cand_i, order, 1)
            bv[:] = np.take_along_axis(cand_v, order, 1)
    best_i[best_v == -np.inf] = -1
    return best_i, best_v


def _nearest_faiss(a: np.ndarray, b: np.ndarray, k: int, exclude_same_index: bool) -> tuple[np.ndarray, np.ndarray]:
    """faiss's exact inner-product search; k + 1 asked where a row's own match is to be dropped."""
    import faiss

    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    extra = int(exclude_same_index)
    val, idx = index.search(a, min(len(b), k + extra))
    idx = idx.astype(np.int64)
    val = val.astype(np.float32)
    if exclude_same_index:
        own = idx == np.arange(len(a))[:, None]
        val[own], idx[own] = -np.inf, -1
    order = np.lexsort((np.where(idx < 0, len(b), idx), -val), axis=1)[:, :k]
    idx, val = np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        val = np.pad(val, ((0, 0), (0, pad)), constant_values=-np.inf)
    idx[~np.isfinite(val)] = -1
    return idx, val


def nearest_other(store: FeatureStore, centres: np.ndarray, *, labels=None, mask=None,
                  chunk: int = CHUNK, backend: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's cosine to its own label's centre and to the nearest centre of any other label:
    (own (N,) float32, other (N,) int64, other_cos (N,) float32); NaN / -1 / NaN outside `mask`.

    Only labels with a centre (a non-zero row) are candidates; `nearest` does the search in blocks,
    so memory is a chunk of rows plus one block of similarities, whatever the number of labels."""
    centres = np.asarray(centres, dtype=np.float32)
    own = np.full(store.count, np.nan, dtype=np.float32)
    other = np.full(store.count, -1, dtype=np.int64)
    other_cos = np.full(store.count, np.nan, dtype=np.float32)
    live = np.flatnonzero(np.any(centres != 0, axis=1))
    candidates = centres[live]
    for start, x, lab, sel, got in _cosine_chunks(store, centres, labels, mask, chunk):
        rows = np.flatnonzero(sel)
        own[start + rows] = got[rows]
        if len(live) < 2:
            continue
        idx, val = nearest(x[rows], candidates, k=2, backend=backend)
        first_is_own = live[idx[:, 0]] == lab[rows]
        pick = np.where(first_is_own, 1, 0)
        other[start + rows] = live[idx[np.arange(len(rows)), pick]]
        other_cos[start + rows] = val[np.arange(len(rows)), pick]
    return own, other, other_cos


def pairs_above(a: np.ndarray, threshold: float, chunk: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j of rows of `a` (unit, (n, D)) whose cosine is above `threshold`:
    (i, j, cos), sorted by (i, j). Blocks of chunk x chunk on or above the diagonal only (half the
    products of a full a @ a.T); memory: one block plus the pairs found."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2 or chunk < 1:
        raise ValueError(f"a {a.shape}, chunk {chunk}: expected (n, D) and chunk >= 1")
    found_i, found_j, found_v = [], [], []
    n = len(a)
    for s0 in range(0, n, chunk):
        s1 = min(n, s0 + chunk)
        for t0 in range(s0, n, chunk):
            t1 = min(n, t0 + chunk)
            block = a[s0:s1] @ a[t0:t1].T
            hit = block > threshold
            if t0 == s0:
                hit &= np.triu(np.ones(hit.shape, dtype=bool), k=1)
            i, j = np.nonzero(hit)
            found_i.append(i + s0)
            found_j.append(j + t0)
            found_v.append(block[i, j])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, v = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_v)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), v[order].astype(np.float32)


def subcentre_angles(store: FeatureStore, subcentres: np.ndarray, *, labels=None, mask=None,
                     chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-center ArcFace's view of each image: (closest (N,) int64, dominant (C,) int64, angle (N,) float32).

    closest: the sub-centre of its own class it is nearest to (-1 outside `mask`); dominant: per class,
    the sub-centre most of its images (in `mask`) choose, ties to the lower index (0 for a class with
    none); angle: degrees between the image and its class's dominant sub-centre (NaN outside `mask`).
    `subcentres` (C, K, D) is the head's weight, any scale (compared by cosine); it may be a memory map."""
    w = subcentres
    labels, mask, c = _labels_mask(store, labels, mask, None)
    if w.ndim != 3 or w.shape[2] != store.dim or w.shape[0] < c:
        raise PipelineError(f"{store.path}: sub-centres of shape {tuple(w.shape)} do not fit the store "
                            f"({c} classes of {store.dim}-d features)")
    k = w.shape[1]
    norms = np.empty((w.shape[0], k), dtype=np.float32)
    for s0 in range(0, w.shape[0], SUB_BLOCK):
        norms[s0:s0 + SUB_BLOCK] = np.linalg.norm(np.asarray(w[s0:s0 + SUB_BLOCK], np.float32), axis=2)
    norms[norms == 0] = 1.0
    cos = np.full((store.count, k), np.nan, dtype=np.float32)
    own = np.empty((SUB_BLOCK, k, store.dim), dtype=np.float32)  # reused, as in _walk
    for start, x, lab, sel in _walk(store, labels, mask, chunk):
        for r0 in range(0, len(x), SUB_BLOCK):
            rows = np.flatnonzero(sel[r0:r0 + SUB_BLOCK]) + r0
            if len(rows):
                lr = lab[rows]
                mine = own[:len(rows)]
                mine[:] = w[lr]
                cos[start + rows] = np.einsum("nd,nkd->nk", x[rows], mine) / norms[lr]
    closest = np.full(store.count, -1, dtype=np.int64)
    closest[mask] = cos[mask].argmax(axis=1)
    votes = np.bincount(labels[mask] * k + closest[mask], minlength=c * k).reshape(c, k)
    dominant = votes.argmax(axis=1).astype(np.int64)
    angle = np.full(store.count, np.nan, dtype=np.float32)
    own = cos[mask, dominant[labels[mask]]]
    angle[mask] = np.degrees(np.arccos(np.clip(own, -1.0, 1.0)))
    return closest, dominant, angle
