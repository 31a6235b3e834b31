"""The cleaning rules on a small planted store: exactly the planted noise goes (an image far from its
class, outliers, a mislabelled image, a person split over two labels, an identity of an evaluation
set, an identity too small), each with its row in the removal table, and the counts reconcile."""
import numpy as np
import pandas as pd
import pytest

from arcpipe.clean.centres import identity_centres, nearest_other
from arcpipe.clean.rules import (COLUMNS, EvalSet, Inter, Intra, MinImages, Nearest, Overlap, Subcenter, clean,
                                 rules_from_params)
from arcpipe.clean.store import FeatureStore, FeatureWriter
from arcpipe.errors import PipelineError
from arcpipe.params.clean import CleanParams

D = 32
E = np.eye(D)
FAR = np.cos(np.radians(80)) * E[0] + np.sin(np.radians(80)) * E[15]  # 80 degrees from identity 0's centre


def planted(seed=0, noise=0.03):
    """(features, labels, role per image): identities 0..7 along basis directions, with planted noise."""
    rng = np.random.default_rng(seed)
    parts = []

    def add(label, direction, n, role="clean", jitter=noise):
        parts.append((direction + jitter * rng.standard_normal((n, D)), [label] * n, [role] * n))

    add(0, E[0], 20)
    add(0, FAR, 1, "far", jitter=0.0)
    add(1, E[1], 20)
    add(2, E[1], 12, "split")          # person 1 again, under label 2
    add(3, E[3], 15)
    add(3, E[20], 3, "outlier")
    add(3, E[4], 1, "mislabelled")     # person 4's image under label 3
    add(4, E[4], 20)
    add(5, E[5], 3, "small")
    add(6, E[6], 10, "overlap")        # also in the evaluation set
    add(7, E[21], 2, "stray")          # nowhere near its head's sub-centres
    feats, labels, roles = (np.concatenate(x) for x in zip(*parts))
    return feats, labels.astype(np.int64), roles


def subcentres():
    """(8, 3, D): sub-centre 0 on each identity, except 3 (sub-centre 1 caught person 4's image) and
    4 (dominant sub-centre 2)."""
    w = np.stack([E[[c, 22, 23]] for c in range(8)])
    w[1, 0] = w[2, 0] = E[1]
    w[3] = E[[3, 4, 22]]
    w[4] = E[[27, 28, 4]]
    w[7] = E[[7, 29, 30]]
    return w.astype(np.float32)


def eval_sets():
    return [EvalSet("megaface", np.stack([E[6] + 0.01 * E[9], E[31]]), ["a", "b"]),
            EvalSet("facescrub", E[[25]], ["x"])]


def write(path, feats, labels, order=None) -> FeatureStore:
    order = np.arange(len(feats)) if order is None else order
    with FeatureWriter(path, D) as w:
        w.append([f"img{i}" for i in order], labels[order], feats[order])
    return FeatureStore(path)


CHAIN = [Subcenter(75.0), Intra(min_cos=0.15), Inter(0.7, "merge"), Overlap(0.4), MinImages(4)]


@pytest.fixture
def store(tmp_path):
    feats, labels, roles = planted()
    return write(tmp_path / "f", feats, labels), roles


