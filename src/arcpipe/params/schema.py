"""The root of params.yaml: one section per stage, plus cross-section checks."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from .align import AlignParams
from .base import Section
from .clean import CleanParams
from .detect import DetectParams
from .download import DownloadParams
from .evaluate import EvaluateParams, ReportParams
from .features import FeaturesParams
from .pack import EvalPackParams, PackCleanParams, PackParams
from .sample import SampleParams
from .train import TrainBootstrapParams, TrainParams


class Params(Section):
    download: DownloadParams = Field(default_factory=DownloadParams)
    sample: SampleParams = Field(default_factory=SampleParams)
    detect: DetectParams = Field(default_factory=DetectParams)
    align: AlignParams = Field(default_factory=AlignParams)
    pack: PackParams = Field(default_factory=PackParams)
    evalpack: EvalPackParams = Field(default_factory=EvalPackParams)
    train_bootstrap: TrainBootstrapParams = Field(default_factory=TrainBootstrapParams)
    train: TrainParams = Field(default_factory=TrainParams)
    features: FeaturesParams = Field(default_factory=FeaturesParams)
    clean: CleanParams = Field(default_factory=CleanParams)
    pack_clean: PackCleanParams = Field(default_factory=PackCleanParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    report: ReportParams = Field(default_factory=ReportParams)

    @model_validator(mode="after")
    def _cross_refs(self) -> "Params":
        names = set(self.detect.datasets)
        if self.detect.datasets and self.pack.dataset not in names:
            raise ValueError(
                f"pack.dataset: {self.pack.dataset!r} is not one of detect.datasets ({', '.join(sorted(names))})"
            )
        for set_name, s in self.evalpack.sets.items():
            if s.dataset not in names:
                raise ValueError(
                    f"evalpack.sets.{set_name}.dataset: {s.dataset!r} is not one of detect.datasets "
                    f"({', '.join(sorted(names))})"
                )
        return self

    @classmethod
    def model_json_schema_keys(cls) -> dict[str, Any]:
        """Nested dict of the known keys, for 'did you mean' hints on unknown keys."""
        return _keys(cls)


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        out[name] = _keys(ann) if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return out
