"""Speed of the vectorised 10-fold protocol beside a direct loop over folds and thresholds (the
algorithm of insightface's eval/verification.py: one pass over the pairs per threshold and fold),
on the same random embeddings, in one run. Also checks that both give the same numbers.

    python benchmarks/bench_verification.py [--pairs 6000] [--dim 512]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from arcpipe.evaluate.verification import evaluate_embeddings, kfold_splits, l2_normalize, pair_distances


def loop_protocol(emb, issame, folds=10, far_target=1e-3):
    """Direct loops, as the reference computes it (slinear threshold: last far <= target, linear)."""
    d = pair_distances(l2_normalize(emb))
    same = np.asarray(issame, bool)
    th = np.arange(0, 4, 0.01)
    acc = []
    for tr, te in kfold_splits(len(same), folds):
        tr_acc = []
        for t in th:
            p = d[tr] < t
            tr_acc.append((np.sum(p & same[tr]) + np.sum(~p & ~same[tr])) / tr.size)
        for t in th:  # the per-threshold test-fold ROC the reference also computes
            p = d[te] < t
            _ = np.sum(p & same[te]), np.sum(p & ~same[te])
        b = th[int(np.argmax(tr_acc))]
        p = d[te] < b
        acc.append((np.sum(p & same[te]) + np.sum(~p & ~same[te])) / te.size)
    vth = np.arange(0, 4, 0.001)
    for tr, te in kfold_splits(len(same), folds):
        far = np.array([np.sum((d[tr] < t) & ~same[tr]) / np.sum(~same[tr]) for t in vth])
        _ = far.max() >= far_target
    return np.array(acc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    same = rng.random(a.pairs) < 0.5
    base = rng.normal(size=(a.pairs, a.dim))
    e1 = base + rng.normal(size=base.shape)
    e2 = np.where(same[:, None], base, rng.normal(size=base.shape)) + rng.normal(size=base.shape)
    emb = np.empty((2 * a.pairs, a.dim), np.float32)
    emb[0::2], emb[1::2] = e1, e2

    t_fast = min(_time(lambda: evaluate_embeddings(emb, same)) for _ in range(a.repeat))
    t_loop = _time(lambda: loop_protocol(emb, same))
    fast = evaluate_embeddings(emb, same).accuracy
    same_numbers = np.array_equal(fast, loop_protocol(emb, same))
    print(f"pairs {a.pairs}, dim {a.dim}")
    print(f"vectorised (arcpipe)   {t_fast * 1000:9.1f} ms")
    print(f"direct loops           {t_loop * 1000:9.1f} ms")
    print(f"speed-up               {t_loop / t_fast:9.1f} x   (same per-fold accuracy: {same_numbers})")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
