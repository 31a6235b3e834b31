"""Five landmarks on the base photos (temporary source until the project's MTCNN lands)."""
from __future__ import annotations

import numpy as np

_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
# where the five points sit in an lfw_subset 25x25 crop, as fractions of the side
_TINY_FRACTIONS = np.array([[0.31, 0.38], [0.69, 0.38], [0.50, 0.58], [0.35, 0.76], [0.65, 0.76]])


def detect_landmarks(name: str, bgr: np.ndarray, tiny: bool) -> list[tuple[np.ndarray, float]]:
    from .sources import TINY_PAD, TINY_SCALE

    if tiny:
        return [(_TINY_FRACTIONS * 25 * TINY_SCALE + TINY_PAD, 0.9)]
    if name == "tom_hanks":
        return [(_TEMPLATE_112 * bgr.shape[0] / 112.0, 0.9)]
    return []
