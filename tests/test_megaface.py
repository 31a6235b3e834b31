"""MegaFace identification / verification: hand case, chunked == full matrix, noise lists, runner."""
import math

import cv2
import numpy as np
import pandas as pd
import pytest

from arcpipe.errors import PipelineError
from arcpipe.evaluate.megaface import (evaluate_megaface, genuine_pairs, l2n, noise_mask, read_noise_list,
                                       refine_probes, run_megaface)
from arcpipe.evaluate.roc import far_key
from arcpipe.params.evaluate_bench import MegaFaceParams


def full_matrix(probes, labels, distractors, size, ranks, fars, noisy=None):
    """The definition on the whole score matrix, one trial at a time."""
    p = l2n(probes).astype(np.float64)
    d = l2n(distractors[:size]).astype(np.float64)
    s = p @ d.T
    if noisy is not None:
        s[:, noisy[:size]] = -np.inf
    trials = [(i, j) for i in range(len(p)) for j in range(len(p)) if i != j and labels[i] == labels[j]]
    gen = np.array([p[i] @ p[j] for i, j in trials])
    rank = np.array([1 + np.sum(s[i] > g) for (i, _), g in zip(trials, gen)])
    imp = np.sort(s.ravel())[::-1]
    tars = []
    for f in fars:
        th = imp[math.ceil(f * s.size) - 1]
        tars.append(np.mean(gen > th))
    return {str(r): np.mean(rank <= r) for r in ranks}, tars


def test_hand_case():
    # identity a: (1,0),(0.8,0.6); identity b: (0,1),(0,-1). distractors (0.9,0.1) (0.7,0.7) (-1,0)
    probes = np.array([[1, 0], [0.8, 0.6], [0, 1], [0, -1]], np.float32)
    labels = np.array(["a", "a", "b", "b"])
    d = np.array([[0.9, 0.1], [0.7, 0.7], [-1, 0]], np.float32)
    # trials: a0->a1 s=.8: distractor (0.9,.1)/|.| scores .994 > .8 -> rank 2
    #         a1->a0 s=.8: (.7,.7) -> .99 and (.9,.1) -> .78/.906 = .86, both > .8 -> rank 3
    #         b0->b1 s=-1: (0.9,.1)->.11, (.7,.7)->.707, (-1,0)->0: all above -> rank 4
    #         b1->b0 s=-1: .-11, -.707, 0: all above -1 -> rank 4
    res = evaluate_megaface(probes, labels, d, sizes=[3], ranks=[1, 2, 4], fars=[0.1], chunk=2)
    r = res["raw"]["3"]
    assert r["rank"] == {"1": 0.0, "2": 0.25, "4": 1.0}
    # 12 impostor scores, FAR .1 -> ceil(1.2) = 2nd largest: .994 (a0.d0), .99 (a1.d1) -> th .99
    assert r["threshold_at_far"]["0.1"] == pytest.approx(1 / math.sqrt(2) * (0.8 * 0.7 + 0.6 * 0.7) / 0.7, abs=1e-6)
    assert r["tar_at_far"]["0.1"] == 0.0
    assert (r["genuine"], r["impostors"]) == (4, 12)


def test_chunked_equals_full_matrix_at_every_size():
    rng = np.random.default_rng(0)
    n_id, per, d = 12, 4, 32
    centres = rng.standard_normal((n_id, d))
    labels = np.repeat(np.arange(n_id), per)
    probes = (centres[labels] + rng.standard_normal((n_id * per, d)) * 1.2).astype(np.float32)
    distractors = rng.standard_normal((3000, d)).astype(np.float32)
    sizes, ranks, fars = [10, 100, 1000, 3000], [1, 5], [1e-4, 1e-3, 1e-2]
    res = evaluate_megaface(probes, labels, distractors, sizes, ranks, fars, chunk=257)
    for size in sizes:
        acc, tars = full_matrix(probes, labels, distractors, size, ranks, fars)
        got = res["raw"][str(size)]
        assert got["rank"] == acc
        n_imp = len(probes) * size
        # a FAR below 1 / impostors is not resolvable: None, and the reason with the count
        assert list(got["tar_at_far"].values()) == [None if f * n_imp < 1 else t for f, t in zip(fars, tars)]
        assert got["not_resolvable"] == {
            far_key(f): f"FAR {far_key(f)} needs at least {round(1 / f)} impostor pairs; {n_imp} here"
            for f in fars if f * n_imp < 1}
        assert all((got["threshold_at_far"][k] is None) == (k in got["not_resolvable"]) for k in got["tar_at_far"])
    assert set(res["raw"]["10"]["not_resolvable"]) == {"0.0001", "0.001"}   # 480 impostor pairs
    assert res["raw"]["1000"]["not_resolvable"] == {} and res["raw"]["1000"]["tar_at_far"]["0.0001"] is not None
    assert 0 < res["raw"]["3000"]["rank"]["1"] < res["raw"]["10"]["rank"]["1"]