def test_the_chain_removes_exactly_the_planted_noise(store):
    st, roles = store
    res = clean(st, CHAIN, subcentres=subcentres(), eval_sets=eval_sets(), chunk=16)
    t = res.removed
    assert list(t.columns) == COLUMNS
    rows = lambda *r: list(np.flatnonzero(np.isin(roles, r)))
    want = pd.DataFrame(
        [(i, "subcenter", "image") for i in rows("far", "outlier", "mislabelled", "stray")]
        + [(-1, "subcenter", "identity"), (-1, "inter", "identity"), (-1, "overlap", "identity")]
        + [(i, "overlap", "image") for i in rows("overlap")]
        + [(-1, "min_images", "identity")] + [(i, "min_images", "image") for i in rows("small")],
        columns=["row", "rule", "level"])
    pd.testing.assert_frame_equal(t[["row", "rule", "level"]], want)
    sub = t[t.rule == "subcenter"]
    assert sub.score.iloc[0] == pytest.approx(80.0, abs=0.05) and (sub.score[sub.level == "image"][1:] > 85).all()
    assert sub.detail.iloc[0] == "closest 0, dominant 0"
    assert sub.detail.iloc[4] == "closest 1, dominant 0"  # the mislabelled image: its head's second sub-centre
    ident = t[t.level == "identity"].set_index("rule")
    assert ident.label.to_dict() == {"subcenter": 7, "inter": 2, "overlap": 6, "min_images": 5}
    assert ident.detail.to_dict() == {"subcenter": "no images left", "inter": "merged into 1",
                                      "overlap": "megaface:a", "min_images": ""}
    assert ident.score["inter"] > 0.99 and ident.score["overlap"] > 0.99 and ident.score["min_images"] == 3
    img = t[t.level == "image"]
    assert list(img.key) == [f"img{r}" for r in img.row] and (img.label.to_numpy() == st.labels[img.row]).all()
    assert (t.key[t.level == "identity"] == "").all()
    # kept images: the clean ones and person 1's second label, now under one label; labels 0..3
    np.testing.assert_array_equal(res.rows, rows("clean", "split"))
    np.testing.assert_array_equal(np.unique(res.labels), [0, 1, 2, 3])
    np.testing.assert_array_equal(res.labels, [{0: 0, 1: 1, 2: 1, 3: 2, 4: 3}[v] for v in st.labels[res.rows]])
    lm = res.label_map.set_index("label")
    assert lm.target.to_dict() == {0: 0, 1: 1, 2: 1, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7}
    assert lm.new.to_dict() == {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: -1, 6: -1, 7: -1}


def test_counts_reconcile(store):
    st, _ = store
    res = clean(st, CHAIN, subcentres=subcentres(), eval_sets=eval_sets(), chunk=16)
    s, t = res.summary, res.removed
    images = t[t.level == "image"]
    assert s["images_in"] == st.count == s["images_kept"] + len(images) == len(res.rows) + len(images)
    assert s["images_in"] == s["images_kept"] + sum(r["images"] for r in s["rules"].values())
    assert s["identities_in"] == 8 == s["identities_kept"] + (t.level == "identity").sum()
    assert not set(images.row) & set(res.rows) and images.row.is_unique
    assert s["order"] == ["subcenter", "intra", "inter", "overlap", "min_images"]
    assert s["rules"]["inter"] == {"images": 0, "identities": 1, "max_cos": 0.7, "action": "merge"}
    assert set(res.seconds) == set(s["order"])


def test_robust_centres_catch_outliers_the_plain_mean_lets_through(store):
    st, roles = store
    plain = clean(st, [Intra(min_cos=0.15, passes=0), MinImages(4)], chunk=16).removed
    robust = clean(st, [Intra(min_cos=0.15, passes=2), MinImages(4)], chunk=16).removed
    caught = lambda t: set(t.row[t.rule == "intra"])
    assert caught(plain) == set(np.flatnonzero(roles == "mislabelled"))  # the outliers drag the mean
    assert caught(robust) == set(np.flatnonzero(np.isin(roles, ["outlier", "mislabelled"])))
    assert set(robust.label[(robust.rule == "min_images") & (robust.level == "identity")]) == {5, 7}


def test_inter_drop_keeps_the_larger_label_only(store):
    st, roles = store
    res = clean(st, [Inter(0.7, "drop")], chunk=16)
    t = res.removed
    assert list(t.row) == [-1] + list(np.flatnonzero(roles == "split"))
    assert (t.label == 2).all() and (t.detail == "same person as 1").all() and (t.rule == "inter").all()
    assert (res.label_map.set_index("label").new[[1, 2]] == [1, -1]).all()


def test_rows_need_not_be_contiguous_and_results_are_deterministic(tmp_path):
    feats, labels, _ = planted()
    order = np.random.default_rng(9).permutation(len(feats))
    shuffled = write(tmp_path / "s", feats, labels, order)
    straight = write(tmp_path / "f", feats, labels)
    kw = {"subcentres": subcentres(), "eval_sets": eval_sets()}
    a = clean(straight, CHAIN, chunk=16, **kw)
    b = clean(shuffled, CHAIN, chunk=5, **kw)
    c = clean(shuffled, CHAIN, chunk=5, **kw)
    pd.testing.assert_frame_equal(b.removed, c.removed)
    np.testing.assert_array_equal(b.labels, c.labels)
    assert sorted(order[b.rows]) == list(a.rows)
    key = lambda t: sorted(zip(t.key, t.rule, t.level, t.label, t.detail))
    assert key(a.removed) == key(b.removed)
    np.testing.assert_allclose(np.sort(a.removed.score.fillna(-9)), np.sort(b.removed.score.fillna(-9)), atol=1e-4)


