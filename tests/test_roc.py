"""ROC points and TAR@FAR against sklearn's roc_curve and the reference's nearest-FPR rule."""
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from arcpipe.evaluate.roc import (ceil_rank, merge_top_k, roc_plot_rows, roc_points, tar_at_far, top_k_desc,
                                  tpr_at_threshold_rank)


def _reference_tar(labels, scores, fars):
    """eval_ijbc.py's rule, written out: sklearn ROC, reversed, min over (|fpr - x|, index)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    out = []
    for x in fars:
        _, i = min(zip(abs(fpr - x), range(len(fpr))))
        out.append(tpr[i])
    return out


def test_roc_points_equal_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 80))
        y = rng.random(n) < rng.random()
        s = np.round(rng.standard_normal(n), int(rng.integers(0, 3))).astype(rng.choice([np.float32, np.float64]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = roc_curve(y, s)
        ours = roc_points(y, s)
        for a, b in zip(ref, ours):
            assert a.shape == b.shape
            assert np.array_equal(a, b, equal_nan=True)


def test_tar_at_far_matches_reference_rule():
    rng = np.random.default_rng(2)
    fars = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 0.25, 0.5]
    for _ in range(100):
        n = int(rng.integers(20, 3000))
        y = rng.random(n) < 0.3
        y[0], y[1] = True, False
        s = rng.standard_normal(n) + y * rng.random() * 2
        if rng.random() < 0.5:
            s = np.round(s, 1)
        got = tar_at_far(y, s, fars)
        assert list(got.values()) == _reference_tar(y, s, fars)


def test_tar_hand_example_with_tie_rule():
    # scores: genuine 0.7, -1.0; impostor 0.0, -0.7 -> ROC (0,0) (0,.5) (1,.5) (1,1) after dropping
    y = np.array([1, 0, 0, 1], bool)
    s = np.array([0.7, 0.0, -0.7, -1.0])
    fpr, tpr, _ = roc_points(y, s)
    assert fpr.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0]
    got = tar_at_far(y, s, [0.1, 0.5, 0.6])
    # 0.1 is nearest to FPR 0 (largest TPR there: 0.5); 0.5 ties -> first of the reversed curve (1.0)
    assert list(got.values()) == [0.5, 1.0, 1.0]


def test_topk_rule_hand_example():
    pos = np.array([0.9, 0.5, 0.3])
    neg = np.array([0.1, 0.6, 0.4, 0.2, 0.0])
    top = top_k_desc(neg, 3)
    assert top.tolist() == [0.6, 0.4, 0.2]
    rates, ths = tpr_at_threshold_rank(pos, top, [1, 2])
    assert ths == [0.6, 0.4]
    assert rates == [1 / 3, 2 / 3]
    assert merge_top_k(top, np.array([0.7, 0.05]), 2).tolist() == [0.7, 0.6]
    assert ceil_rank(0.01, 150) == 2 and ceil_rank(0.1, 10) == 1
    with pytest.raises(ValueError):
        tpr_at_threshold_rank(pos, top, [4])


def test_nan_scores_are_refused_and_plot_rows_are_monotone():
    with pytest.raises(ValueError, match="NaN"):
        roc_points(np.array([1, 0]), np.array([0.1, math.nan]))
    rng = np.random.default_rng(3)
    y = rng.random(5000) < 0.5
    fpr, tpr, _ = roc_points(y, rng.standard_normal(5000) + y)
    rows = roc_plot_rows(fpr, tpr, points=50)
    assert 2 <= len(rows) <= 51
    xs = [r["fpr"] for r in rows]
    ys = [r["tpr"] for r in rows]
    assert xs == sorted(xs) and ys == sorted(ys) and rows[-1] == {"fpr": 1.0, "tpr": 1.0}
    small = roc_plot_rows(*roc_points(np.array([1, 0, 1]), np.array([0.9, 0.1, 0.5]))[:2])
    assert small == [{"fpr": 0.0, "tpr": t} for t in (0.0, 0.5, 1.0)] + [{"fpr": 1.0, "tpr": 1.0}]
