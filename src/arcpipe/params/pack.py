"""params.yaml `pack` and `evalpack`: RecordIO training packs and verification .bin packs."""
from __future__ import annotations

from pydantic import Field

from .base import NonNegInt, PositiveInt, Section


class PackParams(Section):
    dataset: str = "train"
    out_dir: str = "data/pack"
    quality: int = Field(default=95, ge=1, le=100)
    shards: PositiveInt = 1
    flat_shuffled: bool = True
    seed: NonNegInt = 0


class EvalPackSet(Section):
    dataset: str
    pairs: str


class EvalPackParams(Section):
    out_dir: str = "data/evalpack"
    sets: dict[str, EvalPackSet] = Field(default_factory=dict)
