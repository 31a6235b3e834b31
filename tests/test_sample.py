"""The embedded sample: deterministic bytes, real-format layouts, and ground truth that matches.

One small sample (scale 0.5) is built three times: seed 0 through the download and sample stage
scripts in a fresh process (the photos fetched as params.yaml lists them, checksums and all), seed 0
again in-process from the installed wheels, seed 1 in-process.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from arcpipe.errors import ParamsError
from arcpipe.params import load_params
from arcpipe.params.sample import SampleParams
from arcpipe.sample import GROUND_TRUTH, build, plan_sample

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"scale": 0.5, "images_per_identity": 6, "megaface_distractors": 24}


def _params_file(path: Path, out_dir: Path, download: dict | None = None, **over) -> Path:
    doc = {"sample": {"out_dir": str(out_dir), **SMALL, **over}}
    if download is not None:
        doc["download"] = download
    path.write_text(yaml.safe_dump(doc))
    return path


def _repo_download(out_dir: Path) -> dict:
    """params.yaml's download section (the sample's photos), into out_dir."""
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["download"]
    return {**section, "out_dir": str(out_dir)}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    a = tmp / "a"
    pfile = _params_file(tmp / "a.yaml", a, download=_repo_download(tmp / "dl"))
    got = subprocess.run([sys.executable, str(ROOT / "scripts" / "download.py"), "--params", str(pfile)],
                         cwd=tmp, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    # the stage script in its own process, while this one builds the other two
    err = tmp / "stderr.txt"
    with open(err, "w") as fh:   # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sample.py"), "--params", str(pfile)],
                                cwd=tmp, stdout=subprocess.DEVNULL, stderr=fh)
    b, c = tmp / "b", tmp / "c"
    b.mkdir()
    c.mkdir()
    pa = SampleParams(out_dir=str(b), **SMALL)
    build(pa, b)
    pc = SampleParams(out_dir=str(c), seed=1, **SMALL)
    build(pc, c)
    proc.wait(timeout=300)
    stderr = err.read_text()
    assert proc.returncode == 0, stderr[-2000:]
    return {"a": a, "b": b, "c": c, "params": pa, "stderr": stderr, "cwd": tmp}


@pytest.fixture(scope="module")
def truth(samples):
    return json.loads((samples["a"] / GROUND_TRUTH).read_text())


@pytest.fixture(scope="module")
def plan(samples):
    return plan_sample(samples["params"]).plan


# --- determinism ------------------------------------------------------------------------------

def test_same_seed_same_bytes_across_processes(samples):
    da, db = _digests(samples["a"]), _digests(samples["b"])
    assert len(da) > 200
    assert da == db


def test_other_seed_other_bytes(samples):
    da, dc = _digests(samples["a"]), _digests(samples["c"])
    assert da != dc
    shared = set(da) & set(dc)
    for rel in ("train/ms1m.tsv", "lfw/pairs.txt", "ijb/IJBS/meta/ijbs_name_5pts_score.txt"):
        assert da[rel] != dc[rel], rel
    images = [r for r in shared if r.endswith(".jpg")]
    assert sum(da[r] != dc[r] for r in images) > 0.9 * len(images)


def test_summary_and_log(samples):
    s = json.loads((samples["a"] / "summary.json").read_text())
    assert s["stage"] == "sample" and s["seed"] == 0
    assert s["train"]["images"] == s["train"]["tsv_lines"] == len(list((samples["a"] / "train/folder").rglob("*.jpg")))
    assert s["lfw"]["images"] == len(list((samples["a"] / "lfw").rglob("*.jpg")))
    assert s["ijb"]["images"] == len(list((samples["a"] / "ijb/IJBS/loose_crop").glob("*.jpg")))
    assert "summary:" in samples["stderr"].splitlines()[-1]
    # every training view is a face the MS1M detector finds (redraws: test_sample_detectable.py)
    assert s["train"]["views_undetected"] == 0
    assert (samples["cwd"] / "logs" / "sample.log").is_file()
    leftovers = [p.name for p in samples["a"].parent.iterdir() if p.name.startswith(".a.")]
    assert leftovers == []


def test_default_noise_resolves_a_tenth():
    """At least 10 of each training noise kind, so that one miss is a recall of 0.9 or better."""
    nz = load_params([ROOT / "params.yaml"]).sample.noise
    for n in (nz.mislabelled, nz.split_identities, nz.eval_overlap, nz.non_faces, nz.corrupt):
        assert n >= 10
    assert nz.corrupt % 3 == 0  # as many of each fault


def test_overlap_takes_at_most_half_the_probes():
    from arcpipe.errors import PipelineError
    from arcpipe.params.sample import SampleNoiseParams

    a = plan_sample(SampleParams(noise=SampleNoiseParams(eval_overlap=10)))
    assert (len(a.lfw_overlap), len(a.mf_overlap)) == (7, 3)   # 6 probes: 3 stay evaluation identities
    assert set(a.mf_overlap) <= set(a.megaface) and set(a.lfw_overlap) <= set(a.lfw)
    assert len(set(a.lfw_overlap + a.mf_overlap)) == 10 and set(a.lfw_overlap + a.mf_overlap) <= set(a.train)
    assert len(a.split_idx) == 10
    assert not {a.train[i] for i in a.split_idx} & set(a.lfw_overlap + a.mf_overlap)
    b = plan_sample(SampleParams(noise=SampleNoiseParams(eval_overlap=2)))
    assert (len(b.lfw_overlap), len(b.mf_overlap)) == (1, 1)
    with pytest.raises(PipelineError, match="eval_overlap"):
        plan_sample(SampleParams(lfw_identities=4, noise=SampleNoiseParams(eval_overlap=10)))


def test_scale_is_the_size_knob():
    p = SampleParams(scale=2.0)
    q = load_params([ROOT / "params.yaml"]).sample
    assert q.scale == 1.0
    from arcpipe.sample.generate import scaled

    assert scaled(p.identities, p.scale) == 2 * scaled(q.identities, q.scale)


# --- layouts ----------------------------------------------------------------------------------

def test_tsv_is_the_folder(samples, truth):
    root = samples["a"]
    faulty = {it["tsv_line"]: it for it in truth["noise"] if it["kind"] == "corrupt"}
    lines = (root / "train/ms1m.tsv").read_text().splitlines()
    files = sorted((root / "train/folder").rglob("*.jpg"))
    assert len(lines) == len(files)
    for n, (line, f) in enumerate(zip(lines, files), start=1):
        cols = line.split("\t")
        assert len(cols) == 7
        mid, rank, _url, _page, face_id, rect, data = cols
        assert (mid, int(rank)) == (f.parent.name, int(f.stem)) and mid.startswith("m.0") and face_id == "FaceId-0"
        x0, y0, x1, y1 = np.frombuffer(base64.b64decode(rect), "<f4")
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        if n in faulty and faulty[n]["tsv_fault"] == "invalid_base64":
            with pytest.raises(binascii.Error):
                base64.b64decode(data, validate=True)
        else:
            assert base64.b64decode(data, validate=True) == f.read_bytes()


def test_lfw_pairs_official_format(samples):
    root = samples["a"] / "lfw"
    lines = (root / "pairs.txt").read_text().splitlines()
    folds, n = map(int, lines[0].split("\t"))
    assert folds == 10 and len(lines) == 1 + 20 * n
    for f in range(10):
        block = [l.split("\t") for l in lines[1 + 2 * n * f: 1 + 2 * n * (f + 1)]]
        assert all(len(b) == 3 for b in block[:n]) and all(len(b) == 4 for b in block[n:])
        for b in block:
            refs = [(b[0], int(b[1])), (b[0], int(b[2]))] if len(b) == 3 else [(b[0], int(b[1])), (b[2], int(b[3]))]
            if len(b) == 4:
                assert b[0] != b[2]
            for name, i in refs:
                assert (root / name / f"{name}_{i:04d}.jpg").is_file()


def test_ijb_meta_consistent(samples):
    import cv2

    meta = samples["a"] / "ijb/IJBS/meta"
    crops = samples["a"] / "ijb/IJBS/loose_crop"
    tid_mid = [l.split(" ") for l in (meta / "ijbs_face_tid_mid.txt").read_text().splitlines()]
    pts = [l.split(" ") for l in (meta / "ijbs_name_5pts_score.txt").read_text().splitlines()]
    assert [r[0] for r in tid_mid] == [r[0] for r in pts]
    assert sorted(p.name for p in crops.glob("*.jpg")) == sorted(r[0] for r in tid_mid)
    for row in pts[:20]:
        assert len(row) == 12
        img = cv2.imread(str(crops / row[0]))
        lmk = np.array(row[1:11], float).reshape(5, 2)
        h, w = img.shape[:2]
        assert (lmk[:, 0] > 0).all() and (lmk[:, 0] < w).all() and (lmk[:, 1] > 0).all() and (lmk[:, 1] < h).all()
        assert lmk[0, 0] < lmk[1, 0] and lmk[2, 1] < lmk[3, 1]
        assert 0 < float(row[11]) <= 1
    subject = {}
    for name in ("ijbs_1N_gallery_G1.csv", "ijbs_1N_gallery_G2.csv", "ijbs_1N_probe_mixed.csv"):
        text = (meta / name).read_text().splitlines()
        assert text[0].startswith("TEMPLATE_ID,SUBJECT_ID,FILENAME")
        for r in text[1:]:
            tid, sid = int(r.split(",")[0]), int(r.split(",")[1])
            assert subject.setdefault(tid, sid) == sid
    templates = {int(r[1]) for r in tid_mid}
    assert set(subject) == templates
    pairs = [tuple(map(int, l.split(" "))) for l in (meta / "ijbs_template_pair_label.txt").read_text().splitlines()]
    assert pairs and all(lab == int(subject[a] == subject[b]) for a, b, lab in pairs)
    assert {lab for *_, lab in pairs} == {0, 1}


# --- ground truth -----------------------------------------------------------------------------

def _label_key(truth: dict) -> dict[str, str]:
    out = {}
    for key, ident in truth["identities"].items():
        for field in ("train", "train_split"):
            if field in ident["names"]:
                out[ident["names"][field]] = key
    return out


def test_every_noise_kind_is_present(truth, samples):
    p = samples["params"]
    kinds = [it["kind"] for it in truth["noise"]]
    from arcpipe.sample.generate import scaled

    for kind, n in [("mislabelled", p.noise.mislabelled), ("non_face", p.noise.non_faces), ("corrupt", p.noise.corrupt),
                    ("split_identity", p.noise.split_identities), ("eval_overlap", p.noise.eval_overlap),
                    ("megaface_noisy_probe", p.noise.megaface_noisy_probes),
                    ("megaface_noisy_distractor", p.noise.megaface_noisy_distractors)]:
        assert kinds.count(kind) == scaled(n, p.scale), kind


def test_noise_items_are_where_they_say(samples, truth, plan):
    from arcpipe.imageio import decode_image

    root = samples["a"]
    tsv = (root / "train/ms1m.tsv").read_text().splitlines()
    label_key = _label_key(truth)
    for it in truth["noise"]:
        kind = it["kind"]
        if "path" in it:
            data = (root / it["path"]).read_bytes()
            if "recipe" in it:  # the file is exactly the image the recipe (true identity) renders
                assert plan.render(it["recipe"]) == data, it
        if it["part"] == "train" and "tsv_line" in it:
            cols = tsv[it["tsv_line"] - 1].split("\t")
            assert cols[0] == it["filed_identity"] and it["path"] == f"train/folder/{cols[0]}/{int(cols[1]):04d}.jpg"
        if kind == "mislabelled":
            assert Path(it["path"]).parent.name == it["filed_identity"]
            assert label_key[it["filed_identity"]] != it["true_identity"]
            assert label_key[it["true_label"]] == it["true_identity"] == it["recipe"]["identity"]
            assert decode_image(data).ok
        elif kind == "non_face":
            assert it["true_identity"] is None and decode_image(data).ok
            assert it["recipe"]["non_face"] == it["source"]
        elif kind == "corrupt":
            assert not decode_image(data).ok, it
            assert {"empty": len(data) == 0, "truncated": data[:2] == b"\xff\xd8" and data[-2:] != b"\xff\xd9",
                    "garbage": data[:2] != b"\xff\xd8"}[it["corrupt"]]
            field = tsv[it["tsv_line"] - 1].split("\t")[6]
            if it["tsv_fault"] == "empty_field":
                assert field == ""
            elif it["tsv_fault"] == "truncated_jpeg":
                assert base64.b64decode(field) == data
        elif kind == "split_identity":
            first, second = it["labels"]
            assert label_key[first] == label_key[second] == it["true_identity"]
            bases = {truth["identities"][label_key[l]]["base"] for l in (first, second)}
            assert len(bases) == 1
            assert len(it["paths"]) == len(it["recipes"]) == len(it["tsv_lines"]) > 0
            for rel, recipe, line in zip(it["paths"], it["recipes"], it["tsv_lines"]):
                assert Path(rel).parent.name == second
                assert plan.render(recipe) == (root / rel).read_bytes()
                assert tsv[line - 1].split("\t")[0] == second
            assert any((root / "train/folder" / first).iterdir())
        elif kind == "eval_overlap":
            key, name = it["true_identity"], it["eval_name"]
            assert truth["identities"][key]["names"]["train"] == it["filed_identity"]
            if it["eval_set"] == "lfw":
                f = root / "lfw" / name / f"{name}_0001.jpg"
                assert plan.view(key, "lfw", "lfw", 1).jpeg() == f.read_bytes()
            else:
                f = root / "megaface/facescrub" / name / f"{name}_1.jpg"
                assert plan.view(key, "megaface", "facescrub", 1).jpeg() == f.read_bytes()
        elif kind == "megaface_noisy_probe":
            listed = (root / it["list"]).read_text().splitlines()
            assert it["path"].removeprefix("megaface/facescrub/") in listed
            probe_key = next(k for k, v in truth["identities"].items() if v["names"].get("megaface") == it["filed_identity"])
            assert probe_key != it["true_identity"]
        elif kind == "megaface_noisy_distractor":
            listed = (root / it["list"]).read_text().splitlines()
            assert it["path"].removeprefix("megaface/distractors/") in listed
            assert truth["identities"][it["true_identity"]]["names"]["megaface"] == it["probe_name"]
        else:
            pytest.fail(f"unknown noise kind {kind}")


def test_noise_lists_hold_only_recorded_items(samples, truth):
    root = samples["a"]
    recorded = {it["path"] for it in truth["noise"] if it["kind"].startswith("megaface_")}
    listed = {f"megaface/facescrub/{l}" for l in (root / "megaface/facescrub_noises.txt").read_text().splitlines()}
    listed |= {f"megaface/distractors/{l}" for l in (root / "megaface/megaface_noises.txt").read_text().splitlines()}
    assert listed == recorded
    assert all((root / p).is_file() for p in listed)


def _aligned(plan, key: str, n: int, tag: str) -> list[np.ndarray]:
    from arcpipe.align import norm_crop

    out = []
    for i in range(n):
        v = plan.view(key, "lfw", tag, i)
        out.append(norm_crop(v.image, v.landmarks.astype(np.float32), 112))
    return out


def _pixels(crop: np.ndarray) -> np.ndarray:
    """The evaluate stage's pixels baseline, in short: 16x16 grey, mean-centred, unit length."""
    import cv2

    g = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
    f = (g - g.mean()).ravel()
    return f / (np.linalg.norm(f) + 1e-6)


