"""IJB pooling, pair scoring, TAR@FAR and 1:N against hand results and slow loop definitions."""
import math

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from arcpipe.errors import PipelineError
from arcpipe.evaluate.ijb import (evaluate_1to1, identify_1n, pool_templates, read_1n_csv, read_landmarks,
                                  read_template_pairs, read_tid_mid, run_ijb, score_pairs, template_index)
from arcpipe.params.evaluate_bench import IJBParams


# ---------------------------------------------------------------- slow definitions

def slow_templates(feats, templates, medias, det=None, keep_norm=True):
    """The definition, loop by loop: per image switches, media mean, sum over media, normalise."""
    x = feats.astype(np.float64)
    if not keep_norm:
        x = np.array([v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v for v in x])
    if det is not None:
        x = x * np.asarray(det, np.float64)[:, None]
    out = {}
    for t in sorted(set(templates.tolist())):
        acc = np.zeros(x.shape[1])
        for m in sorted(set(medias[templates == t].tolist())):
            sel = (templates == t) & (medias == m)
            acc += x[sel].mean(0)
        n = np.linalg.norm(acc)
        out[t] = acc / n if n > 0 else acc
    return out


def slow_tar(labels, scores, fars):
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = fpr[::-1], tpr[::-1]
    return [tpr[min(zip(abs(fpr - x), range(len(fpr))))[1]] for x in fars]


# ---------------------------------------------------------------- hand example

def test_three_templates_by_hand():
    # A: media 1 = (1,0),(3,0) -> mean (2,0); media 2 = (0,2): sum (2,2) -> (1,1)/sqrt2
    # (a plain mean over A's images would point at (4,2)/3: media pooling matters)
    # B = (1,0); C = (0,-1); D = (-1,0)
    feats = np.array([[1, 0], [3, 0], [0, 2], [1, 0], [0, -1], [-1, 0]], np.float32)
    tids = np.array([10, 10, 10, 20, 30, 40])
    mids = np.array([1, 1, 2, 3, 4, 5])
    uniq, tf = pool_templates(feats, tids, mids)
    assert uniq.tolist() == [10, 20, 30, 40]
    np.testing.assert_allclose(tf, [[2 ** -0.5, 2 ** -0.5], [1, 0], [0, -1], [-1, 0]], atol=1e-12)
    t1 = np.array([10, 20, 10, 20])
    t2 = np.array([20, 30, 30, 40])
    lab = np.array([1, 0, 0, 1], bool)
    s = score_pairs(tf, template_index(uniq, t1), template_index(uniq, t2))
    np.testing.assert_allclose(s, [2 ** -0.5, 0, -(2 ** -0.5), -1], atol=1e-6)
    # ROC (0,0) (0,.5) (1,.5) (1,1): FAR 0.5 ties FPR 0 and 1 -> the first of the reversed curve, TPR 1;
    # FAR 0.6 -> FPR 1, TPR 1; FAR 0.1 < 1/2 impostor pairs cannot be resolved
    res = evaluate_1to1(lab, s, [0.1, 0.5, 0.6])
    assert res["tar_at_far"] == {"0.1": None, "0.5": 1.0, "0.6": 1.0}
    assert res["not_resolvable"] == {"0.1": "FAR 0.1 needs at least 10 impostor pairs; 2 here"}
    assert (res["genuine"], res["impostor"]) == (2, 2)
    # detector scores weight images inside a media: (1*1 + 3*0)/2 -> A = (0.5,0)+(0,2)
    _, tf_d = pool_templates(feats, tids, mids, det_scores=np.array([1, 0, 1, 1, 1, 1]))
    np.testing.assert_allclose(tf_d[0], np.array([0.5, 2]) / math.hypot(0.5, 2))
    # keep_norm=False: A = mean((1,0),(1,0)) + (0,1) -> (1,1)/sqrt2 as well, now from unit vectors
    _, tf_n = pool_templates(feats * 5, tids, mids, keep_norm=False)
    np.testing.assert_allclose(tf_n, tf, atol=1e-12)


