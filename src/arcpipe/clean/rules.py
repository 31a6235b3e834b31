"""The MS1MV2-style cleaning rules over a FeatureStore, applied in a given order, and the removal
table that says why each image or identity went.

  subcenter   image: angle to its class's dominant sub-centre (bootstrap head) > max_angle_deg
  intra       image: cosine to its identity's robust centre < min_cos
  nearest     image: another identity's centre is nearer than its own by more than margin (cosine),
              and its own is below candidate_max_cos: a photo of someone else under this label
  inter       identities whose centres have cosine > max_cos are one person under several labels
              (linked pairs form a group): merge (the other labels' images join the group's largest
              label) or drop (the other labels go, with their images). Either way the person stays
              once, under the largest label (ties: the lowest); drop trades their images for certainty.
  overlap     identity: centre cosine > max_cos to any identity of an evaluation set
  min_images  identity: fewer than min_images images left

Each rule sees what the rules before it kept, under the labels after any merge. Identity centres
are the mean of the images still kept: recomputed (one read of the store) after a rule removed
images, updated in place after merges and identity removals (no read); intra's robust centres start
from them and leave behind the centres of what it keeps. Subcenter compares with the bootstrap
head, trained on the store's own labels, so it always groups by those (never merged labels).

The removal table has one row per removed image (row = its store index, level image) and one per
removed identity (row -1, level identity). An image that goes with its identity has its own row
under that rule too; a label merged into another has an identity row (its images stay); an identity
that image rules empty gets an identity row under the rule that took its last image. So
images in = kept + image rows, and identities in = identities out + identity rows.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar, Optional, Sequence, Union

import numpy as np
import pandas as pd

from ..errors import PipelineError
from .centres import (CHUNK, centre_pass, label_sums, nearest, nearest_other, pairs_above,
                      robust_centres, subcentre_angles, unit_rows)
from .store import FeatureStore

if TYPE_CHECKING:
    from ..params.clean import CleanParams

log = logging.getLogger(__name__)

IMAGE, IDENTITY = "image", "identity"
COLUMNS = ["row", "key", "label", "rule", "score", "level", "detail"]

__all__ = ["Subcenter", "Intra", "Nearest", "Inter", "Overlap", "MinImages", "Rule", "EvalSet", "CleanResult",
           "clean", "rules_from_params", "COLUMNS", "IMAGE", "IDENTITY"]


def _in_range(name: str, value: float, lo: float, hi: float, what: str) -> None:
    if not lo <= value <= hi:  # also refuses NaN
        raise ValueError(f"{name}: {value}, expected {what} in [{lo:g}, {hi:g}]")


@dataclass(frozen=True)
class Subcenter:
    max_angle_deg: float = 75.0  # the sub-center ArcFace authors' cut
    name: ClassVar[str] = "subcenter"

    def __post_init__(self):
        _in_range("subcenter.max_angle_deg", self.max_angle_deg, 0, 180, "an angle in degrees")


@dataclass(frozen=True)
class Intra:
    min_cos: float = 0.25
    robust_cut: float = 0.25  # images below this cosine do not shape the robust centre
    passes: int = 2
    name: ClassVar[str] = "intra"

    def __post_init__(self):
        _in_range("intra.min_cos", self.min_cos, -1, 1, "a cosine")
        _in_range("intra.robust_cut", self.robust_cut, -1, 1, "a cosine")
        if self.passes < 0:
            raise ValueError(f"intra.passes: {self.passes}, expected >= 0")


@dataclass(frozen=True)
class Nearest:
    margin: float = 0.3             # how much nearer (cosine) the other identity's centre must be
    candidate_max_cos: float = 0.5  # only images this far from their own centre are judged
    name: ClassVar[str] = "nearest"

    def __post_init__(self):
        _in_range("nearest.margin", self.margin, 0, 2, "a cosine difference")
        _in_range("nearest.candidate_max_cos", self.candidate_max_cos, -1, 1, "a cosine")


@dataclass(frozen=True)
class Inter:
    max_cos: float = 0.7
    action: str = "merge"
    name: ClassVar[str] = "inter"

    def __post_init__(self):
        _in_range("inter.max_cos", self.max_cos, -1, 1, "a cosine")
        if self.action not in ("merge", "drop"):
            raise ValueError(f"inter.action: {self.action!r}, expected merge or drop")


@dataclass(frozen=True)
class Overlap:
    max_cos: float = 0.4  # the MegaFace rule
    name: ClassVar[str] = "overlap"

    def __post_init__(self):
        _in_range("overlap.max_cos", self.max_cos, -1, 1, "a cosine")


@dataclass(frozen=True)
class MinImages:
    min_images: int = 2
    name: ClassVar[str] = "min_images"

    def __post_init__(self):
        if not self.min_images >= 1:
            raise ValueError(f"min_images.min_images: {self.min_images}, expected >= 1")


Rule = Union[Subcenter, Intra, Nearest, Inter, Overlap, MinImages]
RULES: dict[str, type] = {r.name: r for r in (Subcenter, Intra, Nearest, Inter, Overlap, MinImages)}


@dataclass
class EvalSet:
    """One evaluation set's identity centres (rows are renormalised here) and their names."""

    name: str
    centres: np.ndarray
    identities: Sequence[str]

    def __post_init__(self):
        c = np.asarray(self.centres, dtype=np.float32)
        if c.ndim != 2 or len(c) != len(self.identities):
            raise PipelineError(f"eval set {self.name}: centres of shape {c.shape} for "
                                f"{len(self.identities)} identity names")
        self.centres = unit_rows(c)