def _nearest(feats: np.ndarray) -> np.ndarray:
    d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return d.argmin(1)


def test_identities_are_distinct_in_pixels(plan):
    """Identities made from different base faces: another view of the same identity is the
    nearest in raw pixels for most images (the faces carry identity; the sample is learnable)."""
    keys = sorted(plan.specs)[:16]
    assert len({plan.base_index[k] for k in keys}) == len(keys)
    feats, labels = [], []
    for k in keys:
        for crop in _aligned(plan, k, 3, "distinct-check"):
            feats.append(_pixels(crop))
            labels.append(k)
    nn = _nearest(np.stack(feats))
    acc = np.mean([labels[j] == labels[i] for i, j in enumerate(nn)])
    assert acc > 0.6, acc


def test_identity_is_not_in_colour(plan):
    """Per-image light and colour vary at least as much as colour differs between identities:
    the mean colour of the face, per channel, spreads more across one identity's photos than the
    identities' average colours spread."""
    keys = sorted(plan.specs)[:16]
    means = np.stack([[c[28:84, 28:84].reshape(-1, 3).mean(0) for c in _aligned(plan, k, 6, "colour-check")]
                      for k in keys])                      # identities x photos x BGR
    within = means.std(axis=1).mean(axis=0)
    between = means.mean(axis=1).std(axis=0)
    assert (within >= between).all(), (within, between)
    assert (within > 20).all(), within