# ---------------------------------------------------------------- randomised vs loops

@pytest.mark.parametrize("keep_norm,use_det", [(True, True), (False, False), (False, True)])
def test_pooling_scoring_tar_match_slow_definition(keep_norm, use_det):
    rng = np.random.default_rng(7 + keep_norm + 2 * use_det)
    n, d, nt = 600, 24, 70
    tids = rng.choice(np.arange(1000, 1000 + 3 * nt, 3), n)
    mids = rng.integers(0, 15, n)
    feats = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.5, 3, (n, 1)).astype(np.float32)
    det = rng.uniform(0.1, 1, n).astype(np.float32) if use_det else None
    uniq, tf = pool_templates(feats, tids, mids, det, keep_norm, chunk=97)
    _, tf64 = pool_templates(feats.astype(np.float64), tids, mids, det, keep_norm, chunk=97)
    slow = slow_templates(feats, tids, mids, det, keep_norm)
    assert uniq.tolist() == sorted(slow)
    np.testing.assert_allclose(tf, np.stack([slow[t] for t in uniq]), atol=1e-6)       # float32 sums
    np.testing.assert_allclose(tf64, np.stack([slow[t] for t in uniq]), rtol=1e-10, atol=1e-12)

    # distinct unordered pairs (float32 rounding must not merge two float64 scores: few pairs)
    a, b = np.triu_indices(uniq.size, 1)
    pick = rng.choice(a.size, 1500, replace=False)
    t1, t2 = uniq[a[pick]], uniq[b[pick]]
    p = t1.size
    lab = rng.random(p) < 0.1
    # small tiles so that dense and gathered buckets both occur
    s = score_pairs(tf, template_index(uniq, t1), template_index(uniq, t2), tile=16, dense_min_density=0.5)
    s_slow = np.array([slow[a] @ slow[b] for a, b in zip(t1, t2)])
    np.testing.assert_allclose(s, s_slow, atol=2e-6)
    s_dense = score_pairs(tf, template_index(uniq, t1), template_index(uniq, t2), tile=16, dense_min_density=0)
    np.testing.assert_allclose(s_dense, s_slow, atol=2e-6)
    fars = [1e-4, 1e-3, 1e-2, 1e-1]
    n_imp = int(np.count_nonzero(~lab))
    want = [None if f * n_imp < 1 else v for f, v in zip(fars, slow_tar(lab, s_slow, fars))]
    assert want[0] is None and want[1] is not None      # ~1,350 impostor pairs: 1e-4 is out of reach
    res = evaluate_1to1(lab, s, fars)
    assert list(res["tar_at_far"].values()) == want
    assert res["not_resolvable"] == {"0.0001": f"FAR 0.0001 needs at least 10000 impostor pairs; {n_imp} here"}
    # reversed and repeated pairs score bit-identically, on both paths
    i1, i2 = template_index(uniq, t1), template_index(uniq, t2)
    for dens in (0.5, 0.0):
        both = score_pairs(tf, np.concatenate([i1, i2, i1]), np.concatenate([i2, i1, i1]), tile=16,
                           dense_min_density=dens)
        assert np.array_equal(both[:p], both[p:2 * p])
    np.testing.assert_allclose(both[2 * p:], 1.0, atol=1e-6)
    # gallery x probe structure (templates renumbered by role before tiling)
    g1 = rng.choice(uniq[::2], 3000)
    g2 = rng.choice(uniq[1::2], 3000)
    sb = score_pairs(tf, template_index(uniq, g1), template_index(uniq, g2), tile=8, dense_min_density=0.3)
    np.testing.assert_allclose(sb, [slow[a] @ slow[b] for a, b in zip(g1, g2)], atol=2e-6)


