"""Identity-specific transforms: one real base face becomes one clearly distinct identity.

An identity is a base face plus a fixed look drawn from its own random stream: mirroring, a
face-shape warp (aspect and shear), a colour/tone mapping, a background colour, and a few
accessories drawn with cv2 at the landmarks (glasses, moustache, beard, hat band, marks).
Everything is applied once, on the canonical canvas; every image of the identity is then a
view of that one picture (see render.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from ..align.transform import transform_points
from .base_faces import CANVAS, BaseFace


@dataclass(frozen=True)
class IdentitySpec:
    key: str
    base: str
    mirror: bool
    aspect: float            # horizontal stretch of the face, about its centre
    shear: float
    channel_gain: tuple[float, float, float]   # B, G, R
    gamma: float
    saturation: float
    hue_shift: int           # OpenCV hue units (0..180)
    grayscale: bool
    background: tuple[int, int, int]
    background_alpha: float
    accessories: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["accessories"] = [dict(a) for a in self.accessories]
        return d


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def make_spec(key: str, base: BaseFace, rng: np.random.Generator) -> IdentitySpec:
    """Draw one identity's look. Draw order is fixed: a spec depends only on (rng, base)."""
    mirror = bool(rng.random() < 0.5)
    aspect = float(np.round(rng.uniform(0.9, 1.1), 4))
    shear = float(np.round(rng.uniform(-0.05, 0.05), 4))
    gains = tuple(float(np.round(g, 4)) for g in rng.uniform(0.72, 1.28, size=3))
    gamma = float(np.round(rng.uniform(0.7, 1.4), 4))
    saturation = float(np.round(rng.uniform(0.4, 1.6), 4))
    hue_shift = int(rng.integers(-14, 15))
    grayscale = bool(rng.random() < 0.12)
    background = _colour(rng)
    background_alpha = float(np.round(rng.uniform(0.35, 0.75), 4))
    accessories: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        accessories.append({"kind": "glasses", "shape": str(rng.choice(["round", "square"])),
                            "colour": _colour(rng), "thickness": int(rng.integers(2, 5))})
    if rng.random() < 0.45:
        accessories.append({"kind": "hat", "colour": _colour(rng), "height": float(np.round(rng.uniform(0.5, 0.9), 3))})
    if rng.random() < 0.35:
        accessories.append({"kind": "moustache", "colour": _colour(rng) if rng.random() < 0.3 else (30, 30, 40),
                            "width": float(np.round(rng.uniform(0.6, 0.9), 3))})
    if rng.random() < 0.3:
        accessories.append({"kind": "beard", "colour": (int(rng.integers(10, 90)),) * 3,
                            "alpha": float(np.round(rng.uniform(0.4, 0.8), 3))})
    n_marks = int(rng.integers(0, 3))
    for _ in range(n_marks):
        accessories.append({"kind": "mark", "colour": _colour(rng),
                            "x": float(np.round(rng.uniform(-0.9, 0.9), 3)), "y": float(np.round(rng.uniform(-0.6, 0.9), 3)),
                            "radius": float(np.round(rng.uniform(0.05, 0.12), 3))})
    return IdentitySpec(key, base.name, mirror, aspect, shear, gains, gamma, saturation, hue_shift,
                        grayscale, background, background_alpha, tuple(accessories))


def _swap_sides(lmk: np.ndarray) -> np.ndarray:
    return lmk[[1, 0, 2, 4, 3]]


