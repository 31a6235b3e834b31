"""The cleaning maths against brute-force numpy on small stores: identity and robust centres,
cosines, nearest neighbours and pairs in bounded blocks, sub-centre choices and angles."""
import importlib.util

import numpy as np
import pytest

from arcpipe.clean.centres import (centre_cosines, centre_pass, identity_centres, label_sums, nearest,
                                   pairs_above, robust_centres, subcentre_angles, unit_rows)
from arcpipe.clean.store import FeatureStore, FeatureWriter
from arcpipe.errors import PipelineError

HAVE_FAISS = importlib.util.find_spec("faiss") is not None


def _store(path, feats, labels, batch=50) -> FeatureStore:
    with FeatureWriter(path, feats.shape[1]) as w:
        for s in range(0, len(feats), batch):
            e = min(len(feats), s + batch)
            w.append([f"k{i}" for i in range(s, e)], labels[s:e], feats[s:e])
    return FeatureStore(path)


def _random_store(tmp_path, n=500, dim=16, classes=23, seed=0):
    rng = np.random.default_rng(seed)
    return _store(tmp_path / "f", rng.standard_normal((n, dim)), rng.integers(0, classes, n))


def _mean_centres(x, labels, classes):
    ref = np.zeros((classes, x.shape[1]))
    np.add.at(ref, labels, x)
    return ref / np.linalg.norm(ref, axis=1, keepdims=True)


def test_identity_centres_match_numpy_in_any_chunking(tmp_path):
    st = _random_store(tmp_path)
    x, labels = st.read(0, st.count), st.labels
    ref = _mean_centres(x, labels, 23)
    reads = []
    real_read = st.read
    st.read = lambda a, b, *args: reads.append(b - a) or real_read(a, b, *args)
    for chunk in (7, 64, 10_000):
        reads.clear()
        centres, counts = identity_centres(st, chunk=chunk)
        np.testing.assert_allclose(centres, ref, atol=1e-5)
        np.testing.assert_array_equal(counts, np.bincount(labels, minlength=23))
        assert max(reads) <= chunk
    # sorted labels take the no-sort path; a mask leaves rows out; an unused label is a zero row
    srt = np.sort(labels)
    np.testing.assert_allclose(identity_centres(st, labels=srt, chunk=64)[0], _mean_centres(x, srt, 23), atol=1e-5)
    mask = np.arange(st.count) % 3 != 0
    sub, n = identity_centres(st, mask=mask, num_classes=25, chunk=64)
    np.testing.assert_allclose(sub[:23], _mean_centres(x[mask], labels[mask], 23), atol=1e-5)
    assert not sub[23:].any() and n[23:].sum() == 0 and n.sum() == mask.sum()
    with pytest.raises(ValueError, match="num_classes: 5, but a label 22 is used"):
        label_sums(st, num_classes=5)


def test_robust_centres_ignore_outliers_and_keep_a_class_that_falls_below_the_cut(tmp_path):
    rng = np.random.default_rng(1)
    e = np.eye(16)
    inliers = e[0] + 0.05 * rng.standard_normal((20, 16))
    outliers = e[1] + 0.05 * rng.standard_normal((8, 16))
    spread = e[[2, 3]]  # class 1: two images 90 degrees apart, each 45 from their mean
    feats = np.concatenate([inliers[:10], outliers, inliers[10:], spread])
    labels = np.r_[np.zeros(28, int), [1, 1]]
    st = _store(tmp_path / "f", feats, labels, batch=7)
    plain, _ = identity_centres(st)
    assert plain[0] @ e[0] < 0.95
    centres, counts = robust_centres(st, cut=0.75, passes=2, chunk=5)
    assert centres[0] @ e[0] > 0.998
    np.testing.assert_array_equal(counts, [20, 2])
    np.testing.assert_allclose(centres[1], plain[1])
    again, _ = robust_centres(st, cut=0.75, passes=2, chunk=5)
    np.testing.assert_array_equal(again, centres)
    np.testing.assert_array_equal(robust_centres(st, cut=0.75, passes=0)[0], plain)
    with pytest.raises(ValueError, match=r"^cut: 1.5, expected a cosine in \[-1, 1\]$"):
        robust_centres(st, cut=1.5)


def test_cosines_and_the_kept_rows_sums_come_from_one_read(tmp_path):
    st = _random_store(tmp_path)
    x, labels = st.read(0, st.count), st.labels
    centres, _ = identity_centres(st)
    mask = np.arange(st.count) % 4 != 1
    cos = centre_cosines(st, centres, mask=mask, chunk=33)
    ref = np.einsum("ij,ij->i", x, centres[labels])
    np.testing.assert_allclose(cos[mask], ref[mask], atol=1e-6)
    assert np.isnan(cos[~mask]).all()
    cos2, sums, counts = centre_pass(st, centres, 0.3, mask=mask, chunk=33)
    np.testing.assert_array_equal(cos2, cos)
    keep = mask & (cos >= 0.3)
    ref_sums, ref_counts = label_sums(st, mask=keep, num_classes=23, chunk=1000)
    np.testing.assert_allclose(sums, ref_sums, atol=1e-5)
    np.testing.assert_array_equal(counts, ref_counts)
    with pytest.raises(ValueError, match=r"centres: shape \(23, 8\), expected \(23, 16\)"):
        centre_cosines(st, centres[:, :8])