def test_identify_1n_matches_slow_definition():
    rng = np.random.default_rng(11)
    ng, nq, d = 40, 300, 16
    g = rng.standard_normal((ng, d))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gs = rng.permutation(ng) + 500
    q_sub = rng.integers(0, ng, nq)
    q = g[q_sub] + rng.standard_normal((nq, d)) * 0.9
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qs = gs[q_sub]
    res = identify_1n(g, gs, q, qs, ranks=(1, 5), fpirs=(0.01, 0.1), chunk=37)
    # slow: the 1:N script's steps
    sim = q @ g.T
    mask = [int(np.flatnonzero(gs == s)[0]) for s in qs]
    top = np.argsort(-sim, axis=1)
    r1 = np.mean([top[i, 0] == mask[i] for i in range(nq)])
    r5 = np.mean([mask[i] in top[i, :5] for i in range(nq)])
    pos = np.array([sim[i, mask[i]] for i in range(nq)])
    neg = sorted((sim[i, j] for i in range(nq) for j in range(ng) if j != mask[i]), reverse=True)
    tp = [np.sum(pos > neg[math.ceil(nq * f) - 1]) / nq for f in (0.01, 0.1)]
    assert res["rank"] == {"1": r1, "5": r5}
    assert list(res["tpir_at_fpir"].values()) == tp
    assert 0 < r1 < r5 < 1
    with pytest.raises(PipelineError, match="probe subject 9999"):
        identify_1n(g, gs, q[:2], np.array([gs[0], 9999]))


# ---------------------------------------------------------------- metadata and runner

def test_readers_name_file_and_line(tmp_path):
    p = tmp_path / "ijbx_template_pair_label.txt"
    p.write_text("1 2 1\n3 4 0\n5 x 1\n")
    with pytest.raises(PipelineError, match=r"ijbx_template_pair_label.txt:3: .*'x'"):
        read_template_pairs(p)
    p.write_text("1 2 1\n3 4 2\n")
    with pytest.raises(PipelineError, match=r":2: label must be 0 or 1"):
        read_template_pairs(p)
    p.write_text("1 2 1\n3 4 0\n")
    t1, t2, lab = read_template_pairs(p)
    assert t1.tolist() == [1, 3] and t2.tolist() == [2, 4] and lab.tolist() == [True, False]
    q = tmp_path / "tid.txt"
    q.write_text("a.jpg 1 1\nb.jpg 1\n")
    with pytest.raises(PipelineError, match=r"tid.txt:2: expected 3 fields"):
        read_tid_mid(q)
    c = tmp_path / "g.csv"
    c.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,7,img/1.jpg\n5,7,img/2.jpg\n6,8,img/3.jpg\n")
    assert [a.tolist() for a in read_1n_csv(c)] == [[5, 5, 6], [7, 7, 8]]
    lm = tmp_path / "l.txt"
    good = "38 51 73 51 56 71 41 92 70 92 0.9"
    lm.write_text(f"a.jpg {good}\nb.jpg 1 2 3\nc.jpg " + " ".join(["nan"] * 11) + "\n"
                  "d.jpg " + " ".join(["7"] * 10) + " 0.9\n"          # five equal points
                  "e.jpg 10 20 20 30 30 40 40 50 50 60 0.9\n"         # five points on a line
                  f"f.jpg {good}\n")
    rows = read_landmarks(lm)
    assert [ln for ln, _ in rows.bad] == [2, 3, 4, 5]
    assert rows.bad[2][1] == "degenerate landmarks: the five points coincide"
    assert rows.bad[3][1] == "degenerate landmarks: the five points lie on one line"
    assert rows.ok.tolist() == [True, False, False, False, False, True]


class _MeanColour:
    """A tiny deterministic embedder for runner tests: mean colour per 4x4 block (48-d)."""
    batch_size = 4

    def embed(self, rgb, flip=True):
        x = rgb.reshape(rgb.shape[0], 4, 28, 4, 28, 3).mean((2, 4)).reshape(rgb.shape[0], -1)
        x = x - x.mean(1, keepdims=True)
        if flip:
            f = rgb[:, :, ::-1].reshape(rgb.shape[0], 4, 28, 4, 28, 3).mean((2, 4)).reshape(rgb.shape[0], -1)
            x = x + f - f.mean(1, keepdims=True)
        return x.astype(np.float32)