@dataclass
class CleanResult:
    rows: np.ndarray          # (n_kept,) int64 store indices kept, ascending
    labels: np.ndarray        # (n_kept,) int64 their final labels, contiguous 0..C'-1
    label_map: pd.DataFrame   # per store label: label, target (after merges), new (-1: removed)
    removed: pd.DataFrame     # the removal table, COLUMNS
    summary: dict             # counts in, kept, removed per rule, with each rule's params
    seconds: dict = field(default_factory=dict)  # wall seconds per rule


class _Run:
    """What the rules share: which rows are alive, their current labels, the centres' sums."""

    def __init__(self, store: FeatureStore, chunk: int):
        labels = store.labels
        bad = np.flatnonzero(labels < 0)
        if len(bad):
            raise PipelineError(f"{store.path}: row {bad[0]} (key {str(store.keys[bad[0]])!r}) has no label; "
                                f"cleaning needs every image's identity")
        self.store, self.chunk = store, chunk
        self.keys = store.index["key"]
        self.orig = labels
        self.label = labels.copy()
        self.alive = np.ones(store.count, dtype=bool)
        self.num = int(labels.max()) + 1 if len(labels) else 0
        self.merged_into = np.arange(self.num, dtype=np.int64)
        self.sums: Optional[np.ndarray] = None  # (C, D) float64 over alive rows; None: stale
        self.tables: list[pd.DataFrame] = []

    def counts(self) -> np.ndarray:
        return np.bincount(self.label[self.alive], minlength=self.num)

    def centres(self) -> np.ndarray:
        if self.sums is None:
            self.sums, _ = label_sums(self.store, labels=self.label, mask=self.alive, num_classes=self.num,
                                      chunk=self.chunk)
        return unit_rows(self.sums)

    def _record(self, rows, labels, rule: str, scores, level: str, detail) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        keys = (self.keys.iloc[rows].astype(str).to_numpy() if level == IMAGE else np.full(len(rows), ""))
        self.tables.append(pd.DataFrame({
            "row": rows, "key": keys, "label": np.asarray(labels, np.int64), "rule": rule,
            "score": np.broadcast_to(np.asarray(scores, np.float64), len(rows)), "level": level,
            "detail": np.broadcast_to(np.asarray(detail, dtype=object), len(rows))}))

    def drop_images(self, rows: np.ndarray, rule: str, scores, detail) -> None:
        before = self.counts() > 0
        self._record(rows, self.orig[rows], rule, scores, IMAGE, detail)
        self.alive[rows] = False
        self.sums = None
        emptied = np.flatnonzero(before & (self.counts() == 0))
        self._record(np.full(len(emptied), -1), emptied, rule, np.nan, IDENTITY, "no images left")

    def drop_identities(self, ids: np.ndarray, rule: str, scores, detail) -> None:
        score_of = np.full(self.num, np.nan)
        score_of[ids] = scores
        detail_of = np.full(self.num, "", dtype=object)
        detail_of[ids] = detail
        self._record(np.full(len(ids), -1), ids, rule, scores, IDENTITY, detail)
        rows = np.flatnonzero(self.alive & np.isin(self.label, ids))
        self._record(rows, self.orig[rows], rule, score_of[self.label[rows]], IMAGE, detail_of[self.label[rows]])
        self.alive[rows] = False
        if self.sums is not None:
            self.sums[ids] = 0.0

    def merge(self, sources: np.ndarray, targets: np.ndarray, scores) -> None:
        self._record(np.full(len(sources), -1), sources, Inter.name, scores, IDENTITY,
                     [f"merged into {t}" for t in targets])
        remap = np.arange(self.num, dtype=np.int64)
        remap[sources] = targets
        self.label = remap[self.label]
        self.merged_into = remap[self.merged_into]
        if self.sums is not None:
            np.add.at(self.sums, targets, self.sums[sources])
            self.sums[sources] = 0.0


