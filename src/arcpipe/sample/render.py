"""One generated photo: a view of an identity's canonical picture with its own pose, light, colour.

A view draws, from its own random stream, a size shaped like the target data set, a face scale
and position, an in-plane rotation and a slight horizontal squeeze (a pose proxy); then the
look of this one photo: a background behind the face, sometimes glasses or a hat, a light level
and a light direction across the face, a white balance, saturation (sometimes none), contrast
and gamma, blur or a low resolution, sensor noise and a JPEG quality. None of that belongs to the
identity: two photos of one person differ in light and colour at least as much as two people
do, so only the face itself, and its shape, tells who it is. The five landmarks go through the
same affine map, so every image knows where its face is.
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

# How strongly each photo's own look varies (the same for every data set).
LOOK = dict(
    squeeze=(0.9, 1.0),          # a turned head looks narrower
    angle=12.0,                  # degrees, in-plane
    background_alpha=(0.55, 1.0),
    glasses=0.18, hat=0.1,       # probabilities per photo
    light=(0.6, 1.35),           # overall light level
    light_slope=(0.0, 0.5),      # light falling across the face, per 1.5 eye-to-mouth distances
    channel_gain=(0.72, 1.28),   # white balance, B G R each
    grayscale=0.2,               # probability of a black-and-white photo
    saturation=(0.3, 1.6),
    contrast=(0.75, 1.25),
    gamma=(0.65, 1.5),
    blur=0.5, blur_sigma=(0.5, 1.8),
    low_res=0.25, low_res_factor=(0.35, 0.7),
    noise=(0.0, 6.0),            # sensor noise, grey levels
    quality=(60, 95),
)


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


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def draw_look(rng: np.random.Generator) -> dict:
    """Everything about one photo's look, drawn in a fixed order (each value always drawn, used
    or not, so that no branch shifts the stream)."""
    L = LOOK
    u = rng.uniform
    look = {
        "background": {"kind": int(rng.integers(0, 3)), "colours": [_colour(rng), _colour(rng)],
                       "direction": float(u(0, 2 * np.pi)), "alpha": float(u(*L["background_alpha"])),
                       "texture_seed": int(rng.integers(0, 2**31 - 1)), "size": float(u(0.9, 1.12))},
        "glasses": {"on": bool(rng.random() < L["glasses"]), "shape": int(rng.integers(0, 2)),
                    "colour": _colour(rng), "thickness": int(rng.integers(2, 5))},
        "hat": {"on": bool(rng.random() < L["hat"]), "colour": _colour(rng), "height": float(u(0.5, 0.9))},
        "light": float(u(*L["light"])),
        "light_slope": float(u(*L["light_slope"])),
        "light_direction": float(u(0, 2 * np.pi)),
        "gain": [float(g) for g in u(*L["channel_gain"], size=3)],
        "grayscale": bool(rng.random() < L["grayscale"]),
        "saturation": float(u(*L["saturation"])),
        "contrast": float(u(*L["contrast"])),
        "gamma": float(u(*L["gamma"])),
        "blur": float(u(*L["blur_sigma"])) if rng.random() < L["blur"] else 0.0,
        "low_res": float(u(*L["low_res_factor"])) if rng.random() < L["low_res"] else 1.0,
        "noise": float(u(*L["noise"])),
        "quality": int(rng.integers(L["quality"][0], L["quality"][1] + 1)),
    }
    return look


def _face_frame(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Face centre, eye centre and eye-to-mouth distance, to place things relative to the face."""
    eyes = (lmk[0] + lmk[1]) / 2
    mouth = (lmk[3] + lmk[4]) / 2
    em = float(np.linalg.norm(mouth - eyes))
    centre = eyes + (mouth - eyes) * 0.45
    return centre, eyes, em


def _pt(p: np.ndarray) -> tuple[int, int]:
    # cv2 drawing with 4 fractional bits, so sub-pixel positions are kept
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def _face_angle(lmk: np.ndarray) -> float:
    d = lmk[1] - lmk[0]
    return float(np.degrees(np.arctan2(d[1], d[0])))


