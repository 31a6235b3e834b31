"""Five-point alignment: closed-form similarity, template scaling, parity with insightface."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from arcpipe import align


def _photos() -> list[np.ndarray]:
    """Real photographs (RGB uint8) that ship with the installed packages."""
    out = []
    try:
        import skimage.data

        out.append(skimage.data.astronaut())
        out.append(skimage.data.chelsea())
    except Exception:  # pragma: no cover - scikit-image is a dependency
        pass
    try:
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if p.exists():
            out.append(cv2.imread(str(p))[:, :, ::-1].copy())
    except Exception:  # pragma: no cover
        pass
    try:
        import insightface

        p = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
        if p.exists():
            out.append(cv2.imread(str(p))[:, :, ::-1].copy())
    except Exception:
        pass
    assert out, "no real photograph found in the installed packages"
    return out


def _face_landmarks(rng: np.random.Generator, shape) -> np.ndarray:
    """A plausible face: the template rotated, scaled, moved, each point jittered."""
    h, w = shape[:2]
    t = align.template(112) - 56.0
    ang = rng.uniform(-0.6, 0.6)
    s = rng.uniform(0.3, 1.5) * min(h, w) / 112
    R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    c = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
    return (t @ R.T) * s + c + rng.normal(0, 2.0, (5, 2))


def test_template_matches_published_points_and_scales():
    t = align.template(112)
    assert np.allclose(t[0], [38.2946, 51.6963], atol=1e-4)
    assert np.allclose(t[4], [70.7299, 92.2041], atol=1e-4)
    assert np.allclose(align.template(224), t * 2, atol=1e-4)
    t128 = align.template(128)
    assert np.allclose(t128[:, 0], t[:, 0] + 8, atol=1e-4) and np.allclose(t128[:, 1], t[:, 1], atol=1e-4)
    assert np.allclose(align.template(256)[:, 0], (t[:, 0] + 8) * 2, atol=1e-4)
    for bad in (0, 100, 113, -112):
        with pytest.raises(ValueError):
            align.template(bad)


def test_exact_similarity_is_recovered():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ang, s = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5)
        t = rng.uniform(-100, 100, 2)
        src = rng.uniform(0, 500, (5, 2))
        M = np.array([[s * np.cos(ang), -s * np.sin(ang), t[0]], [s * np.sin(ang), s * np.cos(ang), t[1]]])
        dst = align.transform_points(src, M)
        assert np.allclose(align.similarity_lstsq(src, dst), M, atol=1e-9)
    # landmarks that already sit on the template give the identity
    assert np.allclose(align.estimate_norm(align.template(112)), [[1, 0, 0], [0, 1, 0]], atol=1e-6)


def test_least_squares_optimum_and_batch_agree():
    rng = np.random.default_rng(1)
    lmks = np.stack([_face_landmarks(rng, (400, 400)) for _ in range(50)])
    Ms = align.estimate_norm_batch(lmks, 112)
    for lm, Mb in zip(lmks, Ms):
        M = align.estimate_norm(lm, 112)
        assert np.allclose(M, Mb, atol=1e-9)
        # perturbing the parameters never lowers the squared error (it is the optimum)
        err = ((align.transform_points(lm, M) - align.template(112)) ** 2).sum()
        for d in np.eye(4) * 1e-3:
            a, b, tx, ty = M[0, 0] + d[0], M[1, 0] + d[1], M[0, 2] + d[2], M[1, 2] + d[3]
            M2 = np.array([[a, -b, tx], [b, a, ty]])
            assert ((align.transform_points(lm, M2) - align.template(112)) ** 2).sum() >= err


def test_degenerate_landmarks_raise():
    with pytest.raises(ValueError):
        align.estimate_norm(np.ones((5, 2)) * 7)
    with pytest.raises(ValueError):
        align.estimate_norm(np.full((5, 2), np.nan))
    with pytest.raises(ValueError):
        align.estimate_norm(np.zeros((4, 2)))
    assert np.isnan(align.estimate_norm_batch(np.ones((1, 5, 2)))).all()


def test_fast_warp_equals_plain_warpaffine():
    """The region-cut 4-channel path gives the pixels of cv2.warpAffine on the whole image."""
    rng = np.random.default_rng(2)
    for img in _photos():
        for size in (112, 224, 128):
            for _ in range(15):
                lm = _face_landmarks(rng, img.shape)
                if rng.random() < 0.3:  # faces partly or wholly off the image edge
                    lm += rng.choice([-1, 1], 2) * rng.uniform(0.3, 1.2) * np.array(img.shape[1::-1])
                M = align.estimate_norm(lm, size)
                ref = cv2.warpAffine(img, M, (size, size), borderValue=0.0)
                ours = align.warp(img, M, size)
                assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
                assert np.abs(ours.astype(int) - ref).max() <= 1


def test_norm_crop_puts_landmarks_on_template():
    img = _photos()[0]
    rng = np.random.default_rng(3)
    lm = _face_landmarks(rng, img.shape)
    M = align.estimate_norm(lm, 112)
    # draw dots at the landmarks; after warping they land near the template points
    marked = np.zeros(img.shape[:2], np.uint8)
    for x, y in lm:
        cv2.circle(marked, (int(round(x)), int(round(y))), 2, 255, -1)
    warped = align.warp(np.dstack([marked] * 3), M, 112)[:, :, 0]
    for tx, ty in align.template(112):
        y0, x0 = int(ty) - 6, int(tx) - 6
        patch = warped[max(y0, 0):y0 + 13, max(x0, 0):x0 + 13]
        assert patch.max() > 0


@pytest.mark.parametrize("size", [112, 224, 128, 256])
def test_matches_insightface_norm_crop_on_real_photos(size):
    fa = pytest.importorskip("insightface.utils.face_align", reason="insightface not installed (reference only)")
    rng = np.random.default_rng(size)
    n = 0
    for img in _photos():
        for _ in range(12):
            lm = _face_landmarks(rng, img.shape).astype(np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = fa.norm_crop(img, lm, image_size=size)
            ours = align.norm_crop(img, lm, image_size=size)
            assert ours.shape == ref.shape
            assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1
            n += 1
    assert n >= 24