def _same_base_lfw(plan, truth) -> list[tuple[str, str]]:
    by_name = {v["names"]["lfw"]: k for k, v in truth["identities"].items() if "lfw" in v["names"]}
    pairs = sorted({(by_name[a], by_name[b]) for _f, a, _i, b, _j in truth["lfw_same_base_pairs"]})
    return pairs


def test_lfw_has_impostor_pairs_that_share_a_base_face(samples, truth, plan):
    """A share of LFW's mismatched pairs are two identities made from one base photograph; each
    is listed in pairs.txt, in the fold the ground truth says, and counted in the summary."""
    p = samples["params"]
    from arcpipe.sample.generate import scaled

    n = scaled(p.lfw_pairs_per_fold, p.scale)
    lines = (samples["a"] / "lfw/pairs.txt").read_text().splitlines()[1:]
    mismatched = {f + 1: {tuple(l.split("\t")) for l in lines[2 * n * f + n: 2 * n * (f + 1)]} for f in range(10)}
    items = truth["lfw_same_base_pairs"]
    want = 10 * int(round(n * p.lfw_same_base_pairs))   # fewer only in a fold without two such identities
    assert 0.8 * want <= len(items) <= want and want > 0
    s = json.loads((samples["a"] / "summary.json").read_text())
    assert s["lfw"]["same_base_mismatched"] == len(items)
    ids = truth["identities"]
    by_name = {v["names"]["lfw"]: k for k, v in ids.items() if "lfw" in v["names"]}
    for fold, a, i, b, j in items:
        assert (a, str(i), b, str(j)) in mismatched[fold]
        ka, kb = by_name[a], by_name[b]
        assert ka != kb and ids[ka]["base"] == ids[kb]["base"]
        assert truth["specs"][ka]["geometry"] != truth["specs"][kb]["geometry"]
    # the other mismatched pairs are between different base faces
    listed = {(f, *m) for f, ms in mismatched.items() for m in ms}
    named = {(f, a, str(i), b, str(j)) for f, a, i, b, j in items}
    for f, a, i, b, j in listed - named:
        assert ids[by_name[a]]["base"] != ids[by_name[b]]["base"]