def _background(img: np.ndarray, lmk: np.ndarray, bg: dict) -> np.ndarray:
    """Blend a background of this photo's own (flat, a gradient or a blurred texture) outside the face."""
    h, w = img.shape[:2]
    centre, _, em = _face_frame(lmk)
    angle = _face_angle(lmk)
    up = np.array([np.sin(np.radians(angle)), -np.cos(np.radians(angle))])
    c = centre + up * 0.2 * em
    # the soft face mask is drawn and blurred at a quarter of the size (it is smooth), then enlarged
    q = 4
    hq, wq = -(-h // q), -(-w // q)
    small = np.zeros((hq, wq), np.float32)
    axes = (int(round(em * 1.5 * bg["size"] / q * 16)), int(round(em * 2.05 * bg["size"] / q * 16)))
    cv2.ellipse(small, _pt(c / q), axes, angle, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    small = cv2.GaussianBlur(small, (0, 0), max(0.5, em * 0.25 / q))
    mask = cv2.resize(small, (wq * q, hq * q), interpolation=cv2.INTER_LINEAR)[:h, :w]
    c0, c1 = (np.array(col, np.float32) for col in bg["colours"])
    if bg["kind"] == 0:
        back = np.empty((h, w, 3), np.float32)
        back[:] = c0
    elif bg["kind"] == 1:
        tx = np.arange(w, dtype=np.float32) * np.float32(np.cos(bg["direction"]))
        ty = np.arange(h, dtype=np.float32) * np.float32(np.sin(bg["direction"]))
        t = ty[:, None] + tx[None, :]
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        back = c0 + t[..., None] * (c1 - c0)
    else:
        tex = np.random.default_rng(bg["texture_seed"]).random((6, 6, 3)).astype(np.float32)
        tex = cv2.resize(tex, (w, h), interpolation=cv2.INTER_CUBIC)
        back = c0 + tex * (c1 - c0)
    alpha = (1.0 - mask) * np.float32(bg["alpha"])
    back = np.clip(back, 0, 255).astype(np.uint8)
    return cv2.blendLinear(img, back, 1.0 - alpha, alpha)


def _props(img: np.ndarray, lmk: np.ndarray, look: dict) -> np.ndarray:
    """Glasses and a hat, drawn at the landmarks, when this photo has them."""
    out = img
    centre, eyes, em = _face_frame(lmk)
    iod = float(np.linalg.norm(lmk[1] - lmk[0]))
    sh = 4
    g = look["glasses"]
    if g["on"]:
        out = out.copy()
        colour = tuple(int(c) for c in g["colour"])
        r, t = iod * 0.3, int(g["thickness"])
        for eye in lmk[:2]:
            if g["shape"] == 0:
                cv2.circle(out, _pt(eye), int(round(r * 16)), colour, t, cv2.LINE_AA, sh)
            else:
                cv2.rectangle(out, _pt(eye - (r, r * 0.75)), _pt(eye + (r, r * 0.75)), colour, t, cv2.LINE_AA, sh)
        cv2.line(out, _pt(lmk[0] + (r, 0)), _pt(lmk[1] - (r, 0)), colour, t, cv2.LINE_AA, sh)
    hat = look["hat"]
    if hat["on"]:
        out = out.copy()
        top = eyes[1] - em * (0.75 + hat["height"])
        bottom = eyes[1] - em * 0.75
        x0, x1 = centre[0] - em * 1.5, centre[0] + em * 1.5
        pts = np.array([[x0, bottom], [x1, bottom], [x1 - em * 0.2, top], [x0 + em * 0.2, top]])
        cv2.fillPoly(out, [np.array([_pt(p) for p in pts], np.int32)], tuple(int(c) for c in hat["colour"]),
                     cv2.LINE_AA, sh)
    return out


_LUMA = np.array([0.114, 0.587, 0.299], np.float32)   # B G R


def _colour_matrix(look: dict) -> tuple[np.ndarray, float]:
    """White balance, then saturation (a mix with the luminance), then contrast about mid grey:
    one 3x3 matrix and an offset on [0, 1] values."""
    gain = np.diag(np.array(look["gain"], np.float32))
    sat = np.float32(0.0 if look["grayscale"] else look["saturation"])
    mix = sat * np.eye(3, dtype=np.float32) + (1 - sat) * np.ones((3, 1), np.float32) @ _LUMA[None, :]
    k = np.float32(look["contrast"])
    return (k * mix @ gain).astype(np.float32), float(0.5 * (1 - k))


def _light_and_colour(img: np.ndarray, lmk: np.ndarray, look: dict, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    centre, _, em = _face_frame(lmk)
    # light: a level, falling off linearly across the face in one direction
    d = look["light_direction"]
    px = (np.arange(w, dtype=np.float32) - np.float32(centre[0])) * np.float32(np.cos(d) / (1.5 * em))
    py = (np.arange(h, dtype=np.float32) - np.float32(centre[1])) * np.float32(np.sin(d) / (1.5 * em))
    proj = np.clip(py[:, None] + px[None, :], -1.5, 1.5)
    field = np.maximum(np.float32(look["light"]) * (1 + np.float32(look["light_slope"]) * proj), 0.05)
    matrix, offset = _colour_matrix(look)
    f = cv2.transform(img.astype(np.float32), matrix * np.float32(1 / 255.0))
    f *= field[..., None]
    f += np.float32(offset)
    np.clip(f, 0, 1, out=f)
    f = cv2.pow(f, look["gamma"])
    if look["blur"] > 0:
        f = cv2.GaussianBlur(f, (0, 0), look["blur"])
    if look["low_res"] < 1.0:
        small = (max(8, int(round(w * look["low_res"]))), max(8, int(round(h * look["low_res"]))))
        f = cv2.resize(cv2.resize(f, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    f *= np.float32(255.0)
    if look["noise"] > 0:
        # grain in the luminance (one draw per pixel, the same on the three channels: cheaper)
        f += (rng.standard_normal(size=(h, w), dtype=np.float32) * np.float32(look["noise"]))[..., None]
    np.clip(f, 0, 255, out=f)
    return cv2.convertScaleAbs(f)   # rounds to the nearest (values are non-negative here)


def render_view(canon: np.ndarray, lmk: np.ndarray, style: str, rng: np.random.Generator,
                size: tuple[int, int] | None = None) -> View:
    st = STYLES[style]
    w = int(rng.integers(st["width"][0], st["width"][1] + 1))
    h = int(round(w * rng.uniform(*st["ratio"])))
    if size is not None:
        w, h = size
    iod_out = w * rng.uniform(*st["iod"])
    jx, jy = rng.uniform(-st["jitter"], st["jitter"], size=2) * w
    angle = np.deg2rad(rng.uniform(-LOOK["angle"], LOOK["angle"]))
    squeeze = rng.uniform(*LOOK["squeeze"])
    look = draw_look(rng)

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
    out_lmk = transform_points(lmk, m)
    img = _background(img, out_lmk, look["background"])
    img = _props(img, out_lmk, look)
    img = _light_and_colour(img, out_lmk, look, rng)
    return View(img, np.round(out_lmk, 2), look["quality"])


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
