"""params.yaml `clean`: the MS1MV2-style rules over the bootstrap model's features (arcpipe.clean.rules)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from .base import PositiveInt, Section

RuleName = Literal["subcenter", "intra", "nearest", "inter", "overlap", "min_images"]


class SubcenterRuleParams(Section):
    enabled: bool = True
    # degrees from the class's dominant sub-centre (the one most of its images are nearest);
    # farther images go (75: the sub-center ArcFace authors' cut)
    max_angle_deg: float = Field(default=75.0, ge=0, le=180)


class IntraRuleParams(Section):
    enabled: bool = True
    # images whose cosine to their identity's robust centre is below this go
    min_cos: float = Field(default=0.25, ge=-1, le=1)
    # while the robust centre is found, images below this cosine do not shape it
    robust_cut: float = Field(default=0.25, ge=-1, le=1)
    # rounds of re-averaging without those images (0: the plain mean)
    passes: int = Field(default=2, ge=0)


class NearestRuleParams(Section):
    # off by default: the paper's MS1MV2 recipe has no such rule (the sample's noise calls for it)
    enabled: bool = False
    # images whose cosine to another identity's centre beats their own by more than this go
    margin: float = Field(default=0.3, ge=0, le=2)
    # ... and only when their cosine to their own centre is below this
    candidate_max_cos: float = Field(default=0.5, ge=-1, le=1)


class InterRuleParams(Section):
    enabled: bool = True
    # identities whose centres have a cosine above this are one person under several labels
    max_cos: float = Field(default=0.7, ge=-1, le=1)
    # merge: their images join the largest label; drop: only the largest label stays
    action: Literal["merge", "drop"] = "merge"


class OverlapRuleParams(Section):
    enabled: bool = True
    # identities this close (cosine) to any evaluation-set identity go (0.4: the MegaFace rule)
    max_cos: float = Field(default=0.4, ge=-1, le=1)


class MinImagesRuleParams(Section):
    enabled: bool = True
    # identities left with fewer images than this go
    min_images: PositiveInt = 2


class CleanParams(Section):
    # the bootstrap model's features of the training pack (a FeatureStore folder)
    features_dir: str = "data/features/train"
    # the bootstrap training's output: centres.npy, the head's (C, K, D) float32 sub-centres
    bootstrap_dir: str = "models/train_bootstrap"
    # the raw pack the features were made from: its manifest's packed keys must be the store's keys
    pack_dir: str = "data/pack"
    # evaluation sets' FeatureStore folders, {name: folder}, for the overlap rule
    eval_features: dict[str, str] = Field(default_factory=dict)
    out_dir: str = "data/clean"
    # counts per rule, images and identities in and out (a DVC metrics file)
    # not under metrics/, which is the evaluate stage's output folder
    metrics: str = "cleaning/metrics.json"
    # the embedded sample's ground_truth.json: precision and recall per injected noise kind go
    # into the metrics file too (arcpipe.clean.quality); null for real data sets
    ground_truth: Optional[str] = None
    # the order the rules run in, each exactly once (switch one off with its `enabled`)
    order: list[RuleName] = Field(default_factory=lambda: ["subcenter", "intra", "nearest", "inter", "overlap",
                                                          "min_images"])
    # feature rows read at a time: memory is about 16 x chunk x dim bytes plus the (C, D) centres
    chunk: PositiveInt = 65536
    subcenter: SubcenterRuleParams = Field(default_factory=SubcenterRuleParams)
    intra: IntraRuleParams = Field(default_factory=IntraRuleParams)
    nearest: NearestRuleParams = Field(default_factory=NearestRuleParams)
    inter: InterRuleParams = Field(default_factory=InterRuleParams)
    overlap: OverlapRuleParams = Field(default_factory=OverlapRuleParams)
    min_images: MinImagesRuleParams = Field(default_factory=MinImagesRuleParams)

    @field_validator("order")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        missing = [n for n in RuleName.__args__ if n not in v]
        twice = sorted({n for n in v if v.count(n) > 1})
        if missing or twice:
            raise ValueError(f"each rule exactly once: {'missing ' + ', '.join(missing) if missing else ''}"
                             f"{'; ' if missing and twice else ''}{'twice ' + ', '.join(twice) if twice else ''}")
        return v
