"""params.yaml `evaluate.ijb`, `evaluate.megaface`, `evaluate.ytf`: the large benchmarks.

Each is optional in `evaluate`; a missing section means that benchmark is not run.
Defaults follow the insightface evaluation scripts (see docs in arcpipe.evaluate.ijb etc.).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from .base import PositiveInt, Section

DEFAULT_FARS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def _check_rates(v: list[float]) -> list[float]:
    if not v:
        raise ValueError("needs at least one rate")
    for x in v:
        if not 0 < x < 1:
            raise ValueError(f"rates must lie strictly between 0 and 1, got {x}")
    return v


class IJBParams(Section):
    """IJB-B / IJB-C 1:1 verification (and 1:N identification) from meta/ + loose_crop/."""

    root: str                                   # holds meta/ and loose_crop/
    target: str = "IJBC"                        # meta file prefix is target.lower(): ijbc_face_tid_mid.txt ...
    flip: bool = True                           # F: image feature = emb(img) + emb(flipped img)
    keep_norm: bool = True                      # N: keep the feature norm (False: L2-normalise per image)
    detector_score: bool = True                 # D: multiply each image feature by its detector score
    fars: list[float] = Field(default_factory=lambda: list(DEFAULT_FARS))
    on_bad_row: Literal["skip", "error"] = "skip"   # landmark rows that are missing / not finite
    one_to_n: bool = True                       # run 1:N when the gallery/probe csv files exist
    gallery: list[str] = Field(default_factory=lambda: ["G1", "G2"])   # <t>_1N_gallery_<g>.csv (IJB-B: S1, S2)
    probe: str = "mixed"                        # <t>_1N_probe_<p>.csv
    ranks: list[PositiveInt] = Field(default_factory=lambda: [1, 5, 10])
    fpirs: list[float] = Field(default_factory=lambda: [1e-2, 1e-1])
    pair_chunk: PositiveInt = 2048              # template tile size for pair scoring
    max_images: Optional[PositiveInt] = None    # evaluate only the first N meta rows (smoke runs)

    @field_validator("fars", "fpirs")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        return _check_rates(v)


class MegaFaceParams(Section):
    """FaceScrub probes against MegaFace distractors, from aligned sets (data/align/<dataset>/)."""

    probe_set: str                              # aligned set dir of FaceScrub (identity per image)
    distractor_set: str                         # aligned set dir of the distractors
    facescrub_noises: Optional[str] = None      # one FaceScrub image name per line ('#' comments)
    megaface_noises: Optional[str] = None       # one distractor path per line ('#' comments)
    flip: bool = True                           # feature = emb(img) + emb(flipped img), then L2-normalised
    sizes: list[PositiveInt] = Field(default_factory=lambda: [10, 100, 1000, 10000, 100000, 1000000])
    fars: list[float] = Field(default_factory=lambda: [1e-6])
    ranks: list[PositiveInt] = Field(default_factory=lambda: [1, 10])
    chunk: PositiveInt = 16384                  # distractors per step: memory ~ 3 x probes x chunk x 4 bytes
    seed: int = 0                               # noisy probes: centre + uniform(-1e-3, 1e-3) noise

    @field_validator("fars")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        return _check_rates(v)


class YTFParams(Section):
    """YouTube Faces: video-pair verification, a video = the mean of its frame features."""

    frames: str                                 # aligned set dir; its manifest `source` is <video>/<frame>
    pairs: str                                  # splits.txt: split, video1, video2, match, same
    flip: bool = True                           # frame feature = emb(img) + emb(flipped img)
    normalize_frames: bool = True               # L2-normalise each frame feature before the mean
    max_frames: Optional[PositiveInt] = None    # use at most N frames per video (evenly spaced)
