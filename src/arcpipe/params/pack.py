"""params.yaml `pack` and `evalpack`: RecordIO training packs and verification .bin packs."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import NonNegInt, PositiveInt, Section


class PackParams(Section):
    dataset: str = "train"
    out_dir: str = "data/pack"
    # JPEG quality of the packed images; equal to align.jpeg_quality -> bytes copied unchanged
    quality: int = Field(default=95, ge=1, le=100)
    # >1: train_000.rec ... each a complete pack over a contiguous block of identities
    shards: PositiveInt = 1
    # also write train_flat.rec: image records only, scalar labels, shuffled (DALI's reader)
    flat_shuffled: bool = True
    seed: NonNegInt = 0
    # fsync the .rec/.idx before renaming them into place
    durable: bool = True


class PackCleanParams(Section):
    # the raw pack (the pack stage's out_dir): its train.rec records are copied, labels patched
    pack_dir: str = "data/pack"
    # the clean stage's out_dir: kept.parquet (what stays, with its new label) and removals.parquet
    clean_dir: str = "data/clean"
    out_dir: str = "data/pack_clean"
    # JPEG quality of the packed images; null (or the raw pack's quality) -> the raw pack's bytes
    # copied unchanged; another value re-encodes the raw pack's JPEGs (a second lossy generation)
    quality: Optional[int] = Field(default=None, ge=1, le=100)
    # also write train_flat.rec: image records only, scalar labels, shuffled (DALI's reader)
    flat_shuffled: bool = True
    seed: NonNegInt = 0
    # fsync the .rec/.idx before renaming them into place
    durable: bool = True


class EvalPackSet(Section):
    """One verification set: its aligned detect dataset and its release's pairs (arcpipe.pairlists).

    protocol lfw: pairs.txt; cfp_fp / cfp_ff: CFP's Protocol/ folder; calfw / cplfw: the release's
    pairs_CALFW.txt / pairs_CPLFW.txt; list: "<image1> <image2> <1|0> [<fold>]" lines (AgeDB-30,
    whose pairs come from its authors, or any pairs of your own). folds: how many contiguous folds
    the protocols without fold marks (calfw, cplfw, a list without a fold column) are split into.
    """

    dataset: str
    pairs: str
    protocol: Literal["lfw", "cfp_fp", "cfp_ff", "calfw", "cplfw", "list"] = "lfw"
    folds: PositiveInt = 10


class EvalPackParams(Section):
    out_dir: str = "data/evalpack"
    sets: dict[str, EvalPackSet] = Field(default_factory=dict)
    # a pair naming an image with no crop: skip it and count it, or fail naming the pairs line
    on_missing: Literal["skip", "fail"] = "skip"