def _subcenter(run: _Run, rule: Subcenter, subcentres, eval_sets) -> None:
    closest, dominant, angle = subcentre_angles(run.store, subcentres, labels=run.orig, mask=run.alive,
                                                chunk=run.chunk)
    rows = np.flatnonzero(run.alive & (angle > rule.max_angle_deg))
    run.drop_images(rows, rule.name, angle[rows],
                    [f"closest {c}, dominant {d}" for c, d in zip(closest[rows], dominant[run.orig[rows]])])


def _intra(run: _Run, rule: Intra, subcentres, eval_sets) -> None:
    centres, _ = robust_centres(run.store, rule.robust_cut, rule.passes, labels=run.label, mask=run.alive,
                                num_classes=run.num, initial=run.centres(), chunk=run.chunk)
    cos, sums, _ = centre_pass(run.store, centres, rule.min_cos, labels=run.label, mask=run.alive,
                               chunk=run.chunk)
    rows = np.flatnonzero(run.alive & (cos < rule.min_cos))
    run.drop_images(rows, rule.name, cos[rows], "")
    run.sums = sums  # the centres of exactly the images this rule kept


def _nearest(run: _Run, rule: Nearest, subcentres, eval_sets) -> None:
    own, other, other_cos = nearest_other(run.store, run.centres(), labels=run.label, mask=run.alive,
                                          chunk=run.chunk)
    gap = other_cos - own
    rows = np.flatnonzero(run.alive & (own < rule.candidate_max_cos) & (gap > rule.margin))
    run.drop_images(rows, rule.name, gap[rows], [f"nearer {o} ({c:.3f} vs {m:.3f})"
                                                 for o, c, m in zip(other[rows], other_cos[rows], own[rows])])


def _groups(i: np.ndarray, j: np.ndarray, size: int) -> np.ndarray:
    """Connected components of the edges (i, j): each node's lowest-numbered node of its component."""
    comp = np.arange(size, dtype=np.int64)
    while True:
        low = np.minimum(comp[i], comp[j])
        new = comp.copy()
        np.minimum.at(new, i, low)
        np.minimum.at(new, j, low)
        new = new[new]
        if np.array_equal(new, comp):
            return comp
        comp = new


def _inter(run: _Run, rule: Inter, subcentres, eval_sets) -> None:
    counts = run.counts()
    live = np.flatnonzero(counts > 0)
    i, j, cos = pairs_above(run.centres()[live], rule.max_cos)
    if not len(i):
        return
    i, j = live[i], live[j]
    best = np.full(run.num, -np.inf)
    np.maximum.at(best, i, cos)
    np.maximum.at(best, j, cos)
    comp = _groups(i, j, run.num)
    nodes = np.unique(np.concatenate([i, j]))
    order = nodes[np.lexsort((nodes, -counts[nodes], comp[nodes]))]
    first = np.r_[True, comp[order][1:] != comp[order][:-1]]
    target_of = np.full(run.num, -1, dtype=np.int64)
    target_of[comp[order[first]]] = order[first]
    targets = target_of[comp[nodes]]
    sources, targets = nodes[nodes != targets], targets[nodes != targets]
    if rule.action == "merge":
        run.merge(sources, targets, best[sources])
    else:
        run.drop_identities(sources, rule.name, best[sources], [f"same person as {t}" for t in targets])


def _overlap(run: _Run, rule: Overlap, subcentres, eval_sets: Sequence[EvalSet]) -> None:
    if not eval_sets:
        return
    live = np.flatnonzero(run.counts() > 0)
    others = np.concatenate([e.centres for e in eval_sets])
    names = np.concatenate([[f"{e.name}:{n}" for n in e.identities] for e in eval_sets]).astype(object)
    idx, sim = nearest(run.centres()[live], others, k=1)
    hit = sim[:, 0] > rule.max_cos
    run.drop_identities(live[hit], rule.name, sim[hit, 0], names[idx[hit, 0]])


def _min_images(run: _Run, rule: MinImages, subcentres, eval_sets) -> None:
    counts = run.counts()
    small = np.flatnonzero((counts > 0) & (counts < rule.min_images))
    run.drop_identities(small, rule.name, counts[small], "")


