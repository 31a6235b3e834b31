"""Five-point similarity alignment to the ArcFace template.

The transform is the least-squares similarity (rotation, uniform scale, translation; no
reflection) that maps the five landmarks onto the template, the same solution Umeyama's method
gives. In 2-D it has a closed form: with centred points p = (x, y) and q = (u, v),

    a = sum(x*u + y*v) / sum(x^2 + y^2),   b = sum(x*v - y*u) / sum(x^2 + y^2)
    M = [[a, -b, tx], [b, a, ty]]

so there is no SVD to run; for five points this is a handful of float operations. The warp is
cv2.warpAffine, bilinear, constant border 0, as the reference pipeline uses.
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

# Left eye, right eye, nose tip, left mouth corner, right mouth corner, for 112x112.
# Stored as the float32 values the reference uses, so scaled templates round identically.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def check_size(image_size: int) -> int:
    if not isinstance(image_size, (int, np.integer)) or image_size <= 0 or (image_size % 112 and image_size % 128):
        raise ValueError(f"image_size {image_size!r}: must be a positive multiple of 112 or 128")
    return int(image_size)


@lru_cache(maxsize=16)
def _template(image_size: int) -> tuple[tuple[float, ...], tuple[float, ...], float, float]:
    """Template for `image_size`: centred x's, centred y's and the centroid (all Python floats)."""
    check_size(image_size)
    if image_size % 112 == 0:
        ratio, shift_x = np.float32(image_size / 112.0), 0.0
    else:  # multiples of 128: scaled and shifted right by 8 * ratio, as the reference does
        ratio, shift_x = np.float32(image_size / 128.0), 8.0 * float(image_size / 128.0)
    dst = (ARCFACE_TEMPLATE * ratio).astype(np.float32)  # float32 product, like the reference
    dst = dst.astype(np.float64)
    dst[:, 0] = (dst[:, 0].astype(np.float32) + np.float32(shift_x)).astype(np.float64)
    mu, mv = float(dst[:, 0].mean()), float(dst[:, 1].mean())
    return tuple((dst[:, 0] - mu).tolist()), tuple((dst[:, 1] - mv).tolist()), mu, mv


def template(image_size: int = 112) -> np.ndarray:
    """The five template points (5, 2) float64 for an output of `image_size` pixels."""
    us, vs, mu, mv = _template(check_size(image_size))
    return np.stack([np.array(us) + mu, np.array(vs) + mv], axis=1)


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (no reflection) mapping src (N,2) onto dst (N,2): a 2x3 float64 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (N,2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    sc = src - src.mean(axis=0)
    dc = dst - dst.mean(axis=0)
    s = float((sc**2).sum())
    if not np.isfinite(s) or s <= 1e-12:
        raise ValueError("degenerate points: all source points coincide or are not finite")
    a = float((sc[:, 0] * dc[:, 0] + sc[:, 1] * dc[:, 1]).sum()) / s
    b = float((sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum()) / s
    mx, my = src.mean(axis=0)
    mu, mv = dst.mean(axis=0)
    return np.array([[a, -b, mu - (a * mx - b * my)], [b, a, mv - (b * mx + a * my)]], dtype=np.float64)


def estimate_norm(lmk: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 matrix taking five landmarks (5,2) onto the ArcFace template for `image_size`."""
    us, vs, mu, mv = _template(check_size(image_size))
    pts = lmk.tolist() if isinstance(lmk, np.ndarray) else lmk
    if len(pts) != 5 or any(len(p) != 2 for p in pts):
        raise ValueError(f"expected five landmarks of shape (5, 2), got {np.shape(lmk)}")
    (x0, y0), (x1, y1), (x2, y2), (x3, y3), (x4, y4) = pts
    xs = (x0, x1, x2, x3, x4)
    ys = (y0, y1, y2, y3, y4)
    mx = (x0 + x1 + x2 + x3 + x4) / 5.0
    my = (y0 + y1 + y2 + y3 + y4) / 5.0
    s = num_a = num_b = 0.0
    for x, y, u, v in zip(xs, ys, us, vs):
        x -= mx
        y -= my
        s += x * x + y * y
        num_a += x * u + y * v
        num_b += x * v - y * u
    if not s > 1e-12 or s != s or s == float("inf"):
        raise ValueError("degenerate landmarks: the five points coincide or are not finite")
    a = num_a / s
    b = num_b / s
    return np.array([[a, -b, mu - (a * mx - b * my)], [b, a, mv - (b * mx + a * my)]], dtype=np.float64)