@pytest.mark.parametrize("make, message", [
    (lambda: Intra(min_cos=1.5), r"intra.min_cos: 1.5, expected a cosine in \[-1, 1\]"),
    (lambda: Intra(robust_cut=float("nan")), r"intra.robust_cut: nan, expected a cosine in \[-1, 1\]"),
    (lambda: Intra(passes=-1), r"intra.passes: -1, expected >= 0"),
    (lambda: Subcenter(max_angle_deg=200), r"subcenter.max_angle_deg: 200, expected an angle in degrees in \[0, 180\]"),
    (lambda: Inter(max_cos=-2), r"inter.max_cos: -2, expected a cosine in \[-1, 1\]"),
    (lambda: Inter(action="fuse"), r"inter.action: 'fuse', expected merge or drop"),
    (lambda: Overlap(max_cos=1.01), r"overlap.max_cos: 1.01, expected a cosine"),
    (lambda: MinImages(0), r"min_images.min_images: 0, expected >= 1"),
])
def test_bad_thresholds_are_one_line(make, message):
    with pytest.raises(ValueError, match="^" + message) as e:
        make()
    assert "\n" not in str(e.value)


def test_bad_inputs_are_named(tmp_path, store):
    st, _ = store
    with pytest.raises(ValueError, match="^rules: intra is given twice$"):
        clean(st, [Intra(), Intra(0.3)])
    with pytest.raises(ValueError, match="^subcentres: the subcenter rule needs"):
        clean(st, [Subcenter()])
    with pytest.raises(PipelineError, match=r"eval set x: 8-d centres, .* holds 32-d features"):
        clean(st, [Overlap()], eval_sets=[EvalSet("x", np.eye(8), [str(i) for i in range(8)])])
    with pytest.raises(PipelineError, match=r"eval set y: centres of shape \(2, 32\) for 3 identity names"):
        EvalSet("y", E[:2], ["a", "b", "c"])
    with pytest.raises(PipelineError, match="sub-centres of shape"):
        clean(st, [Subcenter()], subcentres=subcentres()[:5])
    feats, labels, _ = planted()
    labels[4] = -1
    bad = write(tmp_path / "bad", feats, labels)
    with pytest.raises(PipelineError, match=r"bad: row 4 \(key 'img4'\) has no label"):
        clean(bad, [Intra()])


def test_rules_from_params_follow_the_order_and_switches():
    p = CleanParams.model_validate({"order": ["min_images", "overlap", "inter", "intra", "nearest", "subcenter"],
                                    "inter": {"action": "drop", "max_cos": 0.6}, "subcenter": {"enabled": False},
                                    "intra": {"min_cos": 0.3, "robust_cut": 0.2, "passes": 3}})
    assert rules_from_params(p) == [MinImages(2), Overlap(0.4), Inter(0.6, "drop"), Intra(0.3, 0.2, 3)]
    with pytest.raises(ValueError, match="each rule exactly once: missing subcenter"):
        CleanParams.model_validate({"order": ["intra", "nearest", "inter", "overlap", "min_images"]})
    assert CleanParams().nearest.enabled is False  # not in the paper's recipe: on only where asked
    on = CleanParams.model_validate({"nearest": {"enabled": True, "margin": 0.4, "candidate_max_cos": 0.6}})
    assert Nearest(0.4, 0.6) in rules_from_params(on)


def test_nearest_other_is_the_best_other_live_centre(store):
    st, _ = store
    feats, labels, _ = planted()
    centres, _ = identity_centres(st)
    centres[5] = 0.0  # a label with no centre is never anyone's nearest
    mask = np.ones(st.count, bool)
    mask[[3, 40]] = False
    own, other, other_cos = nearest_other(st, centres, mask=mask, chunk=7)
    x = st.read(0, st.count, np.float32)
    sims = x @ centres.T
    for i in range(st.count):
        if not mask[i]:
            assert np.isnan(own[i]) and other[i] == -1 and np.isnan(other_cos[i])
            continue
        row = sims[i].copy()
        assert own[i] == pytest.approx(row[labels[i]], abs=1e-5)
        row[[labels[i], 5]] = -np.inf
        assert other[i] == row.argmax() and other_cos[i] == pytest.approx(row.max(), abs=1e-5)