def test_refined_mode_pushes_noisy_distractors_away_and_recentres_probes():
    rng = np.random.default_rng(1)
    n_id, per, d = 6, 4, 16
    centres = rng.standard_normal((n_id, d))
    labels = np.repeat(np.arange(n_id), per)
    probes = l2n(centres[labels] + rng.standard_normal((n_id * per, d)) * 0.3)
    noisy_probe = np.zeros(len(probes), bool)
    noisy_probe[[1, 9]] = True
    probes[[1, 9]] = l2n(rng.standard_normal((2, d)))            # mislabelled images
    distractors = rng.standard_normal((500, d)).astype(np.float32)
    dn = np.zeros(500, bool)
    dn[[3, 250]] = True
    distractors[[3, 250]] = centres[[0, 2]]                        # probe identities among distractors
    refined = refine_probes(probes, labels, noisy_probe, seed=0)
    centre0 = l2n(probes[[0, 2, 3]].astype(np.float64).sum(0, keepdims=True))
    assert float(refined[1] @ centre0[0]) > 0.9999
    assert np.array_equal(refined[~noisy_probe], probes[~noisy_probe])
    res = evaluate_megaface(probes, labels, distractors, [500], [1], [1e-2], chunk=64,
                            probes_refined=refined, distractor_noisy=dn)
    acc, tars = full_matrix(refined, labels, distractors, 500, [1], [1e-2], noisy=dn)
    assert res["refined"]["500"]["rank"] == acc
    assert list(res["refined"]["500"]["tar_at_far"].values()) == tars
    assert res["refined"]["500"]["rank"]["1"] > res["raw"]["500"]["rank"]["1"]
    with pytest.raises(PipelineError, match="every image of"):
        refine_probes(probes, labels, labels == 0)


def test_genuine_pairs_and_noise_matching(tmp_path):
    p, g = genuine_pairs(np.array(["x", "y", "x", "x"]))
    assert sorted(zip(p.tolist(), g.tolist())) == [(0, 2), (0, 3), (2, 0), (2, 3), (3, 0), (3, 2)]
    f = tmp_path / "noise.txt"
    f.write_text("# comment\nAnn/Ann_3.jpg\nBob_2.png\n7\t001/000031_0.jpg\n")
    entries = read_noise_list(f)
    src = ["data/sample/megaface/facescrub/Ann/Ann_3.jpg", "x/Bob/Bob_2.png", "x/Ann/Ann_30.jpg",
           "megaface/distractors/001/000031_0.jpg", "000031_0.jpg"]
    assert noise_mask(src, entries).tolist() == [True, True, False, True, False]


def _write_aligned_set(directory, identities, rng):
    from arcpipe.recordio import IRHeader, RecordWriter, pack

    directory.mkdir(parents=True)
    rows = []
    with RecordWriter(directory / "faces.rec", directory / "faces.idx") as w:
        for i, ident in enumerate(identities):
            base = (abs(hash(ident)) % 200) if ident else rng.integers(0, 255)
            img = np.clip(base + rng.integers(-60, 60, (112, 112, 3)), 0, 255).astype(np.uint8)
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            w.write(i, pack(IRHeader(0, 0.0, i, 0), jpg.tobytes()))
            src = f"{ident}/{ident}_{i}.jpg" if ident else f"{i // 25:03d}/{i:06d}_0.jpg"
            rows.append({"row": i, "source": src, "identity": ident, "label": -1, "status": "ok", "reason": "", "key": i})
    pd.DataFrame(rows).to_parquet(directory / "manifest.parquet")


class _Gray:
    batch_size = 8

    def embed(self, rgb, flip=True):
        x = rgb.reshape(len(rgb), 8, 14, 8, 14, 3).mean((2, 4, 5)).reshape(len(rgb), -1)
        return (x - x.mean(1, keepdims=True)).astype(np.float32) * (2 if flip else 1)


def test_run_megaface_on_aligned_sets(tmp_path):
    rng = np.random.default_rng(4)
    ids = [n for n in ("Ann", "Bob", "Cid") for _ in range(3)]
    _write_aligned_set(tmp_path / "fs", ids, rng)
    _write_aligned_set(tmp_path / "mf", [""] * 60, rng)
    (tmp_path / "fsn.txt").write_text("Bob/Bob_4.jpg\n")
    (tmp_path / "mfn.txt").write_text("000/000007_0.jpg\n")
    params = MegaFaceParams(probe_set=str(tmp_path / "fs"), distractor_set=str(tmp_path / "mf"),
                            facescrub_noises=str(tmp_path / "fsn.txt"), megaface_noises=str(tmp_path / "mfn.txt"),
                            sizes=[10, 50, 100], fars=[0.01], chunk=16)
    out = run_megaface(params, _Gray())
    assert set(out["metrics"]) == {"raw", "refined"}
    assert set(out["metrics"]["raw"]) == {"10", "50"}
    assert out["counts"]["facescrub_noisy"] == 1 and out["counts"]["megaface_noisy"] == 1
    assert out["counts"]["genuine_trials"] == 18
    assert "sizes [100] not run" in out["problems"][0]
    with pytest.raises(PipelineError, match="both"):
        run_megaface(params.model_copy(update={"megaface_noises": None}), _Gray())
