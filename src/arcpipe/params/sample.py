"""params.yaml `sample`: the embedded, generated sample data set."""
from __future__ import annotations

from .base import NonNegInt, PositiveInt, Section


class SampleParams(Section):
    out_dir: str = "data/sample"
    seed: NonNegInt = 0
    identities: PositiveInt = 24
    images_per_identity: PositiveInt = 8
