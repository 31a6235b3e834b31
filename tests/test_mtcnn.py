"""Our MTCNN on real photographs shipped with pip packages (insightface, scikit-image, matplotlib).

Ground truth for warped copies = our detection on the original, mapped through the known warp.
The comparison with facenet-pytorch itself needs a side venv (.venv-fnp, which `make test` builds)
and lives in test_reference_parity below (it skips without that venv, and fails under CI=true) and
in benchmarks/bench_detect.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from arcpipe.fsutil import sha256_file

from arcpipe.detect import MTCNN, Detections, choose_face, face_choice_scores, keep_face, preset_for
from arcpipe.detect import weights as W
from arcpipe.photos import all_photos
from arcpipe.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]

try:
    W.find_weights_dir()
    HAVE_WEIGHTS = True
except PipelineError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="MTCNN weights absent: pip install --no-deps facenet-pytorch==2.6.0")


@pytest.fixture(scope="module")
def photos():
    return all_photos()


@pytest.fixture(scope="module")
def lfw_mtcnn():
    p = preset_for("lfw")
    return MTCNN(minsize=p.minsize, thresholds=p.thresholds, factor=p.factor)


@pytest.fixture(scope="module")
def originals(photos, lfw_mtcnn):
    return dict(zip(photos, lfw_mtcnn.detect(list(photos.values()))))


def _iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[0] - lm[1]))


# --- weights --------------------------------------------------------------------------------


@needs_weights
def test_weights_are_the_pinned_files():
    d = W.find_weights_dir()
    for name in W.NETS:
        assert sha256_file(d / f"{name}.pt") == W.SHA256[name]


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(PipelineError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        W.load_state_dicts(tmp_path)


@needs_weights
def test_tampered_weights_are_refused(tmp_path):
    d = W.find_weights_dir()
    for name in W.NETS:
        shutil.copy(d / f"{name}.pt", tmp_path / f"{name}.pt")
    data = bytearray((tmp_path / "rnet.pt").read_bytes())
    data[-100] ^= 1
    (tmp_path / "rnet.pt").write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"rnet\.pt: sha256"):
        W.load_state_dicts(tmp_path)


@needs_weights
def test_weights_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path))
    with pytest.raises(PipelineError, match=str(tmp_path)):
        W.find_weights_dir()


# --- detection on real photos ---------------------------------------------------------------


def _check_geometry(d: Detections, shape) -> None:
    h, w = shape[:2]
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.landmarks.dtype == np.float32
    assert d.boxes.shape == (len(d), 4) and d.landmarks.shape == (len(d), 5, 2)
    assert np.all(np.diff(d.scores) <= 0), "faces are ordered by descending score"
    for box, lm in zip(d.boxes, d.landmarks):
        x1, y1, x2, y2 = box
        assert x2 > x1 and y2 > y1
        assert np.all((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)), "landmarks inside the box"
        # upright faces: eyes above nose above mouth; image-left eye/mouth corner first
        assert lm[0, 1] < lm[2, 1] < lm[3, 1] and lm[1, 1] < lm[2, 1] < lm[4, 1]
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert -0.5 * (x2 - x1) < x1 and x2 < w + 0.5 * (x2 - x1)


@needs_weights
def test_group_photo_has_six_faces(photos, originals):
    d = originals["t1"]
    assert len(d) == 6
    assert d.scores.min() > 0.9
    _check_geometry(d, photos["t1"].shape)
    # six different people: no two boxes overlap
    b = d.boxes
    for i in range(6):
        for j in range(i + 1, 6):
            iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
            ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
            assert iw <= 0 or ih <= 0


@needs_weights
@pytest.mark.parametrize("name", ["tom_hanks", "astronaut", "grace_hopper"])
def test_portraits_have_one_face(photos, originals, name):
    d = originals[name]
    assert len(d) == 1 and d.scores[0] > 0.95
    _check_geometry(d, photos[name].shape)
    side = d.boxes[0, 2] - d.boxes[0, 0]
    assert 0.3 * side < _iod(d.landmarks[0]) < 0.7 * side


def _warp(img: np.ndarray, angle: float, scale: float, flip: bool):
    """Rotate/scale (and mirror) about the centre onto a canvas that holds the whole result."""
    h, w = img.shape[:2]
    M = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    if flip:
        M = M @ np.array([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]], float)
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float) @ M[:, :2].T + M[:, 2]
    lo, hi = corners.min(0), corners.max(0)
    M[:, 2] -= lo - 8
    size = tuple(int(v) for v in np.ceil(hi - lo + 16))
    return cv2.warpAffine(img, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), M


WARPS = [(7.0, 0.9, False), (-9.0, 1.15, False), (0.0, 1.0, True), (5.0, 1.05, True)]


@needs_weights
@pytest.mark.parametrize("angle,scale,flip", WARPS)
def test_warped_copies_find_every_face_with_landmarks(photos, originals, lfw_mtcnn, angle, scale, flip):
    names = list(photos)
    warped = [_warp(photos[n], angle, scale, flip) for n in names]
    dets = lfw_mtcnn.detect([wi for wi, _ in warped])
    for name, (wi, M), d in zip(names, warped, dets):
        gt = originals[name].landmarks @ M[:, :2].T + M[:, 2]
        if flip:  # mirrored: the image-left eye is now the other eye
            gt = gt[:, [1, 0, 2, 4, 3]]
        assert len(d) >= len(gt)
        for g in gt:
            err = np.linalg.norm(d.landmarks - g[None], axis=2)  # (N, 5)
            j = int(err.mean(1).argmin())
            iod = _iod(g)
            assert err[j].mean() <= 0.1 * iod + 1.5, (name, err[j], iod)
            assert err[j].max() <= 0.25 * iod + 2.0, (name, err[j], iod)


@needs_weights
def test_batching_gives_the_same_result_as_one_by_one(photos, lfw_mtcnn):
    rng = np.random.default_rng(1)
    imgs = list(photos.values())
    # several sizes, some repeated, so that P-Net sees both stacked and padded levels
    imgs += [cv2.resize(imgs[2], (300, 260)), cv2.resize(imgs[3], (250, 250)), cv2.resize(imgs[3], (250, 250))[:, ::-1].copy()]
    imgs += [rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)]
    batch = lfw_mtcnn.detect(imgs)
    for img, db in zip(imgs, batch):
        d1 = lfw_mtcnn.detect_one(img)
        assert len(d1) == len(db)
        np.testing.assert_allclose(db.boxes, d1.boxes, atol=1e-3)
        np.testing.assert_allclose(db.landmarks, d1.landmarks, atol=1e-3)
        np.testing.assert_allclose(db.scores, d1.scores, atol=1e-5)


@needs_weights
def test_deterministic(photos, originals, lfw_mtcnn):
    again = lfw_mtcnn.detect(list(photos.values()))
    for name, d in zip(photos, again):
        np.testing.assert_array_equal(d.boxes, originals[name].boxes)
        np.testing.assert_array_equal(d.landmarks, originals[name].landmarks)


@needs_weights
@pytest.mark.parametrize("minsize", [20, "fifth"])
def test_tiny_images_give_no_faces(minsize):
    m = MTCNN(minsize=minsize)
    shapes = [(1, 1), (2, 3), (11, 11), (12, 12), (19, 40), (5, 300)]
    imgs = [np.full(s + (3,), 128, np.uint8) for s in shapes]
    for d in m.detect(imgs):
        assert len(d) == 0 and d.boxes.shape == (0, 4) and d.landmarks.shape == (0, 5, 2)
    assert m.detect([]) == []


@needs_weights
def test_faces_smaller_than_minsize_are_not_searched(photos):
    img = photos["astronaut"]
    assert len(MTCNN(minsize=20).detect_one(img)) == 1
    # the astronaut's face is about 90 px wide; at minsize 400 the pyramid starts below it
    assert len(MTCNN(minsize=400).detect_one(img)) == 0


@needs_weights
def test_bad_input_is_refused():
    m = MTCNN()
    with pytest.raises(ValueError, match="image 1"):
        m.detect([np.zeros((30, 30, 3), np.uint8), np.zeros((30, 30), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        m.detect_one(np.zeros((30, 30, 3), np.float32))


# --- the face-choice rule -------------------------------------------------------------------


def test_choose_face_rule_by_hand():
    shape = (200, 300, 3)  # centre (150, 100)
    boxes = np.array([
        [130, 80, 170, 120],  # 40x40 at the centre: 1600
        [0, 0, 100, 100],  # 100x100, centre (50, 50): 10000 - 2*(100^2 + 50^2) = -15000
        [140, 60, 200, 120],  # 60x60, centre (170, 90): 3600 - 2*(400 + 100) = 2600
    ], np.float32)
    d = Detections(boxes, np.array([0.99, 0.98, 0.97], np.float32), np.zeros((3, 5, 2), np.float32))
    np.testing.assert_allclose(face_choice_scores(boxes, shape), [1600, -15000, 2600])
    assert choose_face(d, shape) == 2
    assert choose_face(Detections.empty(), shape) is None
    # kept: the chosen face (not the best-scoring one) must reach the score
    assert keep_face(d, shape, 0.97) == (2, True)
    assert keep_face(d, shape, 0.975) == (2, False)
    assert keep_face(Detections.empty(), shape, 0.5) == (None, False)


@needs_weights
def test_choose_face_on_group_photo(photos, originals):
    img, d = photos["t1"], originals["t1"]
    h, w = img.shape[:2]
    best = max(range(len(d)), key=lambda i: (d.boxes[i, 2] - d.boxes[i, 0]) * (d.boxes[i, 3] - d.boxes[i, 1])
               - 2 * (((d.boxes[i, 0] + d.boxes[i, 2]) / 2 - w / 2) ** 2 + ((d.boxes[i, 1] + d.boxes[i, 3]) / 2 - h / 2) ** 2))
    assert choose_face(d, img.shape) == best
    # crop around another face: the rule now prefers that one
    other = (best + 1) % len(d)
    x1, y1, x2, y2 = d.boxes[other].astype(int)
    pad = (x2 - x1)
    crop = img[max(y1 - pad, 0):y2 + pad, max(x1 - pad, 0):x2 + pad]
    dc = MTCNN(minsize=20, thresholds=(0.6, 0.7, 0.9), factor=0.85).detect_one(np.ascontiguousarray(crop))
    k = choose_face(dc, crop.shape)
    cx, cy = (dc.boxes[k, 0] + dc.boxes[k, 2]) / 2, (dc.boxes[k, 1] + dc.boxes[k, 3]) / 2
    assert abs(cx - crop.shape[1] / 2) < pad and abs(cy - crop.shape[0] / 2) < pad


# --- parity with facenet-pytorch (side venv .venv-fnp; skipped when absent, failed under CI) ---


REF_PYTHON = os.environ.get("ARCPIPE_FNP_PYTHON") or str(REPO / ".venv-fnp" / "bin" / "python")


@pytest.mark.reference
@needs_weights
@pytest.mark.skipif(not Path(REF_PYTHON).is_file(),
                    reason=f"facenet-pytorch reference venv not found: no python at {REF_PYTHON} "
                           "(build it with `make fnp-ref`, or set ARCPIPE_FNP_PYTHON)")
def test_reference_parity(photos, tmp_path):
    imgs = list(photos.values()) + [_warp(photos["t1"], 6.0, 0.8, True)[0]]
    np.savez(tmp_path / "in.npz", **{f"img{i:04d}": im for i, im in enumerate(imgs)})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    total = 0
    for ms, th, f in [(20, (0.6, 0.7, 0.9), 0.85), (20, (0.6, 0.7, 0.8), 0.709)]:
        proc = subprocess.run([REF_PYTHON, str(REPO / "benchmarks/reference/fnp_detect.py"), "--images", str(tmp_path / "in.npz"),
                               "--out", str(tmp_path / "out.npz"), "--minsize", str(ms), "--thresholds", *map(str, th),
                               "--factor", str(f), "--warmup", "0", "--threads", "1"],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, f"facenet-pytorch side failed:\n{proc.stderr[-3000:]}"
        ref = np.load(tmp_path / "out.npz")
        assert str(ref["reference"]) == "facenet-pytorch 2.6.0"
        ours = MTCNN(minsize=ms, thresholds=th, factor=f).detect(imgs)
        assert len(ref["counts"]) == len(imgs) == len(ours)
        off = 0
        for d, c in zip(ours, ref["counts"]):
            rb, rl = ref["boxes"][off:off + c], ref["landmarks"][off:off + c]
            off += c
            assert len(d) == c
            for box, lm in zip(d.boxes, d.landmarks):
                j = int(np.abs(rb - box).max(1).argmin())
                assert np.abs(rb[j] - box).max() < 1.0 and np.abs(rl[j] - lm).max() < 1.0
        total += off
    assert total > len(imgs)  # faces were found: the comparison is not vacuous


# --- building blocks against plain implementations ------------------------------------------


def _greedy_nms_loop(boxes, scores, groups, thr, mode):
    """Textbook greedy NMS, one box at a time (float64 numpy)."""
    b = boxes.astype(np.float64)
    one = 1.0 if mode == "min" else 0.0
    area = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    keep = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        alive = list(idx)
        while alive:
            i = alive.pop(0)
            keep.append(i)
            rest = np.array(alive, dtype=int)
            if rest.size == 0:
                break
            iw = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]) + one, 0, None)
            ih = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]) + one, 0, None)
            inter = iw * ih
            ov = inter / np.minimum(area[i], area[rest]) if mode == "min" else inter / (area[i] + area[rest] - inter)
            alive = [j for j, o in zip(rest, ov) if o <= thr]
    return sorted(keep)


@pytest.mark.parametrize("mode,thr", [("union", 0.5), ("union", 0.7), ("min", 0.7)])
def test_vectorised_nms_equals_the_greedy_loop(mode, thr):
    import torch

    from arcpipe.detect import nms as N

    rng = np.random.default_rng(3)
    n = 600
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(10, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    # a row of boxes shifted by 2 px: a long suppression chain (exercises the exact fallback)
    chain = np.array([[2 * i, 0, 2 * i + 12, 12] for i in range(60)], np.float32)
    boxes = np.concatenate([boxes, chain])
    scores = rng.uniform(size=len(boxes)).astype(np.float32)
    scores[n:] = np.linspace(0.9, 0.1, 60)
    groups = rng.integers(0, 5, len(boxes))
    groups[n:] = 7
    got = N.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), thr, mode).numpy()
    assert sorted(got.tolist()) == _greedy_nms_loop(boxes, scores, groups, thr, mode)
    # order: by group, then descending score
    assert np.all(np.diff(groups[got]) >= 0)
    same = np.diff(groups[got]) == 0
    assert np.all(np.diff(scores[got])[same] <= 0)
    # the one-box-at-a-time path used for huge groups agrees too
    sel = groups == groups[0]
    order = np.argsort(-scores[sel], kind="stable")
    loop = N._greedy_loop(torch.from_numpy(boxes[sel][order]), thr, mode).numpy()
    ref = _greedy_nms_loop(boxes[sel], scores[sel], np.zeros(sel.sum(), int), thr, mode)
    assert sorted(np.flatnonzero(sel)[order][loop].tolist()) == sorted(np.flatnonzero(sel)[ref].tolist())


def test_area_resampling_equals_adaptive_average_pooling():
    """Pyramid levels and crops from summed-area tables = torch's "area" interpolation, which is
    what the reference resizes with."""
    import torch
    import torch.nn.functional as F

    from arcpipe.detect.mtcnn import _Integral

    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(57, 83), (57, 83), (40, 31)]]
    integral = _Integral([torch.from_numpy(i) for i in imgs], torch.device("cpu"))
    norm = lambda t: (t - 127.5) * 0.0078125
    for g, (h, w, idx, _) in enumerate(integral.groups):
        for oh, ow in [(h, w), (30, 41), (12, 12), (h + 9, w + 3)]:
            ours = integral.level(g, oh, ow)
            for j, k in enumerate(idx.tolist()):
                ref = F.interpolate(torch.from_numpy(imgs[k]).permute(2, 0, 1)[None].float(), size=(oh, ow), mode="area")
                torch.testing.assert_close(ours[j], norm(ref[0].permute(1, 2, 0)), atol=1e-6, rtol=0)
    # crops: [y0, y1) x [x0, x1) of image k, to 24x24, as the reference's per-box resize
    boxes = [(0, 0, 0, 83, 57), (1, 5, 7, 30, 20), (2, 3, 4, 31, 40), (0, 70, 50, 83, 57)]
    k, x0, y0, x1, y1 = (torch.tensor(v) for v in zip(*boxes))
    ours = integral.crops(k, x0, y0, x1, y1, 24)
    for n, (kk, a0, b0, a1, b1) in enumerate(boxes):
        src = torch.from_numpy(imgs[kk][b0:b1, a0:a1]).permute(2, 0, 1)[None].float()
        ref = F.interpolate(src, size=(24, 24), mode="area")[0].permute(1, 2, 0)
        torch.testing.assert_close(ours[n], norm(ref), atol=1e-6, rtol=0)


@needs_weights
def test_padded_pnet_batch_equals_unpadded_levels():
    import torch

    from arcpipe.detect.mtcnn import _pnet_out_size

    m = MTCNN(optimize=False)
    rng = np.random.default_rng(5)
    sizes = [(31, 40), (28, 27), (23, 33)]  # odd and even conv1 extents
    levels = [torch.from_numpy(rng.normal(size=(1, 3) + s).astype(np.float32)) for s in sizes]
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    x = torch.zeros(len(sizes), 3, H, W)
    mask = torch.ones(len(sizes), 1, H - 2, W - 2, dtype=torch.bool)
    for i, ((h, w), lv) in enumerate(zip(sizes, levels)):
        x[i, :, :h, :w] = lv[0]
        mask[i, :, :h - 2, :w - 2] = False
    with torch.no_grad():
        padded = m._pnet_masked(x, mask)
        for i, ((h, w), lv) in enumerate(zip(sizes, levels)):
            alone = m.pnet(lv)[0]
            oh, ow = _pnet_out_size(h), _pnet_out_size(w)
            assert alone.shape[1:] == (oh, ow)
            torch.testing.assert_close(padded[i, :, :oh, :ow], alone, atol=1e-5, rtol=1e-5)


def test_area_resampling_in_row_blocks_and_float64_tables():
    """Images over 65,793 px get float64 summed-area tables; large levels are resampled in
    several blocks of rows. Both must still equal torch's "area" interpolation."""
    import torch
    import torch.nn.functional as F

    from arcpipe.detect.mtcnn import _Integral

    rng = np.random.default_rng(6)
    imgs = [rng.integers(0, 256, (301, 262, 3), dtype=np.uint8) for _ in range(2)]
    integral = _Integral([torch.from_numpy(i) for i in imgs], torch.device("cpu"))
    assert integral.dtype == torch.float64
    norm = lambda t: (t - 127.5) * 0.0078125
    (h, w, idx, _), = integral.groups
    for oh, ow in [(290, 250), (177, 131), (13, 12)]:  # 290 rows of 250 take several blocks
        ours = integral.level(0, oh, ow)
        for j, k in enumerate(idx.tolist()):
            src = torch.from_numpy(imgs[k]).permute(2, 0, 1)[None].double()
            ref = F.interpolate(src, size=(oh, ow), mode="area")[0].permute(1, 2, 0)
            torch.testing.assert_close(ours[j].double(), norm(ref), atol=2e-6, rtol=0)
    boxes = [(0, 0, 0, 262, 301), (1, 17, 9, 250, 300), (1, 100, 120, 107, 128)]
    k, x0, y0, x1, y1 = (torch.tensor(v) for v in zip(*boxes))
    for size in (24, 48):
        ours = integral.crops(k, x0, y0, x1, y1, size)
        for n, (kk, a0, b0, a1, b1) in enumerate(boxes):
            src = torch.from_numpy(imgs[kk][b0:b1, a0:a1]).permute(2, 0, 1)[None].double()
            ref = F.interpolate(src, size=(size, size), mode="area")[0].permute(1, 2, 0)
            torch.testing.assert_close(ours[n].double(), norm(ref), atol=2e-6, rtol=0)
