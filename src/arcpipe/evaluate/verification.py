"""The LFW-style 10-fold verification protocol, vectorised, with the reference's exact rules.

The protocol (as insightface's arcface_torch eval/verification.py computes it):

* Embeddings of image i and of its horizontal flip are added (float64), then L2-normalised
  row-wise (a zero row stays zero). Pairs are consecutive rows (0,1), (2,3), ...
* distance = squared L2 distance between the two normalised rows; a pair is predicted "same"
  when distance < threshold (strict).
* Folds: contiguous, like sklearn's KFold(n_splits=10, shuffle=False): the first n % 10 folds
  hold n // 10 + 1 pairs, the rest n // 10. That is the reference's rule. Given the fold of each
  pair (`pair_folds`: the official folds of pairs.txt, which a pack loses once pairs were
  skipped), those folds are used instead; on a full LFW-format pack the two are the same.
* Accuracy: for each fold, the threshold from np.arange(0, 4, 0.01) with the highest accuracy
  on the other nine folds (the first one when several tie: argmax) is applied to the fold.
  Reported: every fold's accuracy and threshold, their mean and population std (ddof 0).
* ROC: true/false positive rates of each threshold on each test fold (a rate with an empty
  denominator is 0), averaged over folds.
* VAL@FAR: on the train folds, FAR at every threshold of np.arange(0, 4, 0.001); if the largest
  FAR reaches the target, the threshold is read off a piecewise-linear B-spline through
  (FAR, threshold) (scipy interp1d kind='slinear' as scipy <= 1.8 built it: knots
  [far[0], far..., far[-1]], so among equal FAR values the last one is used); otherwise 0.0.
  VAL and FAR of that threshold on the test fold; mean and std of VAL, mean of FAR.
  (On scipy >= 1.9 the reference itself fails here, "Expect x to not have duplicates",
  because FAR repeats along the grid; this module needs no scipy.)
* A FAR below 1 / (impostor pairs of a training split) cannot be resolved: one false accept is
  already more. The reference still prints a number there; the metrics dict does not: VAL and
  FAR are null and `not_resolvable` says how many impostor pairs that FAR needs. The per-fold
  numbers stay in the result object as the reference computes them.

Every count is an exact integer from a sorted search, so accuracies and thresholds equal the
reference's loop bit for bit on the same embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ACC_THRESHOLDS",
    "VAL_THRESHOLDS",
    "VerificationResult",
    "kfold_splits",
    "official_splits",
    "impostors_needed",
    "FOLD_RULE_CONTIGUOUS",
    "FOLD_RULE_OFFICIAL",
    "l2_normalize",
    "pair_distances",
    "evaluate_distances",
    "evaluate_embeddings",
    "slinear_threshold",
]

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FOLD_RULE_CONTIGUOUS = "contiguous KFold({folds}) (reference)"
FOLD_RULE_OFFICIAL = "official (pairs.txt)"


def impostors_needed(far: float) -> int:
    """The fewest impostor pairs at which a false-accept rate `far` can be resolved: the smallest
    n with n * far >= 1 (below that a single false accept already exceeds it)."""
    far = float(far)
    if not far > 0:
        raise ValueError(f"FAR must be positive, got {far}")
    n = max(1, int(np.ceil(1.0 / far)))
    while n > 1 and (n - 1) * far >= 1.0 - 1e-9:  # 1/far rounded up past an exact integer
        n -= 1
    return n


def kfold_splits(n: int, folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous (train, test) index splits, the same as KFold(folds, shuffle=False).split.

    folds == 1 gives [(all, all)] (the reference's LFold does the same).
    """
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    idx = np.arange(n)
    if folds == 1:
        return [(idx, idx)]
    if n < folds:
        raise ValueError(f"cannot split {n} pairs into {folds} folds")
    sizes = np.full(folds, n // folds, dtype=np.int64)
    sizes[: n % folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for f in range(folds):
        test = idx[bounds[f]: bounds[f + 1]]
        train = np.concatenate([idx[: bounds[f]], idx[bounds[f + 1]:]])
        out.append((train, test))
    return out


def official_splits(pair_folds, folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) splits from the fold of each pair (integers in [0, folds)).

    Test fold f = the pairs whose fold is f, in pack order; train = all the others. A fold left
    with no pair (every one of its pairs skipped) is dropped, so fewer folds come back.
    folds == 1 gives [(all, all)], as kfold_splits does.
    """
    fo = np.asarray(pair_folds)
    if fo.ndim != 1 or (fo.size and not np.issubdtype(fo.dtype, np.integer)):
        raise ValueError("pair folds must be a 1-D sequence of integers")
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    if fo.size and (fo.min() < 0 or fo.max() >= folds):
        raise ValueError(f"pair folds must lie in [0, {folds}), got {int(fo.min())}..{int(fo.max())}")
    idx = np.arange(fo.size)
    if folds == 1:
        return [(idx, idx)]
    out = []
    for f in range(folds):
        test = idx[fo == f]
        if test.size:
            out.append((idx[fo != f], test))
    if len(out) < 2:
        raise ValueError(f"{len(out)} non-empty fold(s) of {folds}: cross-validation needs at least 2")
    return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float64; rows of norm 0 are left as they are."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    return x / norms[:, None]


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of rows (0,1), (2,3), ... of already normalised embeddings."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] % 2:
        raise ValueError(f"expected a 2-D array with an even number of rows, got shape {e.shape}")
    diff = e[0::2] - e[1::2]
    return np.sum(np.square(diff), 1)


def slinear_threshold(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Evaluate the degree-1 B-spline through (far, thresholds) at `target`.

    `far` must be non-decreasing (it is: a larger threshold accepts more pairs). Knots are
    [far[0], far[0..n-1], far[n-1]], as scipy's interp1d(kind='slinear') built them before
    it refused duplicate x. The interval is the last i (at most n-2) with far[i] <= target;
    the arithmetic follows de Boor's recursion for k=1 so the result is bit-identical.
    """
    x = np.asarray(far, dtype=np.float64)
    y = np.asarray(thresholds, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two points to interpolate")
    # first j in [1, n-1] with x[j] > target, else n-1 ... the interval starts one before
    j = int(np.searchsorted(x[1:], target, side="right")) + 1
    i = min(j, n - 1) - 1
    x0, x1 = float(x[i]), float(x[i + 1])
    if x1 == x0:  # a zero-length interval (only at the right end): de Boor gives 0 there
        return 0.0
    w = 1.0 / (x1 - x0)
    h0 = w * (x1 - target)
    h1 = w * (target - x0)
    return float(y[i]) * h0 + float(y[i + 1]) * h1


@dataclass
class VerificationResult:
    n_pairs: int
    n_same: int
    n_diff: int
    folds: int
    fold_sizes: list[int]
    accuracy: np.ndarray           # (folds,) test accuracy per fold
    best_threshold: np.ndarray     # (folds,) threshold chosen on the other folds
    tpr: np.ndarray                # (len(ACC_THRESHOLDS),) mean over folds
    fpr: np.ndarray
    roc_thresholds: np.ndarray
    far_target: float
    val: np.ndarray                # (folds,) VAL at the interpolated threshold
    far: np.ndarray                # (folds,) FAR at that threshold
    val_threshold: np.ndarray      # (folds,)
    fold_rule: str = ""            # FOLD_RULE_OFFICIAL or FOLD_RULE_CONTIGUOUS
    val_train_impostors: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (folds,)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def acc_mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def acc_std(self) -> float:
        return float(np.std(self.accuracy))

    @property
    def val_mean(self) -> float:
        return float(np.mean(self.val))

    @property
    def val_std(self) -> float:
        return float(np.std(self.val))

    @property
    def far_mean(self) -> float:
        return float(np.mean(self.far))

    @property
    def val_resolvable(self) -> np.ndarray:
        """(folds,) whether each fold's training split has enough impostor pairs for far_target."""
        return np.asarray(self.val_train_impostors) >= impostors_needed(self.far_target)

    def not_resolvable(self) -> dict[str, str]:
        """{far key: why} when some training split has too few impostor pairs for far_target."""
        ok = self.val_resolvable
        if ok.size == 0 or ok.all():
            return {}
        few = int(np.min(self.val_train_impostors))
        key = repr(float(self.far_target))
        return {key: f"FAR {key} needs at least {impostors_needed(self.far_target)} impostor pairs; "
                     f"{few} here (the fewest in a training split of {self.folds} folds)"}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready numbers (ROC arrays excluded: they go to the plot file).

        VAL and FAR at far_target are null (with `not_resolvable` saying why) when a training
        split has too few impostor pairs for that FAR: null for those folds, and null as a mean.
        """
        ok = self.val_resolvable
        unresolved = self.not_resolvable()
        out = {
            "pairs": self.n_pairs,
            "same_pairs": self.n_same,
            "diff_pairs": self.n_diff,
            "folds": self.folds,
            "fold_sizes": list(self.fold_sizes),
            "acc_mean": self.acc_mean,
            "acc_std": self.acc_std,
            "fold_acc": [float(a) for a in self.accuracy],
            "fold_threshold": [float(t) for t in self.best_threshold],
            "fold_rule": self.fold_rule,
            "far_target": self.far_target,
            "val_mean": None if unresolved else _finite_or_none(self.val_mean),
            "val_std": None if unresolved else _finite_or_none(self.val_std),
            "far_mean": None if unresolved else _finite_or_none(self.far_mean),
            "fold_val": [_finite_or_none(v) if k else None for v, k in zip(self.val, ok)],
            "fold_far": [_finite_or_none(v) if k else None for v, k in zip(self.far, ok)],
            "fold_val_threshold": [float(t) for t in self.val_threshold],
            "val_train_impostors": [int(x) for x in self.val_train_impostors],
        }
        if unresolved:
            out["not_resolvable"] = unresolved
        return out


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _counts_below(dist: np.ndarray, groups: list[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    """(len(groups), len(thresholds)) number of dist[g] < t, exactly as np.less counts it."""
    out = np.empty((len(groups), thresholds.shape[0]), dtype=np.int64)
    for r, g in enumerate(groups):
        out[r] = np.searchsorted(np.sort(dist[g]), thresholds, side="left")
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, 0 where den is 0 (the reference's tpr/fpr rule)."""
    num = num.astype(np.float64)
    den = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def evaluate_distances(
    dist: np.ndarray,
    issame: np.ndarray,
    folds: int = 10,
    far_target: float = 1e-3,
    pair_folds=None,
) -> VerificationResult:
    """Run the protocol on precomputed squared distances (one per pair).

    `pair_folds` (one fold number in [0, folds) per pair) replaces the contiguous folds.
    """
    dist = np.asarray(dist, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    if dist.ndim != 1 or dist.shape != same.shape:
        raise ValueError(f"dist {dist.shape} and issame {same.shape} must be 1-D of equal length")
    n = dist.shape[0]
    if pair_folds is None:
        splits = kfold_splits(n, folds)
        rule = FOLD_RULE_CONTIGUOUS.format(folds=folds)
    else:
        if len(pair_folds) != n:
            raise ValueError(f"{len(pair_folds)} pair folds for {n} pairs")
        splits = official_splits(pair_folds, folds)
        rule = FOLD_RULE_OFFICIAL
    tests = [te for _, te in splits]
    n_folds = len(splits)

    pos_groups = [te[same[te]] for te in tests]
    neg_groups = [te[~same[te]] for te in tests]
    n_pos = np.array([g.size for g in pos_groups], dtype=np.int64)
    n_neg = np.array([g.size for g in neg_groups], dtype=np.int64)
    n_test = n_pos + n_neg

    # ---- accuracy with the best train threshold, and the ROC
    th = ACC_THRESHOLDS
    pos_lt = _counts_below(dist, pos_groups, th)      # true accepts per test fold
    neg_lt = _counts_below(dist, neg_groups, th)      # false accepts per test fold
    if folds == 1:
        tr_pos_lt, tr_neg_lt, tr_n_neg, tr_n = pos_lt, neg_lt, n_neg, n_test
    else:
        tr_pos_lt = pos_lt.sum(0) - pos_lt
        tr_neg_lt = neg_lt.sum(0) - neg_lt
        tr_n_neg = n_neg.sum() - n_neg
        tr_n = n_test.sum() - n_test
    train_acc = (tr_pos_lt + (tr_n_neg[:, None] - tr_neg_lt)).astype(np.float64) / tr_n[:, None]
    best = np.argmax(train_acc, axis=1)
    rows = np.arange(n_folds)
    correct = pos_lt[rows, best] + (n_neg - neg_lt[rows, best])
    accuracy = correct.astype(np.float64) / n_test
    tprs = _ratio(pos_lt, n_pos[:, None])
    fprs = _ratio(neg_lt, n_neg[:, None])

    # ---- VAL at FAR = far_target
    vth = VAL_THRESHOLDS
    vneg_lt = _counts_below(dist, neg_groups, vth)
    if folds == 1:
        vtr_neg_lt, vtr_n_neg = vneg_lt, n_neg
    else:
        vtr_neg_lt = vneg_lt.sum(0) - vneg_lt
        vtr_n_neg = n_neg.sum() - n_neg
    val = np.empty(n_folds)
    far = np.empty(n_folds)
    val_th = np.empty(n_folds)
    for f in range(n_folds):
        # the reference divides by the count unguarded (a ZeroDivisionError); nan here
        far_train = vtr_neg_lt[f].astype(np.float64) / vtr_n_neg[f] if vtr_n_neg[f] else np.full(vth.shape, np.nan)
        if vtr_n_neg[f] and np.max(far_train) >= far_target:
            t = slinear_threshold(far_train, vth, far_target)
        else:
            t = 0.0
        val_th[f] = t
        ta = int(np.count_nonzero(dist[pos_groups[f]] < t))
        fa = int(np.count_nonzero(dist[neg_groups[f]] < t))
        val[f] = ta / n_pos[f] if n_pos[f] else np.nan
        far[f] = fa / n_neg[f] if n_neg[f] else np.nan

    return VerificationResult(
        n_pairs=n,
        n_same=int(same.sum()),
        n_diff=int((~same).sum()),
        folds=n_folds,
        fold_sizes=[int(t.size) for t in tests],
        accuracy=accuracy,
        best_threshold=th[best],
        tpr=np.mean(tprs, 0),
        fpr=np.mean(fprs, 0),
        roc_thresholds=th.copy(),
        far_target=float(far_target),
        val=val,
        far=far,
        val_threshold=val_th,
        fold_rule=rule,
        val_train_impostors=np.asarray(vtr_n_neg, dtype=np.int64).copy(),
    )


def evaluate_embeddings(
    embeddings: np.ndarray,
    issame: np.ndarray,
    folds: int = 10,
    far_target: float = 1e-3,
    flipped: np.ndarray | None = None,
    pair_folds=None,
) -> VerificationResult:
    """Normalise (after adding `flipped`, the flip embeddings, when given) and run the protocol.

    `embeddings` holds 2P rows, pair p = rows 2p and 2p+1; `issame` holds P booleans;
    `pair_folds` (P fold numbers), when given, replaces the contiguous folds.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if flipped is not None:
        e = e + np.asarray(flipped, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    if e.ndim != 2 or e.shape[0] != 2 * same.shape[0]:
        raise ValueError(f"expected {2 * same.shape[0]} embedding rows for {same.shape[0]} pairs, got shape {e.shape}")
    return evaluate_distances(pair_distances(l2_normalize(e)), same, folds, far_target, pair_folds)
