"""MegaFace challenge 1: FaceScrub probes against distractor sets of growing size.

Protocol (the MegaFace devkit's, with insightface's remove_noises.py for the refined lists):

* Features: emb(image) + emb(mirrored image), L2-normalised (gen_megaface.py); a score is the
  dot product (the devkit ranks by L2 distance, the same order for unit vectors).
* Identification: every ordered pair (p, g) of two different FaceScrub images of one identity
  is a trial: g joins the first `size` distractors as the gallery and p is the probe. Rank of g
  = 1 + the number of distractors scoring strictly above s(p, g) (a tie counts for g).
  Rank-k accuracy = the fraction of trials with rank <= k.
* Verification: genuine = those (p, g) pairs, impostors = every probe against every distractor.
  TAR at FAR f: threshold = the ceil(f * n_impostors)-th largest impostor score, TAR = fraction of
  genuine scores strictly above it (the k-th-largest rule of arcpipe.evaluate.roc). A FAR below
  1 / n_impostors (1e-6 needs a million impostor pairs) is not resolvable at that size: TAR and
  threshold None, the reason under "not_resolvable".
* Refined ("with noise lists"): a FaceScrub image on facescrub_noises is replaced by its
  identity's centre (the sum of its clean features) plus uniform(-1e-3, 1e-3) noise per
  dimension, normalised (seeded here; unseeded in the original). A distractor on
  megaface_noises gets an extra dimension of 100, which puts it out of reach of every probe: here
  its scores are -inf (it stays in the impostor count).
* Distractor sets of size N are the first N distractors in the aligned set's manifest order.

Memory: the distractors are embedded and scored chunk by chunk; what stays is, per probe, its
k best distractor scores (k = max rank) and the overall top ceil(max FAR * probes * max size)
impostor scores. One chunk costs probes x chunk float32.

Faces are decoded in a worker pool (arcpipe.evaluate.loader) and embedded here, in the same
batches for any number of workers.

The runner writes nothing: it returns {"metrics", "plots", "counts", "problems", "embeddings"}.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..errors import PipelineError
from .embeddings import EmbeddingTable
from .roc import ceil_rank, far_key, mark_unresolvable, merge_top_k, tpr_at_threshold_rank

__all__ = [
    "l2n",
    "genuine_pairs",
    "refine_probes",
    "MegaFaceStream",
    "evaluate_megaface",
    "read_noise_list",
    "noise_mask",
    "run_megaface",
]


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def genuine_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ordered (probe row, gallery row) pairs with the same label, probe != gallery."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    lab_sorted = labels[order]
    bounds = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1], True])
    ps, gs = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        if idx.size < 2:
            continue
        p, g = np.meshgrid(idx, idx, indexing="ij")
        keep = p != g
        ps.append(p[keep])
        gs.append(g[keep])
    if not ps:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(ps), np.concatenate(gs)


def refine_probes(feats: np.ndarray, labels: np.ndarray, noisy: np.ndarray, seed: int = 0,
                  names: Optional[Sequence[str]] = None) -> np.ndarray:
    """remove_noises.py for probes: each noisy image -> normalise(centre + U(-1e-3, 1e-3))."""
    out = np.array(feats, dtype=np.float32, copy=True)
    noisy = np.asarray(noisy, dtype=bool)
    if not noisy.any():
        return out
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    for i in np.flatnonzero(noisy):
        clean = (labels == labels[i]) & ~noisy
        if not clean.any():
            who = names[i] if names is not None else f"label {labels[i]}"
            raise PipelineError(f"facescrub noise list: every image of {who} is listed as noise, no centre left")
        centre = np.asarray(feats, np.float64)[clean].sum(0)
        f = centre + rng.uniform(-0.001, 0.001, centre.shape[0])
        out[i] = f / np.linalg.norm(f)
    return out


@dataclass
class _State:
    k: int
    m: int
    top: np.ndarray                       # (probes, k) best distractor scores, unordered
    imp: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))   # top m impostors, desc

    def update(self, s: np.ndarray) -> None:
        kth = self.top.min(axis=1)
        cand = s > kth[:, None]
        n_cand = int(np.count_nonzero(cand))
        if n_cand > cand.size // 16:
            # early chunks: most scores are candidates, merge whole rows
            rows = np.flatnonzero(cand.any(axis=1))
            sub = np.where(cand[rows], s[rows], -np.inf).astype(np.float32)
            merged = np.concatenate([self.top[rows], sub], axis=1)
        elif n_cand:
            # later chunks: a few candidates per row; pad them into a narrow matrix
            r, c = np.nonzero(cand)
            rows, start, cnt = np.unique(r, return_index=True, return_counts=True)
            pad = np.full((rows.size, int(cnt.max())), -np.inf, dtype=np.float32)
            pad[np.repeat(np.arange(rows.size), cnt), np.arange(r.size) - np.repeat(start, cnt)] = s[r, c]
            merged = np.concatenate([self.top[rows], pad], axis=1)
        if n_cand:
            part = np.partition(merged, merged.shape[1] - self.k, axis=1)
            self.top[rows] = part[:, merged.shape[1] - self.k:]
        thr = self.imp[self.m - 1] if self.imp.size >= self.m else -np.inf
        vals = s[s > thr]
        if vals.size:
            self.imp = merge_top_k(self.imp, vals, self.m)


class MegaFaceStream:
    """Feed distractor chunks; read results at each size boundary.

    probes: (n, D) features (L2-normalised here); labels: identity per probe row; probes_refined: the same
    with noisy probes replaced (None: no refined mode). feed(chunk feats normalised, noisy mask).
    """

    def __init__(self, probes: np.ndarray, labels: np.ndarray, sizes: Sequence[int],
                 ranks: Sequence[int] = (1, 10), fars: Sequence[float] = (1e-6,),
                 probes_refined: Optional[np.ndarray] = None):
        self.p = np.ascontiguousarray(l2n(probes))
        self.labels = np.asarray(labels)
        self.sizes = sorted(set(int(s) for s in sizes))
        self.ranks = list(ranks)
        self.fars = list(fars)
        n = self.p.shape[0]
        self.gp, self.gg = genuine_pairs(self.labels)
        if self.gp.size == 0:
            raise PipelineError("megaface: no identity has two probe images, so there is no genuine trial")
        k = max(self.ranks)
        m = max(ceil_rank(f, n * self.sizes[-1]) for f in self.fars)
        self.modes: dict[str, tuple[np.ndarray, _State]] = {
            "raw": (self.p, _State(k, m, np.full((n, k), -np.inf, np.float32)))}
        self.noisy_rows = np.empty(0, np.int64)
        if probes_refined is not None:
            pr = np.ascontiguousarray(l2n(probes_refined))
            self.noisy_rows = np.flatnonzero(np.any(pr != self.p, axis=1))
            self.modes["refined"] = (pr, _State(k, m, np.full((n, k), -np.inf, np.float32)))
        self.genuine = {mode: np.einsum("ij,ij->i", pf[self.gp], pf[self.gg]) for mode, (pf, _) in self.modes.items()}
        self.seen = 0
        self.results: dict[str, dict[str, Any]] = {mode: {} for mode in self.modes}

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def feed(self, feats: np.ndarray, noisy: Optional[np.ndarray] = None) -> None:
        feats = np.asarray(feats, dtype=np.float32)
        start = 0
        while start < feats.shape[0] and self.seen < self.max_size:
            nxt = min(s for s in self.sizes if s > self.seen)
            take = min(feats.shape[0] - start, nxt - self.seen)
            part = feats[start:start + take]
            s = self.p @ part.T
            self.modes["raw"][1].update(s)
            if "refined" in self.modes:
                pr, st = self.modes["refined"]
                if self.noisy_rows.size:
                    s[self.noisy_rows] = pr[self.noisy_rows] @ part.T
                if noisy is not None:
                    s[:, np.asarray(noisy[start:start + take], bool)] = -np.inf
                st.update(s)
            self.seen += take
            start += take
            if self.seen in self.sizes:
                self._record(self.seen)

    def _record(self, size: int) -> None:
        n = self.p.shape[0]
        for mode, (_, st) in self.modes.items():
            g = self.genuine[mode]
            above = np.count_nonzero(st.top[self.gp] > g[:, None], axis=1)
            ks = [ceil_rank(f, n * size) for f in self.fars]
            imp = st.imp[:max(ks)]
            if imp.size < max(ks):   # the rest are pushed-away (-inf) distractors
                imp = np.concatenate([imp, np.full(max(ks) - imp.size, -np.inf, np.float32)])
            tars, ths = tpr_at_threshold_rank(g, imp, ks)
            tar = {far_key(f): v for f, v in zip(self.fars, tars)}
            th = {far_key(f): v for f, v in zip(self.fars, ths)}
            self.results[mode][str(size)] = {
                "distractors": size,
                "rank": {str(r): float(np.count_nonzero(above < r)) / above.size for r in self.ranks},
                "tar_at_far": tar,
                "threshold_at_far": th,
                "not_resolvable": mark_unresolvable(self.fars, n * size, tar, th),
                "genuine": int(g.size),
                "impostors": int(n * size),
            }

    def finish(self) -> dict[str, Any]:
        if self.seen < self.max_size and self.seen > 0 and str(self.seen) not in self.results["raw"]:
            self._record(self.seen)
        return self.results


def evaluate_megaface(probes, labels, distractors, sizes, ranks=(1, 10), fars=(1e-6,), chunk=65536,
                      probes_refined=None, distractor_noisy=None) -> dict[str, Any]:
    """All of it on in-memory (or memmapped) distractor features, chunk by chunk."""
    st = MegaFaceStream(probes, labels, sizes, ranks, fars, probes_refined)
    d = distractors
    for s in range(0, min(len(d), st.max_size), chunk):
        e = min(len(d), s + chunk)
        st.feed(l2n(np.asarray(d[s:e])), None if distractor_noisy is None else distractor_noisy[s:e])
    return st.finish()


# ---------------------------------------------------------------- noise lists

def read_noise_list(path: str | os.PathLike) -> set[str]:
    """One entry per line; '#' lines skipped; 'index<TAB>path' lines keep the path."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: noise list does not exist")
    out = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t")
            out.add((parts[1] if len(parts) > 1 else parts[0]).replace("\\", "/"))
    return out