def estimate_norm_batch(lmks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Vectorised estimate_norm for (N,5,2) landmarks -> (N,2,3); degenerate rows come back NaN."""
    us, vs, mu, mv = _template(check_size(image_size))
    p = np.asarray(lmks, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise ValueError(f"expected landmarks of shape (N, 5, 2), got {p.shape}")
    m = p.mean(axis=1)
    c = p - m[:, None, :]
    u = np.asarray(us)
    v = np.asarray(vs)
    s = (c**2).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(s > 1e-12, s, np.nan)
        a = (c[:, :, 0] * u + c[:, :, 1] * v).sum(axis=1) / s
        b = (c[:, :, 0] * v - c[:, :, 1] * u).sum(axis=1) / s
    out = np.empty((p.shape[0], 2, 3), dtype=np.float64)
    out[:, 0, 0] = a
    out[:, 0, 1] = -b
    out[:, 0, 2] = mu - (a * m[:, 0] - b * m[:, 1])
    out[:, 1, 0] = b
    out[:, 1, 1] = a
    out[:, 1, 2] = mv - (b * m[:, 0] + a * m[:, 1])
    return out


def warp(img: np.ndarray, M: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Apply a 2x3 matrix: bilinear, constant border 0, output image_size x image_size.

    The pixels of cv2.warpAffine on the whole image, to one grey level. For a 3-channel uint8
    image it warps only the region the output reads, as 4 channels: OpenCV's 4-channel bilinear
    kernel is faster than its 3-channel one (here 41 against 53 us a 112 crop, conversions
    included), and cutting the region first keeps the channel conversion small. The samples it
    reads lie inside the region and outside the image both see the border value 0; the two
    kernels round a few pixels differently (about one crop in three has 1 to 6 pixels one grey
    level apart; tests check the bound).
    """
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        a, b = float(M[0, 0]), float(M[1, 0])
        if M[0, 1] == -b and M[1, 1] == a:  # a similarity: cheap exact inverse
            roi = _source_region(M, a, b, image_size, img.shape[0], img.shape[1])
            if roi is not None:
                x0, y0, x1, y1 = roi
                if (x1 - x0) * (y1 - y0) <= _ROI_MAX_RATIO * image_size * image_size:
                    src = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2RGBA)
                    M2 = np.array(M, dtype=np.float64)
                    M2[0, 2] += a * x0 - b * y0
                    M2[1, 2] += b * x0 + a * y0
                    out = cv2.warpAffine(src, M2, (image_size, image_size), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
                    return cv2.cvtColor(out, cv2.COLOR_RGBA2RGB)
    return cv2.warpAffine(img, M, (image_size, image_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


# Beyond this many source pixels per output pixel the channel conversion costs more than it saves.
_ROI_MAX_RATIO = 6


def _source_region(M, a: float, b: float, size: int, h: int, w: int):
    """Integer box (x0, y0, x1, y1) of source pixels the warp can read, clipped to the image.

    None when the output reads no image pixel at all (or the matrix is singular); then the
    plain warp handles it.
    """
    det = a * a + b * b
    if not det > 0:
        return None
    tx, ty = float(M[0, 2]), float(M[1, 2])
    # the inverse of [[a, -b], [b, a]] is [[a, b], [-b, a]] / det; over the output's corners
    # (u, v) in {0, size}^2 each source coordinate is a sum of a u term and a v term, so its
    # extremes are the sums of the terms' extremes
    ax, bx = a * size / det, b * size / det
    cx = -(a * tx + b * ty) / det
    cy = (b * tx - a * ty) / det
    x0 = max(math.floor(cx + min(ax, 0.0) + min(bx, 0.0)) - 2, 0)
    x1 = min(math.ceil(cx + max(ax, 0.0) + max(bx, 0.0)) + 3, w)
    y0 = max(math.floor(cy + min(-bx, 0.0) + min(ax, 0.0)) - 2, 0)
    y1 = min(math.ceil(cy + max(-bx, 0.0) + max(ax, 0.0)) + 3, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def source_rows(M: np.ndarray, image_size: int = 112) -> int | None:
    """How many of the source image's top rows a warp by the similarity M reads: the rows
    [0, n) hold every pixel `warp` samples (None when M is no similarity or is singular)."""
    a, b = float(M[0, 0]), float(M[1, 0])
    if not (M[0, 1] == -b and M[1, 1] == a) or not np.isfinite(M).all():
        return None
    big = 1 << 30
    roi = _source_region(M, a, b, image_size, big, big)
    return None if roi is None else roi[3]


def norm_crop(img: np.ndarray, landmarks5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """The aligned face: `img` warped so its five landmarks land on the template."""
    return warp(img, estimate_norm(landmarks5, image_size), image_size)


def transform_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix to points (..., 2)."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ M[:, :2].T + M[:, 2]


def landmarks68_to_5(pts68: np.ndarray) -> np.ndarray:
    """68-point (iBUG) landmarks to the five alignment points: eye centres, nose tip, mouth corners."""
    p = np.asarray(pts68, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {p.shape}")
    return np.stack([(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]])


def box_rows(box, margin: float = 0.0) -> int | None:
    """How many of the image's top rows crop_box(img, box, margin=margin) reads: the rows [0, n)
    (None when the box's bottom is not a finite number)."""
    y2 = box[3]
    if not isinstance(y2, (int, float)) or not math.isfinite(y2 + margin / 2):
        return None
    return math.ceil(y2 + margin / 2)


def crop_box(img: np.ndarray, box, image_size: int = 112, margin: float = 0.0) -> np.ndarray:
    """A box (x1, y1, x2, y2), grown by margin/2 per side and clipped to the image, resized to
    image_size x image_size (bilinear): the reference scripts' crop when there are no landmarks."""
    h, w = img.shape[:2]
    bottom = box_rows(box, margin)
    if bottom is None:
        raise ValueError(f"box {tuple(box[:4])} has no finite bottom edge")
    x1 = int(max(np.floor(box[0] - margin / 2), 0))
    y1 = int(max(np.floor(box[1] - margin / 2), 0))
    x2 = int(min(np.ceil(box[2] + margin / 2), w))
    y2 = min(bottom, h)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {tuple(float(v) for v in box[:4])} lies outside the {w}x{h} image")
    return cv2.resize(img[y1:y2, x1:x2], (image_size, image_size), interpolation=cv2.INTER_LINEAR)