def _brute_topk(a, b, k, exclude=False):
    s = a @ b.T
    if exclude:
        np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(s, idx, 1)


def test_nearest_in_tiny_blocks_equals_brute_force():
    rng = np.random.default_rng(2)
    a = unit_rows(rng.standard_normal((53, 8)))
    b = unit_rows(rng.standard_normal((41, 8)))
    for k in (1, 5):
        ref_i, ref_v = _brute_topk(a, b, k)
        for chunk in (1, 4, 1000):
            idx, val = nearest(a, b, k=k, chunk=chunk, backend="numpy")
            np.testing.assert_array_equal(idx, ref_i)
            np.testing.assert_allclose(val, ref_v, atol=1e-6)
    ref_i, _ = _brute_topk(a, a, 3, exclude=True)
    np.testing.assert_array_equal(nearest(a, a, k=3, chunk=4, exclude_same_index=True, backend="numpy")[0], ref_i)
    idx, val = nearest(a[:3], b[:2], k=4, backend="numpy")
    assert (idx[:, 2:] == -1).all() and np.isneginf(val[:, 2:]).all() and (idx[:, :2] >= 0).all()
    idx, val = nearest(a[:2], a[:2], k=2, exclude_same_index=True, backend="numpy")
    np.testing.assert_array_equal(idx, [[1, -1], [0, -1]])


def test_nearest_breaks_ties_toward_the_lower_index():
    v, w = np.eye(4)[0], np.eye(4)[1]
    b = np.stack([w, v, v, v, w])
    for chunk in (1, 2, 100):
        np.testing.assert_array_equal(nearest(v[None], b, k=2, chunk=chunk, backend="numpy")[0], [[1, 2]])
        np.testing.assert_array_equal(nearest(v[None], b, k=1, chunk=chunk, backend="numpy")[0], [[1]])
        np.testing.assert_array_equal(nearest(v[None], b, k=4, chunk=chunk, backend="numpy")[0], [[1, 2, 3, 0]])


def test_nearest_backends():
    with pytest.raises(ValueError, match="backend: 'bogus'"):
        nearest(np.eye(3), np.eye(3), backend="bogus")
    if not HAVE_FAISS:
        with pytest.raises(ValueError, match="faiss is not installed"):
            nearest(np.eye(3), np.eye(3), backend="faiss")
        return
    rng = np.random.default_rng(3)
    a, b = unit_rows(rng.standard_normal((60, 16))), unit_rows(rng.standard_normal((70, 16)))
    for exclude, bb in ((False, b), (True, a)):
        want = nearest(a, bb, k=3, exclude_same_index=exclude, backend="numpy")
        got = nearest(a, bb, k=3, exclude_same_index=exclude, backend="faiss")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_pairs_above_in_blocks_equals_brute_force():
    rng = np.random.default_rng(4)
    a = unit_rows(rng.standard_normal((47, 4)))
    s = a @ a.T
    ri, rj = np.nonzero(np.triu(s > 0.8, k=1))
    for chunk in (3, 10, 100):
        i, j, v = pairs_above(a, 0.8, chunk=chunk)
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_array_equal(j, rj)
        np.testing.assert_allclose(v, s[ri, rj], atol=1e-6)
    assert len(pairs_above(a, 1.0)[0]) == 0 and len(pairs_above(a[:0], 0.0)[0]) == 0


def test_subcentre_choices_dominant_and_angles(tmp_path):
    rng = np.random.default_rng(5)
    e = np.eye(16)
    w = np.stack([e[[0, 1, 2]], e[[3, 4, 5]], e[[6, 7, 8]]]) * 3.0  # any scale: compared by cosine
    near = lambda d, n: e[d] + 0.05 * rng.standard_normal((n, 16))
    feats = np.concatenate([near(0, 6), near(1, 2), near(4, 3), near(5, 3), near(8, 4)])
    labels = np.r_[[0] * 8, [1] * 6, [2] * 4]
    st = _store(tmp_path / "f", feats, labels, batch=5)
    closest, dominant, angle = subcentre_angles(st, w, chunk=4)
    np.testing.assert_array_equal(closest, [0] * 6 + [1] * 2 + [1] * 3 + [2] * 3 + [2] * 4)
    np.testing.assert_array_equal(dominant, [0, 1, 2])  # class 1: three votes each, the lower index wins
    x = st.read(0, st.count)
    dom = unit_rows(w[labels, dominant[labels]])
    ref = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", x, dom), -1, 1)))
    np.testing.assert_allclose(angle, ref, atol=1e-3)
    assert (angle[6:8] > 80).all() and (angle[:6] < 20).all()
    mask = np.ones(st.count, bool)
    mask[[6, 7]] = False
    np.save(tmp_path / "w.npy", w.astype(np.float32))
    closest, dominant, angle = subcentre_angles(st, np.load(tmp_path / "w.npy", mmap_mode="r"), mask=mask)
    assert (closest[[6, 7]] == -1).all() and np.isnan(angle[[6, 7]]).all() and not np.isnan(angle[mask]).any()
    with pytest.raises(PipelineError, match=r"sub-centres of shape \(2, 3, 16\) do not fit the store \(3 classes"):
        subcentre_angles(st, w[:2])
