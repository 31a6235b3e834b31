"""Identity-specific geometry: one real base face becomes one identity by a stable change of shape.

An identity is a base face plus a fixed geometry drawn from its own random stream: an optional
mirror, the width of the face, the spacing, height and size of the eyes, the length and width of
the nose, the width and height of the mouth, the width of the jaw, the length of the chin and the
height of the brows. It is applied once, as one smooth warp of the canonical canvas; every image
of the identity is then a view of that one picture (see render.py), and everything about colour,
light, background and props belongs to the view, not to the identity. Two identities made from
the same base face therefore look alike in pixels and differ only in the shape of the face.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from .base_faces import CANVAS, BaseFace

# name: (low, high) of each geometric trait; 0 (or 1 for scales) is the base face unchanged.
# Shifts are in units of the eye-to-mouth distance (em) of the canonical face, scales are factors.
TRAITS = {
    "face_width": (0.8, 1.2),      # horizontal scale of the whole face about its centre
    "eye_spacing": (-0.13, 0.13),  # each eye moves outwards (+) or inwards (-)
    "eye_height": (-0.12, 0.12),   # both eyes move down (+) or up (-)
    "eye_size": (0.75, 1.33),      # scale of the eye regions about the eye centres
    "nose_length": (-0.15, 0.15),  # the nose tip moves down (+) or up (-)
    "nose_width": (0.7, 1.4),      # horizontal scale about the nose
    "mouth_width": (0.72, 1.32),   # horizontal scale about the mouth centre
    "mouth_height": (-0.13, 0.13),  # the mouth moves down (+) or up (-)
    "jaw_width": (0.76, 1.24),     # horizontal scale of the lower face
    "chin_length": (-0.18, 0.18),  # the chin moves down (+) or up (-)
    "brow_height": (-0.12, 0.12),  # the brows and forehead move down (+) or up (-)
}


@dataclass(frozen=True)
class IdentitySpec:
    key: str
    base: str
    mirror: bool
    geometry: tuple[tuple[str, float], ...]   # (trait, value) in TRAITS order

    def trait(self, name: str) -> float:
        return dict(self.geometry)[name]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["geometry"] = dict(self.geometry)
        return d


def make_spec(key: str, base: BaseFace, rng: np.random.Generator) -> IdentitySpec:
    """Draw one identity's geometry. Draw order is fixed: a spec depends only on (rng, base)."""
    mirror = bool(rng.random() < 0.5)
    geometry = tuple((name, float(np.round(rng.uniform(lo, hi), 4))) for name, (lo, hi) in TRAITS.items())
    return IdentitySpec(key, base.name, mirror, geometry)


def _swap_sides(lmk: np.ndarray) -> np.ndarray:
    return lmk[[1, 0, 2, 4, 3]]


def _gauss(xx: np.ndarray, yy: np.ndarray, c: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((xx - c[0]) / sx) ** 2 + ((yy - c[1]) / sy) ** 2))


def displacement(spec: IdentitySpec, lmk: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward displacement (dx, dy) of the face content at (xx, yy): a sum of smooth local moves
    and scales, each inside a Gaussian window placed by the five landmarks."""
    g = dict(spec.geometry)
    eyes = (lmk[0] + lmk[1]) / 2
    mouth = (lmk[3] + lmk[4]) / 2
    em = float(np.linalg.norm(mouth - eyes))
    centre = eyes + (mouth - eyes) * 0.45
    dx = np.zeros_like(xx)
    dy = np.zeros_like(xx)

    def scale_x(c, s, sx, sy):
        nonlocal dx
        dx = dx + _gauss(xx, yy, c, sx, sy) * (s - 1.0) * (xx - c[0])

    def shift(c, tx, ty, sx, sy):
        nonlocal dx, dy
        w = _gauss(xx, yy, c, sx, sy)
        dx = dx + w * tx
        dy = dy + w * ty

    scale_x(centre, g["face_width"], 1.6 * em, 2.0 * em)
    for side, eye in ((-1.0, lmk[0]), (1.0, lmk[1])):
        shift(eye, side * g["eye_spacing"] * em, g["eye_height"] * em, 0.45 * em, 0.35 * em)
        w = _gauss(xx, yy, eye, 0.3 * em, 0.22 * em)
        dx = dx + w * (g["eye_size"] - 1.0) * (xx - eye[0])
        dy = dy + w * (g["eye_size"] - 1.0) * (yy - eye[1])
    nose = lmk[2]
    shift(nose, 0.0, g["nose_length"] * em, 0.3 * em, 0.3 * em)
    scale_x(nose, g["nose_width"], 0.28 * em, 0.3 * em)
    scale_x(mouth, g["mouth_width"], 0.45 * em, 0.25 * em)
    shift(mouth, 0.0, g["mouth_height"] * em, 0.55 * em, 0.3 * em)
    chin = mouth + np.array([0.0, 0.6 * em])
    scale_x(chin, g["jaw_width"], 1.0 * em, 0.45 * em)
    shift(chin, 0.0, g["chin_length"] * em, 0.8 * em, 0.35 * em)
    brow = eyes - np.array([0.0, 0.45 * em])
    shift(brow, 0.0, g["brow_height"] * em, 1.1 * em, 0.3 * em)
    return dx, dy


GRID = 4


def _warp(img: np.ndarray, lmk: np.ndarray, spec: IdentitySpec) -> tuple[np.ndarray, np.ndarray]:
    """Apply the identity's displacement: output pixel y shows the input at y - D(y); each landmark
    goes to the y that solves y - D(y) = landmark (a few fixed-point steps, D is smooth and small)."""
    h, w = img.shape[:2]
    # D is smooth (its narrowest window is ~13 px wide): computed on a grid of every GRID-th
    # pixel and enlarged, it is the same to a small fraction of a pixel, at a fraction of the cost
    gy, gx = np.mgrid[0:h + GRID:GRID, 0:w + GRID:GRID].astype(np.float64)
    dx, dy = displacement(spec, lmk, gx, gy)
    size = (gx.shape[1] * GRID, gx.shape[0] * GRID)
    dx = cv2.resize(dx.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    dy = cv2.resize(dy.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    # cv2.resize puts grid point k at pixel GRID*k + (GRID-1)/2: shift so it lands on GRID*k
    off = (GRID - 1) / 2
    shift = np.float32([[1, 0, -off], [0, 1, -off]])   # dst(p) = src(p + off)
    dx = cv2.warpAffine(dx, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    dy = cv2.warpAffine(dy, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xx - dx
    map_y = yy - dy
    out = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    y = lmk.copy()
    for _ in range(12):
        ddx, ddy = displacement(spec, lmk, y[:, 0], y[:, 1])
        y = lmk + np.stack([ddx, ddy], 1)
    return out, y


def render_identity(base: BaseFace, spec: IdentitySpec) -> tuple[np.ndarray, np.ndarray]:
    """The identity's canonical picture (BGR, CANVAS x CANVAS) and its five landmarks."""
    img, lmk = base.image, base.landmarks.astype(np.float64)
    if spec.mirror:
        img = cv2.flip(img, 1)
        lmk = lmk.copy()
        lmk[:, 0] = CANVAS - 1 - lmk[:, 0]
        lmk = _swap_sides(lmk)
    img, lmk = _warp(img, lmk, spec)
    return img, np.round(lmk, 2)