def noise_mask(sources: Iterable[str], entries: set[str]) -> np.ndarray:
    """True where a source path equals an entry or ends with '/<entry>' (any number of parts)."""
    depth = max((e.count("/") + 1 for e in entries), default=0)
    out = []
    for src in sources:
        parts = str(src).replace("\\", "/").split("/")
        hit = False
        for k in range(1, min(depth, len(parts)) + 1):
            if "/".join(parts[-k:]) in entries:
                hit = True
                break
        out.append(hit)
    return np.asarray(out, dtype=bool)


# ---------------------------------------------------------------- runner

def _embed_set(aset, rows, embedder, flip: bool, batch: int, desc: str, workers: int = 1
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, keys, raw features float32) per batch of `batch` faces, in manifest order."""
    from .loader import aligned_images, rebatch

    s = 0
    for keys, imgs in rebatch(aligned_images(aset, rows["key"].to_numpy(), workers, desc), batch):
        yield s, keys, np.asarray(embedder.embed(imgs, flip=flip), dtype=np.float32)
        s += keys.size


def _table_add(table: EmbeddingTable, rows, s: int, keys: np.ndarray, raw: np.ndarray, role: str) -> None:
    src = rows["source"].to_numpy()[s:s + keys.size].astype(str)
    table.add(src, raw, role=np.full(keys.size, role), record=keys)


def run_megaface(params, embedder, ctx=None) -> dict[str, Any]:
    """Probe set vs distractor set (aligned sets), raw and, with both noise lists, refined."""
    from ..align.aligned_set import AlignedSet

    probes = AlignedSet(params.probe_set)
    distr = AlignedSet(params.distractor_set)
    prow = probes.faces
    drow = distr.faces
    problems = []
    counts = {"probe_rows": int(len(probes.manifest)), "probe_faces": int(len(prow)),
              "distractor_rows": int(len(distr.manifest)), "distractor_faces": int(len(drow))}
    if (prow["identity"] == "").any():
        raise PipelineError(f"{probes.dir}: {int((prow['identity'] == '').sum())} probe faces have no identity")
    batch = max(1, int(getattr(embedder, "batch_size", 64) or 64))
    workers = max(1, int(getattr(ctx, "workers", 1) or 1))
    table = EmbeddingTable("aligned-set manifest source; role = probe | distractor, record = aligned-set key")
    parts = []
    for s, keys, raw in _embed_set(probes, prow, embedder, params.flip, batch, "megaface probes", workers):
        _table_add(table, prow, s, keys, raw, "probe")
        parts.append(l2n(raw))
    pf = np.concatenate(parts)
    labels = prow["identity"].astype(str).to_numpy()

    refined = None
    dnoisy = None
    if params.facescrub_noises and params.megaface_noises:
        fs = noise_mask(prow["source"], read_noise_list(params.facescrub_noises))
        dnoisy = noise_mask(drow["source"], read_noise_list(params.megaface_noises))
        counts["facescrub_noisy"] = int(fs.sum())
        counts["megaface_noisy"] = int(dnoisy.sum())
        refined = refine_probes(pf, labels, fs, params.seed, list(prow["source"]))
    elif params.facescrub_noises or params.megaface_noises:
        raise PipelineError("evaluate.megaface: give both facescrub_noises and megaface_noises, or neither")

    sizes = [s for s in params.sizes if s <= len(drow)]
    if not sizes:
        sizes = [len(drow)]
    skipped = [s for s in params.sizes if s > len(drow)]
    if skipped:
        problems.append(f"{distr.dir}: only {len(drow)} distractor faces; sizes {skipped} not run, "
                        f"{sizes[-1]} is the largest")
    st = MegaFaceStream(pf, labels, sizes, params.ranks, params.fars, refined)
    dsub = drow.iloc[:st.max_size]
    chunk = max(batch, (params.chunk // batch) * batch)
    for s, keys, raw in _embed_set(distr, dsub, embedder, params.flip, chunk, "megaface distractors", workers):
        _table_add(table, dsub, s, keys, raw, "distractor")
        f = l2n(raw)
        st.feed(f, None if dnoisy is None else dnoisy[s:s + f.shape[0]])
    res = st.finish()
    counts["distractors_used"] = int(st.seen)
    counts["genuine_trials"] = int(st.gp.size)
    probes.close()
    distr.close()
    return {"benchmark": "megaface", "metrics": res, "plots": {}, "counts": counts, "problems": problems,
            "embeddings": table}