def test_same_base_identities_differ_in_geometry(truth, plan):
    """Two identities of one base face look alike in pixels (a pixel match often picks the
    other one) but their face geometry tells them apart: the similarity-normalised landmarks
    of every photo are nearest to another photo of the same identity."""
    from arcpipe.align.transform import similarity_lstsq, transform_points

    pairs = _same_base_lfw(plan, truth)[:8]
    assert len(pairs) >= 4
    keys = [k for pair in pairs for k in pair]
    ref = plan.canonical(keys[0])[1]
    pix, geo, labels = [], [], []
    for k in keys:
        for i in range(5):
            v = plan.view(k, "lfw", "geometry-check", i)
            geo.append(transform_points(v.landmarks, similarity_lstsq(v.landmarks, ref)).ravel())
            labels.append(k)
        pix += [_pixels(c) for c in _aligned(plan, k, 5, "geometry-check")]
    twin = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    nn_geo, nn_pix = _nearest(np.stack(geo)), _nearest(np.stack(pix))
    assert np.mean([labels[j] == labels[i] for i, j in enumerate(nn_geo)]) > 0.95
    wrong = [(i, j) for i, j in enumerate(nn_pix) if labels[j] != labels[i]]
    assert len(wrong) > 0.1 * len(labels)
    assert sum(labels[j] == twin[labels[i]] for i, j in wrong) > 0.4 * len(wrong)


