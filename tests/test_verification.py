"""The 10-fold protocol: hand-checkable cases, and a slow direct implementation of the definition
(loops over folds and thresholds, sklearn's KFold, scipy's BSpline) compared bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from arcpipe.evaluate.verification import (
    ACC_THRESHOLDS,
    evaluate_distances,
    evaluate_embeddings,
    impostors_needed,
    kfold_splits,
    l2_normalize,
    official_splits,
    pair_distances,
    slinear_threshold,
)


# ---------------------------------------------------------------- the slow, direct definition
def _rates(th, dist, same):
    pred = dist < th
    tp = int(np.sum(pred & same))
    fp = int(np.sum(pred & ~same))
    tn = int(np.sum(~pred & ~same))
    fn = int(np.sum(~pred & same))
    tpr = 0 if tp + fn == 0 else tp / (tp + fn)
    fpr = 0 if fp + tn == 0 else fp / (fp + tn)
    return tpr, fpr, (tp + tn) / dist.size


def _slinear_old_scipy(far, th, target):
    """interp1d(far, th, kind='slinear')(target) as scipy <= 1.8 computed it: k=1 B-spline
    on knots [far[0], far..., far[-1]] with coefficients th (built here with BSpline directly,
    because newer make_interp_spline refuses repeated x)."""
    from scipy.interpolate import BSpline

    t = np.r_[far[0], far, far[-1]]
    return float(BSpline.construct_fast(t, np.asarray(th, dtype=float), 1)(target))


def slow_protocol(emb_raw, issame, folds=10, far_target=1e-3, pair_folds=None):
    """The reference loop; with pair_folds, test fold f = the pairs whose fold is f."""
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import normalize

    emb = normalize(np.asarray(emb_raw, dtype=np.float64))
    d = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    same = np.asarray(issame, dtype=bool)
    idx = np.arange(len(same))
    if pair_folds is None:
        splits = list(KFold(n_splits=folds, shuffle=False).split(idx))
    else:
        pf = np.asarray(pair_folds)
        splits = [(idx[pf != f], idx[pf == f]) for f in range(folds)]
    th = np.arange(0, 4, 0.01)
    acc, best_th, tprs, fprs = [], [], np.zeros((folds, len(th))), np.zeros((folds, len(th)))
    for f, (tr, te) in enumerate(splits):
        train_acc = [_rates(t, d[tr], same[tr])[2] for t in th]
        b = int(np.argmax(train_acc))
        for i, t in enumerate(th):
            tprs[f, i], fprs[f, i], _ = _rates(t, d[te], same[te])
        acc.append(_rates(th[b], d[te], same[te])[2])
        best_th.append(th[b])
    vth = np.arange(0, 4, 0.001)
    vals, fars, vts = [], [], []
    for tr, te in splits:
        far_train = np.array([np.sum((d[tr] < t) & ~same[tr]) / np.sum(~same[tr]) for t in vth])
        t = _slinear_old_scipy(far_train, vth, far_target) if far_train.max() >= far_target else 0.0
        vals.append(np.sum((d[te] < t) & same[te]) / np.sum(same[te]))
        fars.append(np.sum((d[te] < t) & ~same[te]) / np.sum(~same[te]))
        vts.append(t)
    return dict(acc=np.array(acc), th=np.array(best_th), tpr=tprs.mean(0), fpr=fprs.mean(0),
                val=np.array(vals), far=np.array(fars), vth=np.array(vts))


def _random_set(rng, pairs, dim, signal):
    """Pairs whose 'same' members share a random identity vector (signal controls difficulty)."""
    same = rng.random(pairs) < 0.5
    base = rng.normal(size=(pairs, dim))
    other = rng.normal(size=(pairs, dim))
    a = base + rng.normal(size=(pairs, dim)) / signal
    b = np.where(same[:, None], base, other) + rng.normal(size=(pairs, dim)) / signal
    emb = np.empty((2 * pairs, dim), dtype=np.float32)
    emb[0::2], emb[1::2] = a, b
    return emb, same


# ---------------------------------------------------------------- exactness against the definition
@pytest.mark.parametrize("seed,pairs,dim,signal", [(0, 600, 16, 1.0), (1, 203, 8, 0.6), (2, 1000, 32, 2.5)])
def test_matches_slow_definition_bit_for_bit(seed, pairs, dim, signal):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    rng = np.random.default_rng(seed)
    emb, same = _random_set(rng, pairs, dim, signal)
    ref = slow_protocol(emb, same)
    got = evaluate_embeddings(emb, same)
    np.testing.assert_array_equal(got.accuracy, ref["acc"])
    np.testing.assert_array_equal(got.best_threshold, ref["th"])
    np.testing.assert_array_equal(got.tpr, ref["tpr"])
    np.testing.assert_array_equal(got.fpr, ref["fpr"])
    np.testing.assert_array_equal(got.val_threshold, ref["vth"])
    np.testing.assert_array_equal(got.val, ref["val"])
    np.testing.assert_array_equal(got.far, ref["far"])
    assert got.acc_mean == np.mean(ref["acc"]) and got.acc_std == np.std(ref["acc"])


def test_flip_is_added_before_normalisation():
    rng = np.random.default_rng(3)
    emb, same = _random_set(rng, 200, 8, 1.0)
    flip = rng.normal(size=emb.shape).astype(np.float32)
    a = evaluate_embeddings(emb, same, flipped=flip)
    b = evaluate_embeddings(emb.astype(np.float64) + flip.astype(np.float64), same)
    c = evaluate_embeddings(l2_normalize(emb) + l2_normalize(flip), same)  # the wrong order
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_array_equal(a.tpr, b.tpr)
    assert not np.array_equal(a.tpr, c.tpr)


def test_slinear_threshold_matches_bspline_on_ties():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        far = np.sort(rng.integers(0, 6, size=n)).astype(float) / 5  # many repeated values
        far[0] = 0.0
        th = np.sort(rng.random(n)) * 4
        for target in list(np.unique(far)) + list(rng.random(3) * far[-1]):
            if far[-1] == far[-2] and target == far[-1]:
                continue  # zero-length last interval: scipy's de Boor gives 0 or nan by version
            assert slinear_threshold(far, th, target) == _slinear_old_scipy(far, th, target)


# ---------------------------------------------------------------- hand-checkable cases
def test_kfold_is_contiguous_like_sklearn():
    splits = kfold_splits(23, 10)
    sizes = [te.size for _, te in splits]
    assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate([te for _, te in splits]), np.arange(23))
    for tr, te in splits:
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(23))
    with pytest.raises(ValueError):
        kfold_splits(9, 10)


def test_perfectly_separable_distances():
    # 10 pairs per fold; same pairs at distance 0.5, different at 1.5.
    same = np.tile([True, False], 50)
    dist = np.where(same, 0.5, 1.5)
    r = evaluate_distances(dist, same)
    assert r.acc_mean == 1.0 and r.acc_std == 0.0
    # thresholds 0.51 .. 1.50 all separate; argmax takes the first: 0.51 (> 0.5 strictly)
    assert np.allclose(r.best_threshold, 0.51)
    assert r.best_threshold[0] == ACC_THRESHOLDS[51]
    # ROC: tpr 0 below 0.5, 1 from 0.51; fpr 1 from 1.51
    assert r.tpr[50] == 0.0 and r.tpr[51] == 1.0
    assert r.fpr[150] == 0.0 and r.fpr[151] == 1.0


def test_strict_less_than_at_the_threshold():
    # Same pairs sit exactly on grid thresholds: distance == threshold is a rejection.
    same = np.tile([True, False], 50)
    dist = np.where(same, ACC_THRESHOLDS[100], 3.0)
    r = evaluate_distances(dist, same)
    assert np.all(r.best_threshold == ACC_THRESHOLDS[101])
    assert r.tpr[100] == 0.0 and r.tpr[101] == 1.0


def test_one_mistake_in_one_fold():
    same = np.tile([True, False], 50)                # 100 pairs, 10 per fold
    dist = np.where(same, 0.5, 1.5)
    dist[3] = 0.2                                     # a 'different' pair in fold 0 looks same
    r = evaluate_distances(dist, same)
    expected = np.ones(10)
    expected[0] = 0.9
    np.testing.assert_array_equal(r.accuracy, expected)
    assert r.acc_mean == pytest.approx(0.99)
    assert r.acc_std == pytest.approx(np.std(expected))


def test_val_at_far_hand_checked():
    # 1000 same pairs at 0.1; 1000 different pairs at distinct distances 1.0005, 1.0015, ...
    # (fold f holds the different pairs 100f..100f+99). A train FAR of exactly 1e-3 is not
    # reachable (steps of 1/900), so the spline interpolates between the last grid threshold
    # with FAR 0 and the first with FAR 1/900: t = t0 + 0.001 * (1e-3 / (1/900)) = t0 + 0.0009.
    n = 2000
    same = np.zeros(n, dtype=bool)
    same[0::2] = True
    dist = np.empty(n)
    dist[same] = 0.1
    dist[~same] = 1.0005 + 0.001 * np.arange(1000)
    r = evaluate_distances(dist, same)
    # fold 0: its train folds start at 1.1005 -> t = 1.1009, which accepts all of fold 0's
    # different pairs (FAR 1 on the test fold); every other fold: t = 1.0009, below all of its own
    assert r.val_threshold[0] == pytest.approx(1.1009, abs=1e-12)
    assert np.allclose(r.val_threshold[1:], 1.0009, atol=1e-12)
    np.testing.assert_array_equal(r.far, [1.0] + [0.0] * 9)
    np.testing.assert_array_equal(r.val, np.ones(10))
    assert r.far_mean == pytest.approx(0.1)


def test_val_threshold_zero_when_far_never_reaches_target():
    same = np.tile([True, False], 50)
    dist = np.where(same, 0.5, 4.5)  # different pairs beyond the grid: FAR stays 0
    r = evaluate_distances(dist, same)
    assert np.all(r.val_threshold == 0.0)
    assert np.all(r.val == 0.0) and np.all(r.far == 0.0)


def test_pair_distances_and_normalise():
    e = np.array([[3.0, 4.0], [0.0, 5.0], [0.0, 0.0], [1.0, 0.0]])
    n = l2_normalize(e)
    assert np.allclose(n[0], [0.6, 0.8]) and np.array_equal(n[2], [0.0, 0.0])
    d = pair_distances(n)
    assert d[0] == pytest.approx(0.6 ** 2 + 0.2 ** 2)
    assert d[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        pair_distances(np.zeros((3, 2)))


def test_result_dict_is_json_ready():
    import json

    rng = np.random.default_rng(5)
    emb, same = _random_set(rng, 100, 4, 1.0)
    d = evaluate_embeddings(emb, same).to_dict()
    text = json.dumps(d)
    assert len(d["fold_acc"]) == 10 and len(d["fold_threshold"]) == 10
    assert d["pairs"] == 100 and d["same_pairs"] + d["diff_pairs"] == 100
    assert "NaN" not in text


# ---------------------------------------------------------------- official folds, resolvable FAR
def test_given_folds_match_the_slow_definition_bit_for_bit():
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    rng = np.random.default_rng(6)
    emb, same = _random_set(rng, 997, 16, 1.2)
    pair_folds = np.sort(rng.integers(0, 10, size=997))        # uneven folds, as skipped pairs leave them
    ref = slow_protocol(emb, same, pair_folds=pair_folds)
    got = evaluate_embeddings(emb, same, pair_folds=pair_folds)
    assert got.fold_rule == "official (pairs.txt)"
    assert got.fold_sizes == [int(np.sum(pair_folds == f)) for f in range(10)]
    assert got.fold_sizes != [te.size for _, te in kfold_splits(997, 10)]
    np.testing.assert_array_equal(got.accuracy, ref["acc"])
    np.testing.assert_array_equal(got.best_threshold, ref["th"])
    np.testing.assert_array_equal(got.val_threshold, ref["vth"])
    np.testing.assert_array_equal(got.val, ref["val"])
    np.testing.assert_array_equal(got.tpr, ref["tpr"])
    # and they are not the contiguous folds' numbers
    contiguous = evaluate_embeddings(emb, same)
    assert contiguous.fold_rule == "contiguous KFold(10) (reference)"
    assert not np.array_equal(got.accuracy, contiguous.accuracy)


def test_contiguous_official_folds_give_the_reference_numbers():
    rng = np.random.default_rng(7)
    emb, same = _random_set(rng, 600, 8, 1.0)
    official = evaluate_embeddings(emb, same, pair_folds=np.repeat(np.arange(10), 60))
    ref = evaluate_embeddings(emb, same)
    for k in ("accuracy", "best_threshold", "tpr", "fpr", "val", "far", "val_threshold"):
        np.testing.assert_array_equal(getattr(official, k), getattr(ref, k))
    assert official.fold_rule != ref.fold_rule


def test_official_splits_rules():
    splits = official_splits([0, 0, 2, 2, 2, 1], folds=3)
    assert [te.tolist() for _, te in splits] == [[0, 1], [5], [2, 3, 4]]
    assert [tr.tolist() for tr, _ in splits] == [[2, 3, 4, 5], [0, 1, 2, 3, 4], [0, 1, 5]]
    assert [te.tolist() for _, te in official_splits([0, 0, 3, 3], folds=4)] == [[0, 1], [2, 3]]  # empty folds dropped
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        official_splits([0, 3], folds=3)
    with pytest.raises(ValueError, match="at least 2"):
        official_splits([1, 1, 1], folds=3)
    with pytest.raises(ValueError, match="pair folds for"):
        evaluate_distances(np.zeros(4), np.array([True, False, True, False]), folds=2, pair_folds=[0, 1])


def test_impostors_needed():
    assert impostors_needed(1e-3) == 1000 and impostors_needed(1e-5) == 100000
    assert impostors_needed(1e-6) == 1000000 and impostors_needed(0.3) == 4 and impostors_needed(1 / 3) == 3
    assert impostors_needed(1.0) == 1


def test_val_at_a_far_the_training_splits_cannot_resolve():
    # 60 pairs, 30 impostors: every training split holds 27, and FAR 1e-3 needs 1,000
    rng = np.random.default_rng(8)
    same = np.tile([True, False], 30)
    emb, _ = _random_set(rng, 60, 8, 1.0)
    r = evaluate_embeddings(emb, same)
    d = r.to_dict()
    assert d["val_mean"] is None and d["val_std"] is None and d["far_mean"] is None
    assert d["fold_val"] == [None] * 10 and d["val_train_impostors"] == [27] * 10
    assert d["not_resolvable"] == {"0.001": "FAR 0.001 needs at least 1000 impostor pairs; "
                                            "27 here (the fewest in a training split of 10 folds)"}
    # accuracy untouched; the reference's own numbers stay on the result object
    assert d["acc_mean"] == r.acc_mean and d["fold_acc"] == [float(a) for a in r.accuracy]
    assert np.isfinite(r.val_mean)
    # a FAR those 27 impostor pairs can resolve is reported
    ok = evaluate_embeddings(emb, same, far_target=0.05).to_dict()
    assert "not_resolvable" not in ok and ok["val_mean"] is not None and None not in ok["fold_val"]
    assert ok["acc_mean"] == d["acc_mean"]
