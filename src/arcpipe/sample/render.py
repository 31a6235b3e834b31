"""One generated photo: a view of an identity's canonical picture with its own pose, light, blur.

A view draws, from its own random stream, a size shaped like the target data set, a face scale
and position, an in-plane rotation and a slight horizontal squeeze (a pose proxy), a light
gain and gamma, blur, sensor noise and a JPEG quality. The five landmarks go through the same
affine map, so every image knows where its face is.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..align.transform import transform_points
from ..imageio import encode_jpeg_bgr

# Per data set: (width range, height/width ratio range, inter-ocular distance as a fraction of
# the width, face centre jitter as a fraction of the width). LFW is fixed at 250x250.
STYLES = {
    # MS-Celeb-1M "cropped" images: faces with background, up to 300 px
    "ms1m": dict(width=(160, 300), ratio=(1.0, 1.15), iod=(0.17, 0.24), jitter=0.05),
    "lfw": dict(width=(250, 250), ratio=(1.0, 1.0), iod=(0.16, 0.19), jitter=0.012),
    # IJB loose crops: tight-ish boxes with a margin, sizes from small to large
    "ijb": dict(width=(80, 320), ratio=(1.05, 1.3), iod=(0.2, 0.25), jitter=0.03),
    # FaceScrub / MegaFace: larger photos, faces over 100 px (MegaFace's MTCNN minsize)
    "megaface": dict(width=(280, 400), ratio=(1.0, 1.3), iod=(0.19, 0.24), jitter=0.06),
}


@dataclass(frozen=True)
class View:
    image: np.ndarray      # BGR uint8
    landmarks: np.ndarray  # (5, 2) float64
    quality: int

    def box(self) -> tuple[float, float, float, float]:
        """A face box (x0, y0, x1, y1) estimated from the landmarks, clipped to the image."""
        return face_box(self.landmarks, self.image.shape[1], self.image.shape[0])

    def jpeg(self) -> bytes:
        return encode_jpeg_bgr(self.image, self.quality)


def face_box(lmk: np.ndarray, w: int, h: int) -> tuple[float, float, float, float]:
    eyes = (lmk[0] + lmk[1]) / 2
    mouth = (lmk[3] + lmk[4]) / 2
    em = float(np.linalg.norm(mouth - eyes))
    cx = float(lmk[:, 0].mean())
    x0, x1 = cx - 1.05 * em * 1.25, cx + 1.05 * em * 1.25
    y0, y1 = float(eyes[1]) - 1.05 * em, float(mouth[1]) + 0.85 * em
    return (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))


def render_view(canon: np.ndarray, lmk: np.ndarray, style: str, rng: np.random.Generator,
                size: tuple[int, int] | None = None) -> View:
    st = STYLES[style]
    w = int(rng.integers(st["width"][0], st["width"][1] + 1))
    h = int(round(w * rng.uniform(*st["ratio"])))
    if size is not None:
        w, h = size
    iod_out = w * rng.uniform(*st["iod"])
    jx, jy = rng.uniform(-st["jitter"], st["jitter"], size=2) * w
    angle = np.deg2rad(rng.uniform(-12, 12))
    squeeze = rng.uniform(0.88, 1.0)          # a turned head looks narrower
    gain = rng.uniform(0.7, 1.3)
    gamma = rng.uniform(0.75, 1.35)
    blur = rng.uniform(0.4, 1.4) if rng.random() < 0.45 else 0.0
    noise = rng.uniform(0.0, 4.0)
    quality = int(rng.integers(72, 96))

    iod_in = float(np.linalg.norm(lmk[1] - lmk[0]))
    s = iod_out / iod_in
    c_in = lmk.mean(0)
    c_out = np.array([w / 2 + jx, h * 0.52 + jy])
    cos, sin = np.cos(angle), np.sin(angle)
    lin = s * np.array([[cos, -sin], [sin, cos]]) @ np.array([[squeeze, 0.0], [0.0, 1.0]])
    m = np.zeros((2, 3))
    m[:, :2] = lin
    m[:, 2] = c_out - lin @ c_in
    img = cv2.warpAffine(canon, m, (w, h), flags=cv2.INTER_LINEAR if s >= 1 else cv2.INTER_AREA,
                         borderMode=cv2.BORDER_REFLECT101)
    f = img.astype(np.float32) / 255.0
    f = np.clip(f * np.float32(gain), 0, 1) ** np.float32(gamma)
    if blur > 0:
        f = cv2.GaussianBlur(f, (0, 0), blur)
    if noise > 0:
        f = f + rng.normal(0.0, noise / 255.0, size=f.shape).astype(np.float32)
    img = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    return View(img, np.round(transform_points(lmk, m), 2), quality)


def render_non_face(gray_or_bgr: np.ndarray, rng: np.random.Generator) -> View:
    """A real non-face picture, resized to an MS1M-like crop (tiny ones are upscaled, blurry)."""
    w = int(rng.integers(STYLES["ms1m"]["width"][0], STYLES["ms1m"]["width"][1] + 1))
    src = gray_or_bgr
    if src.ndim == 2:
        src = cv2.cvtColor(src, cv2.COLOR_GRAY2BGR)
    h0, w0 = src.shape[:2]
    side = min(h0, w0)
    y0 = int(rng.integers(0, h0 - side + 1))
    x0 = int(rng.integers(0, w0 - side + 1))
    crop = src[y0:y0 + side, x0:x0 + side]
    img = cv2.resize(crop, (w, w), interpolation=cv2.INTER_CUBIC if side < w else cv2.INTER_AREA)
    return View(img, np.full((5, 2), np.nan), int(rng.integers(72, 96)))
