"""params.yaml `detect`: MTCNN detection, one job per data set (and per shard)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from .base import PositiveFloat, PositiveInt, Section

InputFormat = Literal["folder", "ms1m_tsv", "archive", "rec", "lfw", "cfp", "agedb", "calfw", "cplfw", "ijb",
                      "megaface"]
Preset = Literal["lfw", "ytf", "ms1m", "megaface", "deploy"]
NoFacePolicy = Literal["drop", "center_crop", "given_box"]


class DetectDataset(Section):
    source: str
    format: InputFormat
    preset: Preset = "deploy"
    minsize: Optional[PositiveInt] = None
    thresholds: Optional[list[float]] = None
    factor: Optional[float] = Field(default=None, gt=0, lt=1)
    no_face: Optional[NoFacePolicy] = None

    @field_validator("thresholds")
    @classmethod
    def _three_probs(cls, v):
        if v is not None and (len(v) != 3 or not all(0 <= t <= 1 for t in v)):
            raise ValueError("expected three thresholds between 0 and 1 (P-Net, R-Net, O-Net)")
        return v


class DetectParams(Section):
    out_dir: str = "data/detect"
    datasets: dict[str, DetectDataset] = Field(default_factory=dict)
    shards: PositiveInt = 1
    workers: PositiveInt = 1
    device: str = "cpu"
    batch_size: PositiveInt = 32
    max_pixels: PositiveInt = 50_000_000
    min_face_score: PositiveFloat = 0.5
