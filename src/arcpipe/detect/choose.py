"""Which face to keep when an image has several: the insightface alignment scripts' rule."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def face_choice_scores(boxes: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """box area - 2 * squared distance of the box centre to the image centre (pixels^2)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = image_shape[0], image_shape[1]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    cx = (b[:, 0] + b[:, 2]) / 2 - w / 2
    cy = (b[:, 1] + b[:, 3]) / 2 - h / 2
    return area - 2.0 * (cx * cx + cy * cy)


def choose_face(dets, image_shape: Sequence[int]) -> int | None:
    """Index of the face to keep in `dets` (Detections or an (N, 4) box array), None if no face.
    image_shape is (h, w[, c]). Ties go to the first (highest-scoring) face."""
    boxes = getattr(dets, "boxes", dets)
    if boxes is None or len(boxes) == 0:
        return None
    return int(np.argmax(face_choice_scores(boxes, image_shape)))


def keep_face(dets, image_shape: Sequence[int], min_score: float) -> tuple[int | None, bool]:
    """The detect stage's rule: (index of the chosen face or None, whether it is kept, i.e. its
    score reaches min_score). The sample generator checks its training views by the same rule."""
    keep = choose_face(dets, image_shape)
    return keep, keep is not None and float(dets.scores[keep]) >= min_score
