"""params.yaml `features`: embeddings of a training pack or an aligned set under one face model
(the cleaning stage's input: data/features/<name>/)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import NAME, Device, PositiveInt, Section
from .evaluate import ModelParams



class FeatureSetParams(Section):
    # a pack folder (train.rec, train.idx, property) or an aligned set folder (faces.rec/.idx,
    # manifest.parquet); checked to exist when the stage runs, not when params are read
    source: str
    format: Literal["pack", "aligned"]


def _bootstrap_model() -> ModelParams:
    return ModelParams(kind="onnx", path="models/train_bootstrap/backbone.onnx")


def _train_pack() -> dict[str, FeatureSetParams]:
    return {"train": FeatureSetParams(source="data/pack", format="pack")}


class FeaturesParams(Section):
    out_dir: str = "data/features"
    # the model that embeds (the shape of evaluate.model): the bootstrap model trained on the raw pack
    model: ModelParams = Field(default_factory=_bootstrap_model)
    # what to embed, by name: data/features/<name>/ for each
    sets: dict[str, FeatureSetParams] = Field(default_factory=_train_pack)
    # >1: a pack's images are cut into this many contiguous blocks of whole identities, one job each
    shards: PositiveInt = 1
    # processes that decode the stored JPEGs; the model runs in the stage's own process
    workers: PositiveInt = 2
    batch_size: PositiveInt = 128
    device: Device = "cpu"
    # add the mirrored image's embedding (emb(img) + emb(flipped img)), as evaluate.flip does
    flip: bool = False

    @field_validator("sets")
    @classmethod
    def _names(cls, v: dict) -> dict:
        for name in v:
            if not NAME.fullmatch(name):
                raise ValueError(f"set name {name!r} must be letters, digits, '_', '-', '.' "
                                 f"(it names the folder <out_dir>/{name})")
        return v
