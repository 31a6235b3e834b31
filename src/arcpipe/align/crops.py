"""Aligned crops: what the align stage makes of each detect manifest row (library).

A process-pool worker is set up once (`init_worker`: the source, crop size, JPEG quality) and
turns a batch of (manifest row, Item) into (row updates, JPEG of the aligned face or None). Rows
with landmarks are warped onto the template (norm_crop's transform); fallback rows without
landmarks are cropped from their box and resized, as the reference scripts do. The image bytes
must be those detect saw (their content hash). Only the image rows a crop reads are decoded
(`decode_image(rows=)`: for a face in the middle of a photo, the bottom fifth or so is never
decoded), and the pixels stay in OpenCV's channel order from decode to encode; the crops are the
same bytes as from a whole decode.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..columns import BOX_COLUMNS, LANDMARK_COLUMNS, STATUS_WITH_CROP
from ..imageio import decode_image, encode_jpeg_bgr
from ..sources import SourceError, content_hash, open_source
from . import transform as A

_W: dict[str, Any] = {}


def init_worker(fmt: str, root: str, size: int, quality: int, margin: float, max_pixels: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    _W.clear()
    _W.update(source=open_source(fmt, root), size=size, quality=quality, margin=margin, max_pixels=max_pixels,
              template=A.template(size).tolist())


def _align_error(lm: list, M: np.ndarray, template: list) -> float:
    """Mean distance (pixels of the crop) from the warped landmarks (five (x, y)) to the
    template's points; in plain floats, a fifth of the time of the same in numpy for five points."""
    (a, b, c), (d, e, f) = M.tolist()
    total = 0.0
    for (x, y), (u, v) in zip(lm, template):
        total += math.hypot(a * x + b * y + c - u, d * x + e * y + f - v)
    return total / 5.0


def align_batch(work: list[tuple[dict, Any]]) -> list[tuple[dict, bytes | None]]:
    """(manifest row, item) -> (updates for the row, JPEG of the aligned face or None)."""
    src, size = _W["source"], _W["size"]
    out = []
    for row, item in work:
        upd: dict[str, Any] = {}
        if row["status"] not in STATUS_WITH_CROP:
            out.append((upd, None))
            continue
        try:
            data = src.read(item)
        except SourceError as e:
            out.append(({"status": "align_failed", "reason": f"cannot read the image again: {e}"}, None))
            continue
        if row["content"] and content_hash(data) != row["content"]:
            out.append(({"status": "align_failed", "reason": "image bytes changed since detection"}, None))
            continue
        vals = [math.nan if row[c] is None else float(row[c]) for c in LANDMARK_COLUMNS]
        lm = list(zip(vals[0::2], vals[1::2]))
        try:
            if all(map(math.isfinite, vals)):
                M = A.estimate_norm(lm, size)
                rows = A.source_rows(M, size)
            else:
                M = None
                margin = _W["margin"] if row["origin"] == "given_box" else 0.0
                box = [row[c] for c in BOX_COLUMNS]
                rows = A.box_rows(box, margin)
        except ValueError as e:
            out.append(({"status": "align_failed", "reason": str(e)}, None))
            continue
        # OpenCV's channel order from decode to encode; only the rows the crop reads are decoded
        d = decode_image(data, _W["max_pixels"], bgr=True, rows=rows)
        if not d.ok:
            out.append(({"status": "align_failed", "reason": f"{d.status}: {d.reason}"}, None))
            continue
        try:
            if M is not None:
                face = A.warp(d.image, M, size)
                upd["align_error"] = _align_error(lm, M, _W["template"]) * 112.0 / size  # in pixels of a 112 crop
            else:
                face = A.crop_box(d.image, box, size, margin)
        except ValueError as e:
            out.append(({"status": "align_failed", "reason": str(e)}, None))
            continue
        out.append((upd, encode_jpeg_bgr(face, _W["quality"])))
    return out
