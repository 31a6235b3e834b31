"""A contact sheet: aligned crops with their landmarks, and a few rejects with their reasons,
in one image beside the manifest, for a person to check the alignment by eye."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

TILE = 112
CAPTION = 14


def _tile(rgb: Optional[np.ndarray], caption: str, points=None, template=None, colour=(255, 255, 255)) -> np.ndarray:
    t = np.full((TILE + CAPTION, TILE, 3), 32, np.uint8)
    if rgb is not None:
        img = rgb
        if img.shape[:2] != (TILE, TILE):
            h, w = img.shape[:2]
            s = TILE / max(h, w)
            img = cv2.resize(img, (max(int(w * s), 1), max(int(h * s), 1)), interpolation=cv2.INTER_AREA)
        t[:img.shape[0], :img.shape[1]] = img
    if template is not None:
        for x, y in template:
            cv2.drawMarker(t, (int(round(x)), int(round(y))), (255, 64, 64), cv2.MARKER_CROSS, 6, 1)
    if points is not None:
        for x, y in points:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(t, (int(round(x)), int(round(y))), 2, (64, 255, 64), -1)
    cv2.putText(t, caption[:20], (2, TILE + CAPTION - 4), cv2.FONT_HERSHEY_PLAIN, 0.75, colour, 1, cv2.LINE_AA)
    return t


def make_contact_sheet(faces: Sequence[tuple], rejects: Sequence[tuple], template=None, cols: int = 8) -> np.ndarray:
    """faces: (aligned RGB, landmarks in crop coordinates or None, caption); rejects: (RGB or None,
    caption). Red crosses: the template; green dots: the face's landmarks after alignment."""
    tiles = [_tile(rgb, cap, pts, template) for rgb, pts, cap in faces]
    tiles += [_tile(rgb, cap, colour=(255, 96, 96)) for rgb, cap in rejects]
    if not tiles:
        tiles = [_tile(None, "no images")]
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (TILE + CAPTION), cols * TILE, 3), 16, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * (TILE + CAPTION):(r + 1) * (TILE + CAPTION), c * TILE:(c + 1) * TILE] = t
    return sheet


def encode_sheet(sheet: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise ValueError("contact sheet: JPEG encoding failed")
    return buf.tobytes()


def aligned_set_sheet(manifest, read_rgb, read_reject, image_size: int, n: int) -> bytes:
    """The JPEG contact sheet of an aligned set: up to `n` crops spread over the manifest, with
    their landmarks mapped into the crop, and a few rejects as decoded by `read_reject(row)`
    (RGB or None). `read_rgb(key)` returns a stored crop."""
    from . import transform as A
    from ..columns import LANDMARK_COLUMNS

    faces_df = manifest[manifest["key"] >= 0]
    pick = faces_df.iloc[np.linspace(0, len(faces_df) - 1, min(n, len(faces_df))).astype(int)] if len(faces_df) else faces_df
    faces = []
    for _, row in pick.iterrows():
        rgb = read_rgb(int(row["key"]))
        lm = np.array([row[c] for c in LANDMARK_COLUMNS], np.float64).reshape(5, 2)
        pts = None
        if np.isfinite(lm).all():
            pts = A.transform_points(lm, A.estimate_norm(lm, image_size)) * (112.0 / image_size)
        if image_size != 112:
            rgb = cv2.resize(rgb, (112, 112), interpolation=cv2.INTER_AREA)
        faces.append((rgb, pts, f"{row['status']} {row['identity']}"[:20]))
    rejects = [(read_reject(row), f"{row['status']}: {row['reason']}")
               for _, row in manifest[manifest["key"] < 0].head(max(n // 6, 4)).iterrows()]
    return encode_sheet(make_contact_sheet(faces, rejects, template=A.template(112)))