def _write_ijb(root, bad_line=None):
    rng = np.random.default_rng(5)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    lmk_ref = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    tid_lines, lmk_lines = [], []
    subjects = {}
    k = 0
    for subj in range(4):
        colour = rng.integers(0, 255, 3)
        for tmpl in (2 * subj + 1, 2 * subj + 2):
            subjects[tmpl] = subj
            for img in range(2):
                img_arr = np.clip(colour + rng.integers(-40, 40, (150, 150, 3)), 0, 255).astype(np.uint8)
                name = f"{k}.jpg"
                cv2.imwrite(str(root / "loose_crop" / name), img_arr)
                lm = lmk_ref + 15 + rng.normal(0, 1, (5, 2))
                vals = " ".join(f"{v:.2f}" for v in lm.ravel())
                k += 1
                tid_lines.append(f"{name} {tmpl} {100 * tmpl + img % 2}")
                if bad_line == k:
                    lmk_lines.append(f"{name} {vals.rsplit(' ', 4)[0]} 0.9")   # two coordinates missing
                else:
                    lmk_lines.append(f"{name} {vals} {rng.uniform(0.5, 1):.3f}")
    (root / "meta" / "ijbs_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (root / "meta" / "ijbs_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    pairs = [f"{a} {b} {int(subjects[a] == subjects[b])}" for a in range(1, 9) for b in range(a + 1, 9)]
    (root / "meta" / "ijbs_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    (root / "meta" / "ijbs_1N_gallery_G1.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{2 * s + 1},{s},x.jpg\n" for s in (0, 1)))
    (root / "meta" / "ijbs_1N_gallery_G2.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{2 * s + 1},{s},x.jpg\n" for s in (2, 3)))
    (root / "meta" / "ijbs_1N_probe_mixed.csv").write_text(
        "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "".join(f"{2 * s + 2},{s},x.jpg\n" for s in range(4)))


def test_run_ijb_end_to_end_and_bad_landmark_row(tmp_path):
    root = tmp_path / "IJBS"
    _write_ijb(root, bad_line=3)
    params = IJBParams(root=str(root), target="IJBS", fars=[0.1, 0.5], fpirs=[0.1])
    out = run_ijb(params, _MeanColour())
    assert out["counts"]["skipped_bad_landmarks"] == 1
    assert out["counts"]["images_embedded"] == 15
    assert out["problems"] and "ijbs_name_5pts_score.txt:3:" in out["problems"][0]
    v = out["metrics"]["verification"]
    assert (v["pairs"], v["genuine"]) == (28, 4)
    assert set(v["tar_at_far"]) == {"0.1", "0.5"}
    assert all(0 <= x <= 1 for x in v["tar_at_far"].values())
    ident = out["metrics"]["identification"]
    assert ident["probes"] == 4 and ident["gallery"] == 4
    assert ident["rank"]["1"] <= ident["rank"]["5"] == 1.0
    assert out["plots"]["roc"][-1] == {"fpr": 1.0, "tpr": 1.0}
    with pytest.raises(PipelineError, match=r"ijbs_name_5pts_score.txt:3: expected 10 landmark values"):
        run_ijb(params.model_copy(update={"on_bad_row": "error"}), _MeanColour())


def test_template_index_lookup_table_and_search_agree():
    for uniq in (np.array([3, 7, 10]), np.array([-4, 7, 10 ** 12])):
        assert template_index(uniq, uniq[[2, 0, 1, 1]]).tolist() == [2, 0, 1, 1]
        for bad in (11, -1, 5, 10 ** 13):
            with pytest.raises(PipelineError, match=f"template {bad} "):
                template_index(uniq, np.array([uniq[0], bad]), "p.txt")


def test_pair_with_unknown_template_is_an_error(tmp_path):
    root = tmp_path / "IJBS"
    _write_ijb(root)
    with open(root / "meta" / "ijbs_template_pair_label.txt", "a") as f:
        f.write("1 77 0\n")
    with pytest.raises(PipelineError, match=r"template 77 \(row 29\)"):
        run_ijb(IJBParams(root=str(root), target="IJBS", one_to_n=False), _MeanColour())
