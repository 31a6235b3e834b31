"""The real photographs the sample starts from, all shipped inside installed wheels (the download
stage copies them, checksummed, into data/download/photo_*/: arcpipe.photos.SAMPLE_PHOTOS).

Faces: the insightface wheel's group photo (t1.jpg) and Tom_Hanks_54745.png, scikit-image's
astronaut and the 100 face crops of its lfw_subset, matplotlib's grace_hopper.jpg.
Non-faces: the 100 background crops of lfw_subset and the insightface mask textures.

Every face is found and given five landmarks by one function, `find_faces`, then warped onto
a canonical canvas (CANVAS x CANVAS, landmarks near a fixed template) from which every
generated image is rendered.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import cv2
import numpy as np

from ..align.transform import similarity_lstsq, transform_points
from ..errors import PipelineError
from ..photos import read_bgr, sample_photo

CANVAS = 400
# The ArcFace 112 template (left eye, right eye, nose, mouth left, mouth right) scaled by 1.5 and
# centred on the canvas: every canonical face has its eyes ~53 px apart.
_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
CANON_LANDMARKS = _TEMPLATE_112 * 1.5 + (CANVAS - 112 * 1.5) / 2.0


@dataclass(frozen=True)
class BaseFace:
    """One real face, on the canonical canvas: `image` BGR uint8, `landmarks` (5, 2) in it."""

    name: str          # e.g. "t1_3", "astronaut", "lfw_subset_017"
    source: str        # which photo it comes from
    image: np.ndarray
    landmarks: np.ndarray
    score: float       # detector score on the source photo
    low_res: bool      # upscaled from a tiny crop


def raw_photos(photos: Optional[str] = None) -> list[tuple[str, np.ndarray, bool]]:
    """(name, BGR image, is_tiny_crop) for every face photo, in a fixed order; `photos`: the folder
    the download stage brought them into (None: the installed wheels)."""
    out: list[tuple[str, np.ndarray, bool]] = []
    out.append(("t1", read_bgr(sample_photo("photo_t1", photos)), False))
    out.append(("tom_hanks", read_bgr(sample_photo("photo_tom_hanks", photos)), False))
    out.append(("astronaut", read_bgr(sample_photo("photo_astronaut", photos)), False))
    out.append(("grace_hopper", read_bgr(sample_photo("photo_grace_hopper", photos)), False))
    for i, face in enumerate(lfw_subset(photos)[:100]):
        if i in UNRELIABLE:
            continue
        out.append((f"lfw_subset_{i:03d}", _pad_tiny_crop(face), True))
    return out


@lru_cache(maxsize=4)
def lfw_subset(photos: Optional[str] = None) -> np.ndarray:
    """scikit-image's lfw_subset.npy: (200, 25, 25) float in [0, 1]; 100 faces then 100 non-faces."""
    path = sample_photo("photo_lfw_subset", photos)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: missing or not a numpy array file ({e})") from None
    if arr.shape != (200, 25, 25):
        raise PipelineError(f"{path}: expected lfw_subset's (200, 25, 25) crops, got shape {arr.shape}")
    return arr


def to_u8(gray01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(gray01 * 255.0), 0, 255).astype(np.uint8)


# lfw_subset crops that MTCNN misses in many generated views (in-plane rotation, blur, light and
# the identity geometry on top of a 25 px original): measured over the default sample (a third or
# more of their views missed), then left out.
UNRELIABLE = frozenset({4, 13, 21, 25, 27, 28, 30, 38, 47, 58, 76, 82, 89})

TINY_SCALE = 6      # 25 px crops become 150 px faces
TINY_PAD = 60       # background around them, so a detector sees a face with context


def _pad_tiny_crop(face01: np.ndarray) -> np.ndarray:
    """A 25x25 tight face crop -> a 270x270 photo: the face upscaled, on a blurred enlargement of itself."""
    face = to_u8(face01)
    size = face.shape[0] * TINY_SCALE
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    full = size + 2 * TINY_PAD
    background = cv2.GaussianBlur(cv2.resize(face, (full, full), interpolation=cv2.INTER_LINEAR), (0, 0), 25)
    out = background.astype(np.float32)
    # feathered paste: the crop's edge fades into the background over ~12 px
    mask = np.zeros((full, full), np.float32)
    mask[TINY_PAD:TINY_PAD + size, TINY_PAD:TINY_PAD + size] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    canvas = out.copy()
    canvas[TINY_PAD:TINY_PAD + size, TINY_PAD:TINY_PAD + size] = big
    out = mask * canvas + (1 - mask) * out
    gray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def non_face_images(photos: Optional[str] = None) -> list[tuple[str, np.ndarray]]:
    """(name, BGR) real non-face pictures: lfw_subset backgrounds (25 px) and mask textures."""
    out = [(f"lfw_subset_nonface_{i:03d}", cv2.cvtColor(to_u8(img), cv2.COLOR_GRAY2BGR))
           for i, img in enumerate(lfw_subset(photos)[100:])]
    for name in ("mask_black", "mask_blue", "mask_green", "mask_white"):
        out.append((name, read_bgr(sample_photo(f"photo_{name}", photos))))
    return out


# --------------------------------------------------------------------------------------------
# Landmarks: the one place that decides where the faces are.

def find_faces(photos: list[np.ndarray]) -> list[list[tuple[np.ndarray, float]]]:
    """For each BGR photo: [(landmarks (5, 2) float64, score)] of its faces."""
    from .landmarks import detect_landmarks_batch

    return detect_landmarks_batch(photos)


@lru_cache(maxsize=2)
def base_faces(photos: Optional[str] = None) -> tuple[BaseFace, ...]:
    """Every usable real face on the canonical canvas, in a fixed order (cached per process);
    `photos` as for raw_photos."""
    faces: list[BaseFace] = []
    raw = raw_photos(photos)
    for (name, bgr, tiny), found in zip(raw, find_faces([p[1] for p in raw])):
        # several faces in one photo (t1): left to right, so names are stable
        found = sorted(found, key=lambda f: float(f[0][:, 0].mean()))
        for k, (lmk, score) in enumerate(found):
            m = similarity_lstsq(lmk, CANON_LANDMARKS)
            canon = cv2.warpAffine(bgr, m, (CANVAS, CANVAS), flags=cv2.INTER_CUBIC,
                                   borderMode=cv2.BORDER_REPLICATE)
            fname = name if len(found) == 1 else f"{name}_{k}"
            faces.append(BaseFace(fname, name, canon, np.round(transform_points(lmk, m), 2), round(float(score), 4), tiny))
    if not faces:
        raise PipelineError("sample: no face found in any base photo")
    return tuple(faces)
