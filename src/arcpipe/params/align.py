"""params.yaml `align`: five-point similarity alignment to the ArcFace template."""
from __future__ import annotations

from pydantic import Field, field_validator

from .base import PositiveInt, Section


class AlignParams(Section):
    out_dir: str = "data/align"
    image_size: PositiveInt = 112
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    shards: PositiveInt = 1
    workers: PositiveInt = 1
    # aligned crops shown on data/align/<name>/contact_sheet.jpg (rejects are added after them)
    contact_sheet: PositiveInt = 48
    # pixels added around a box given with the data (given_box fallback), as the reference scripts
    box_margin: float = Field(default=44.0, ge=0)

    @field_validator("image_size")
    @classmethod
    def _template_size(cls, v: int) -> int:
        if v % 112 and v % 128:
            raise ValueError("image_size must be a multiple of 112 or 128 (the template is defined for those)")
        return v