APPLY = {"subcenter": _subcenter, "intra": _intra, "nearest": _nearest, "inter": _inter, "overlap": _overlap,
         "min_images": _min_images}


def _check_inputs(store: FeatureStore, rules: Sequence[Rule], subcentres, eval_sets) -> None:
    seen: set[str] = set()
    for r in rules:
        if not isinstance(r, tuple(RULES.values())):
            raise ValueError(f"rules: {r!r} is not a rule ({', '.join(RULES)})")
        if r.name in seen:
            raise ValueError(f"rules: {r.name} is given twice")
        seen.add(r.name)
    if Subcenter.name in seen and subcentres is None:
        raise ValueError("subcentres: the subcenter rule needs the bootstrap head's (C, K, D) sub-centres")
    names = [e.name for e in eval_sets]
    if len(set(names)) != len(names):
        raise ValueError(f"eval_sets: a set name is given twice ({', '.join(names)})")
    for e in eval_sets:
        if e.centres.shape[1] != store.dim:
            raise PipelineError(f"eval set {e.name}: {e.centres.shape[1]}-d centres, "
                                f"{store.path} holds {store.dim}-d features")


def clean(store: FeatureStore, rules: Sequence[Rule], *, subcentres: Optional[np.ndarray] = None,
          eval_sets: Sequence[EvalSet] = (), chunk: int = CHUNK) -> CleanResult:
    """Apply `rules` in order to the images of `store`; see the module docstring for what each sees."""
    from threadpoolctl import threadpool_limits

    _check_inputs(store, rules, subcentres, eval_sets)
    # In name order: where an evaluation centre sits in the overlap rule's matrix product moves the
    # last bits of its scores, and the engines hand the sets over in different orders (DVC in
    # params.yaml's, Snakemake in its sorted snapshot's).
    eval_sets = sorted(eval_sets, key=lambda e: e.name)
    run = _Run(store, chunk)
    seconds: dict[str, float] = {}
    # One BLAS thread: a multi-threaded OpenBLAS picks other kernels for other thread counts, and the
    # scores would differ in their last bits between engines (Snakemake sets OMP_NUM_THREADS to a
    # job's threads, DVC leaves it unset): the same inputs must give the same removal table.
    with threadpool_limits(limits=1, user_api="blas"):
        for r in rules:
            t0 = time.perf_counter()
            APPLY[r.name](run, r, subcentres, eval_sets)
            seconds[r.name] = round(time.perf_counter() - t0, 3)
            log.info("clean %s: %d images and %d identities left (%.1f s)", r.name, run.alive.sum(),
                     (run.counts() > 0).sum(), seconds[r.name])
    return _result(run, rules, seconds)


def _result(run: _Run, rules: Sequence[Rule], seconds: dict) -> CleanResult:
    removed = (pd.concat(run.tables, ignore_index=True) if run.tables
               else pd.DataFrame({c: [] for c in COLUMNS}))
    removed = removed.astype({"row": np.int64, "key": str, "label": np.int64, "rule": str, "score": np.float64,
                              "level": str, "detail": str})
    live = np.flatnonzero(run.counts() > 0)
    new_of = np.full(run.num, -1, dtype=np.int64)
    new_of[live] = np.arange(len(live))
    rows = np.flatnonzero(run.alive)
    present = np.flatnonzero(np.bincount(run.orig, minlength=run.num) > 0)
    label_map = pd.DataFrame({"label": present, "target": run.merged_into[present],
                              "new": new_of[run.merged_into[present]]})
    per_rule = {}
    for r in rules:
        mine = removed[removed["rule"] == r.name]
        per_rule[r.name] = {"images": int((mine["level"] == IMAGE).sum()),
                            "identities": int((mine["level"] == IDENTITY).sum()), **asdict(r)}
    summary = {"images_in": int(run.store.count), "images_kept": int(len(rows)),
               "identities_in": int(len(present)), "identities_kept": int(len(live)),
               "order": [r.name for r in rules], "rules": per_rule}
    return CleanResult(rows=rows, labels=new_of[run.label[rows]], label_map=label_map, removed=removed,
                       summary=summary, seconds=seconds)


def rules_from_params(params: "CleanParams") -> list[Rule]:
    """The enabled rules of a params.yaml `clean` section, in its order."""
    out = []
    for name in params.order:
        section = getattr(params, name)
        if section.enabled:
            out.append(RULES[name](**section.model_dump(exclude={"enabled"})))
    return out