def test_nearest_takes_the_image_of_another_person_and_nothing_else(store):
    st, roles = store
    t = clean(st, [Nearest(margin=0.3, candidate_max_cos=0.5)], chunk=16).removed
    assert set(t.row[t.rule == "nearest"]) == set(np.flatnonzero(roles == "mislabelled"))
    assert t.detail.iloc[0].startswith("nearer 4 ") and t.score.iloc[0] > 0.8  # person 4's image
    # an image is judged only below candidate_max_cos, and only a gap above margin takes it
    assert clean(st, [Nearest(margin=0.3, candidate_max_cos=-0.5)], chunk=16).removed.empty
    assert clean(st, [Nearest(margin=1.5, candidate_max_cos=0.5)], chunk=16).removed.empty
    with pytest.raises(ValueError, match=r"nearest.margin: -0.1"):
        Nearest(margin=-0.1)


_CHAIN_IN_A_PROCESS = """
import hashlib, sys
import numpy as np
from arcpipe.clean.rules import EvalSet, Inter, Intra, MinImages, Nearest, Overlap, clean
from arcpipe.clean.store import FeatureStore, FeatureWriter
rng = np.random.default_rng(0)
c, n, d = 120, 20, 128
labels = np.repeat(np.arange(c), n)
x = rng.standard_normal((c, d))[labels] + 1.2 * rng.standard_normal((c * n, d))
with FeatureWriter(sys.argv[1], d) as w:
    w.append([f"k{i}" for i in range(len(x))], labels, x.astype(np.float32))
ev = [EvalSet("e", np.random.default_rng(1).standard_normal((50, d)), [f"e{i}" for i in range(50)])]
res = clean(FeatureStore(sys.argv[1]), [Intra(0.1), Nearest(0.05, 0.9), Inter(0.3), Overlap(0.1), MinImages(2)],
            eval_sets=ev)
print(hashlib.sha256(res.removed.to_csv().encode()).hexdigest())
"""


def test_the_removal_table_does_not_depend_on_the_blas_thread_count(tmp_path):
    """Snakemake runs a job with OMP_NUM_THREADS = its threads, DVC leaves it unset; a threaded
    OpenBLAS then picks other kernels and the scores differed in their last bits (seen on the
    sample's removals.parquet). The rules run on one BLAS thread whatever the environment says."""
    import os
    import subprocess
    import sys

    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        r = subprocess.run([sys.executable, "-c", _CHAIN_IN_A_PROCESS, str(tmp_path / f"s{threads}")], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        digests.append(r.stdout.strip())
    assert digests[0] == digests[1]


def test_the_removal_table_does_not_depend_on_the_order_of_the_evaluation_sets(tmp_path):
    """DVC hands the stage clean.eval_features in params.yaml's order, Snakemake in its snapshot's
    sorted order; the overlap rule's matrix product then put each evaluation centre elsewhere in
    the blocks and 25 of the sample's 278 scores differed in their last float32 bit. The rules
    take the sets in name order, so the order they come in does not matter."""
    rng = np.random.default_rng(0)
    c, n, d = 120, 20, 128
    labels = np.repeat(np.arange(c), n)
    x = rng.standard_normal((c, d))[labels] + 1.2 * rng.standard_normal((c * n, d))
    with FeatureWriter(tmp_path / "s", d) as w:
        w.append([f"k{i}" for i in range(len(x))], labels, x.astype(np.float32))
    g = np.random.default_rng(1)
    sets = [EvalSet(name, x[: k * n: n] + g.standard_normal((k, d)), [f"{name}{i}" for i in range(k)])
            for name, k in (("lfw", 60), ("megaface_probe", 6), ("ijbs", 16))]  # near training identities
    tables = []
    for order in (sets, sorted(sets, key=lambda e: e.name), sets[::-1]):
        res = clean(FeatureStore(tmp_path / "s"), [Overlap(0.1)], eval_sets=order)
        assert len(res.removed)
        tables.append(res.removed)
    for t in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], t, check_exact=True)