def _tone(img: np.ndarray, spec: IdentitySpec) -> np.ndarray:
    f = img.astype(np.float32) / 255.0
    f = f * np.array(spec.channel_gain, np.float32)
    f = np.clip(f, 0, 1) ** np.float32(spec.gamma)
    u8 = np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(u8, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + spec.hue_shift) % 180
    hsv[..., 1] = np.clip(np.rint(hsv[..., 1] * spec.saturation), 0, 255)
    u8 = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if spec.grayscale:
        u8 = cv2.cvtColor(cv2.cvtColor(u8, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return u8


def _face_frame(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Face centre, eye centre and eye-to-mouth distance, to place things relative to the face."""
    eyes = (lmk[0] + lmk[1]) / 2
    mouth = (lmk[3] + lmk[4]) / 2
    em = float(np.linalg.norm(mouth - eyes))
    centre = eyes + (mouth - eyes) * 0.45
    return centre, eyes, em


def _background(img: np.ndarray, lmk: np.ndarray, spec: IdentitySpec) -> np.ndarray:
    centre, _, em = _face_frame(lmk)
    mask = np.zeros(img.shape[:2], np.float32)
    axes = (int(round(em * 1.55)), int(round(em * 2.1)))
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1] - 0.2 * em))), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), em * 0.25)
    alpha = (1.0 - mask)[..., None] * spec.background_alpha
    colour = np.array(spec.background, np.float32)
    out = img.astype(np.float32) * (1 - alpha) + colour * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pt(p: np.ndarray) -> tuple[int, int]:
    # cv2 drawing with 4 fractional bits, so sub-pixel positions are kept
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def _accessories(img: np.ndarray, lmk: np.ndarray, spec: IdentitySpec) -> np.ndarray:
    out = img.copy()
    centre, eyes, em = _face_frame(lmk)
    iod = float(np.linalg.norm(lmk[1] - lmk[0]))
    sh = 4
    for acc in spec.accessories:
        kind = acc["kind"]
        colour = tuple(int(c) for c in acc["colour"])
        if kind == "glasses":
            r = iod * 0.3
            t = int(acc["thickness"])
            for eye in lmk[:2]:
                if acc["shape"] == "round":
                    cv2.circle(out, _pt(eye), int(round(r * 16)), colour, t, cv2.LINE_AA, sh)
                else:
                    cv2.rectangle(out, _pt(eye - (r, r * 0.75)), _pt(eye + (r, r * 0.75)), colour, t, cv2.LINE_AA, sh)
            cv2.line(out, _pt(lmk[0] + (r, 0)), _pt(lmk[1] - (r, 0)), colour, t, cv2.LINE_AA, sh)
        elif kind == "hat":
            top = eyes[1] - em * (0.75 + acc["height"])
            bottom = eyes[1] - em * 0.75
            x0, x1 = centre[0] - em * 1.5, centre[0] + em * 1.5
            pts = np.array([[x0, bottom], [x1, bottom], [x1 - em * 0.2, top], [x0 + em * 0.2, top]])
            cv2.fillPoly(out, [np.array([_pt(p) for p in pts], np.int32)], colour, cv2.LINE_AA, sh)
        elif kind == "moustache":
            w = (lmk[4][0] - lmk[3][0]) * acc["width"]
            mid = (lmk[2] + (lmk[3] + lmk[4]) / 2) / 2
            cv2.ellipse(out, _pt(mid), (int(round(w * 8)), int(round(em * 0.07 * 16))), 0, 0, 360, colour, -1, cv2.LINE_AA, sh)
        elif kind == "beard":
            mouth = (lmk[3] + lmk[4]) / 2
            overlay = out.copy()
            chin = mouth + (0, em * 0.55)
            cv2.ellipse(overlay, _pt(chin), (int(round(em * 0.75 * 16)), int(round(em * 0.3 * 16))), 0, 0, 360,
                        colour, -1, cv2.LINE_AA, sh)
            a = float(acc["alpha"])
            out = cv2.addWeighted(overlay, a, out, 1 - a, 0)
        elif kind == "mark":
            p = centre + np.array([acc["x"], acc["y"]]) * em
            cv2.circle(out, _pt(p), int(round(acc["radius"] * em * 16)), colour, -1, cv2.LINE_AA, sh)
    return out


def render_identity(base: BaseFace, spec: IdentitySpec) -> tuple[np.ndarray, np.ndarray]:
    """The identity's canonical picture (BGR, CANVAS x CANVAS) and its five landmarks."""
    img, lmk = base.image, base.landmarks.astype(np.float64)
    if spec.mirror:
        img = cv2.flip(img, 1)
        lmk = lmk.copy()
        lmk[:, 0] = CANVAS - 1 - lmk[:, 0]
        lmk = _swap_sides(lmk)
    c = lmk.mean(0)
    geo = np.array([[spec.aspect, spec.shear, 0.0], [0.0, 1.0, 0.0]])
    geo[:, 2] = c - geo[:, :2] @ c
    img = cv2.warpAffine(img, geo, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    lmk = transform_points(lmk, geo)
    img = _tone(img, spec)
    img = _background(img, lmk, spec)
    img = _accessories(img, lmk, spec)
    return img, lmk