def test_evaluation_base_faces_are_not_training_base_faces(samples, truth):
    p = samples["params"]
    ids = truth["identities"]
    train_bases = {v["base"] for v in ids.values() if "train" in v["names"]}
    overlap = {it["true_identity"] for it in truth["noise"] if it["kind"] == "eval_overlap"}
    for part in ("lfw", "ijb", "megaface"):
        fresh = [k for k, v in ids.items() if part in v["names"] and k not in overlap]
        assert fresh and all(ids[k]["base"] not in train_bases for k in fresh), part
        assert all("train" not in ids[k]["names"] for k in fresh)
    eval_bases = {ids[k]["base"] for k, v in ids.items() if ("lfw" in v["names"] or "ijb" in v["names"]) and k not in overlap}
    assert len(eval_bases) <= p.eval_bases
    # training identities walk through the training base faces: one to a base while there are
    # fewer identities than bases (the default sample's 65: no two look alike), several beyond
    per_base = {}
    for k, v in ids.items():
        if "train" in v["names"]:
            per_base.setdefault(v["base"], []).append(k)
    n_train = sum(len(v) for v in per_base.values())
    assert max(len(v) for v in per_base.values()) - min(len(v) for v in per_base.values()) <= 1
    assert max(len(v) for v in per_base.values()) == 1 or len(per_base) == len(truth["base_faces"]) - p.eval_bases, n_train


