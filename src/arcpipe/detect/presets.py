"""MTCNN settings as the insightface data-preparation scripts ran them, per data set."""
from __future__ import annotations

from typing import Literal, NamedTuple, Sequence, Union

NoFace = Literal["drop", "center_crop", "given_box"]


class Preset(NamedTuple):
    minsize: Union[int, Literal["fifth"]]  # "fifth": min(h, w) // 5 of each image
    thresholds: tuple[float, float, float]  # P-Net, R-Net, O-Net
    factor: float  # pyramid scale step
    no_face: NoFace  # what the scripts did with an image without a face


PRESETS: dict[str, Preset] = {
    # LFW, CASIA-WebFace, VGG2: centre crop when MTCNN finds nothing
    "lfw": Preset(20, (0.6, 0.7, 0.9), 0.85, "center_crop"),
    "ytf": Preset(20, (0.6, 0.7, 0.4), 0.85, "center_crop"),
    # MS1M from the TSV with base64 images: drop images without a face
    "ms1m": Preset("fifth", (0.6, 0.6, 0.3), 0.709, "drop"),
    # MegaFace and FaceScrub: fall back to the box given with the data set
    "megaface": Preset(100, (0.6, 0.7, 0.7), 0.709, "given_box"),
    "deploy": Preset(20, (0.6, 0.7, 0.8), 0.709, "drop"),
}


def preset_for(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown MTCNN preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def fallback_box(image_shape: Sequence[int], margin: int = 44) -> tuple[int, int, int, int]:
    """The centre-crop box (x1, y1, x2, y2, integer pixels, x2/y2 exclusive) used when no face is
    found: inset 6.25% of the width/height on each side, grown by margin/2 per side, clipped to
    the image. The crop is then resized to the output size."""
    h, w = int(image_shape[0]), int(image_shape[1])
    dx, dy = int(w * 0.0625), int(h * 0.0625)
    half = margin / 2
    x1 = int(max(dx - half, 0))
    y1 = int(max(dy - half, 0))
    x2 = int(min(w - dx + half, w))
    y2 = int(min(h - dy + half, h))
    return x1, y1, x2, y2
