"""params.yaml `evaluate` and `report`: benchmark protocols and the table beside the paper."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .base import PositiveInt, Section


class ModelParams(Section):
    kind: Literal["onnx", "torchscript", "pixels"] = "pixels"
    path: Optional[str] = None
    sidecar: Optional[str] = None


class EvaluateParams(Section):
    model: ModelParams = Field(default_factory=ModelParams)
    device: str = "cpu"
    batch_size: PositiveInt = 64
    flip: bool = True
    verification: dict[str, str] = Field(default_factory=dict)
    metrics_dir: str = "metrics"
    plots_dir: str = "plots"


class ReportParams(Section):
    out_dir: str = "reports"