# --- params and failure -----------------------------------------------------------------------

def test_params_are_strict(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample:\n  sacle: 2\n")
    with pytest.raises(ParamsError, match="sample.sacle"):
        load_params([ROOT / "params.yaml", bad])
    bad.write_text("sample:\n  lfw_min_images: 6\n  lfw_max_images: 4\n")
    with pytest.raises(ParamsError, match="lfw_max_images"):
        load_params([ROOT / "params.yaml", bad])


def test_impossible_request_leaves_no_output(tmp_path):
    out = tmp_path / "out"
    pfile = _params_file(tmp_path / "p.yaml", out, lfw_pairs_per_fold=500)
    from arcpipe.stages import main

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main("sample", ["--params", str(pfile)])
    finally:
        os.chdir(cwd)
    assert rc == 2
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_the_stage_took_its_photos_from_the_download_stage(samples):
    assert "photos: 9 files from " in samples["stderr"] and "the download stage's, checksummed" in samples["stderr"]


def test_photos_listed_but_not_downloaded_or_half_listed_are_one_line(tmp_path):
    out = tmp_path / "out"
    section = _repo_download(tmp_path / "dl")
    runs = {
        "missing": (section, r"photo_t1/t1\.jpg is missing: run the download stage first"),
        "half": ({**section, "datasets": {"photo_t1": section["datasets"]["photo_t1"]}},
                 r"lists some of the sample's photos but not photo_tom_hanks"),
    }
    for what, (download, message) in runs.items():
        pfile = _params_file(tmp_path / f"{what}.yaml", out, download=download)
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), "--params", str(pfile)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and re.search(message, r.stderr), (what, r.stderr[-1500:])
        assert not out.exists(), what
