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
    contact_sheet: PositiveInt = 48

    @field_validator("image_size")
    @classmethod
    def _template_size(cls, v: int) -> int:
        if v % 112 and v % 128:
            raise ValueError("image_size must be a multiple of 112 or 128 (the template is defined for those)")
        return v
