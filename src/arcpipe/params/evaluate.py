"""params.yaml `evaluate` and `report`: benchmark protocols and the table beside the paper."""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .base import NAME, Device, PositiveInt, Section
from .evaluate_bench import IJBParams, MegaFaceParams, YTFParams

# metrics/<name>.json file names the stage itself or the other benchmarks use
RESERVED_NAMES = {"summary", "megaface", "ytf"}


class ModelParams(Section):
    """The face model to evaluate: an ONNX file, our TorchScript export, or the pixel baseline.

    onnx / torchscript need `path`; `sidecar` (YAML/JSON: input size, crop, mean, std, channel
    order, embedding size) defaults to the model path with suffix .json / .yaml.
    """

    kind: Literal["onnx", "torchscript", "pixels"] = "pixels"
    path: Optional[str] = None
    sidecar: Optional[str] = None

    @model_validator(mode="after")
    def _path_for_files(self) -> "ModelParams":
        if self.kind in ("onnx", "torchscript") and not self.path:
            raise ValueError(f"path is required for model kind {self.kind} (the .onnx / TorchScript file)")
        if self.kind == "pixels" and (self.path or self.sidecar):
            raise ValueError("the pixels baseline takes no path or sidecar")
        return self


class EvaluateParams(Section):
    model: ModelParams = Field(default_factory=ModelParams)
    # other models judged on the same verification packs, for comparison (metrics/baselines.json):
    # e.g. {pixels: {kind: pixels}, untrained: {kind: onnx, path: models/train/untrained.onnx}}
    baselines: dict[str, ModelParams] = Field(default_factory=dict)
    device: Device = "cpu"
    batch_size: PositiveInt = 64
    flip: bool = True
    # verification packs: {name: path to .bin}; writes metrics/<name>.json, plots/roc_<name>.csv
    verification: dict[str, str] = Field(default_factory=dict)
    folds: PositiveInt = 10
    far_target: float = Field(default=1e-3, gt=0, lt=1)
    metrics_dir: str = "metrics"
    plots_dir: str = "plots"
    # <name>.npz per benchmark: keys + float16 embeddings (+ norms), a cached DVC output
    embeddings_dir: str = "data/evaluate"
    # processes that read and align (decode) IJB / MegaFace / YTF images; the model runs in the stage
    workers: PositiveInt = 2
    # the large benchmarks: run only when their section is given
    # IJB sets by name, e.g. {ijbb: {root, target: IJBB, gallery: [S1, S2]}, ijbc: {root, target: IJBC}}:
    # metrics/<name>.json, plots/roc_<name>.csv; a name set to null is switched off
    ijb: dict[str, Optional[IJBParams]] = Field(default_factory=dict)
    megaface: Optional[MegaFaceParams] = None
    ytf: Optional[YTFParams] = None
    # switch benchmarks off without restating the others, by name: a verification set, an IJB
    # set, megaface, ytf or baselines. only: just these run; skip: these do not
    # (a variant `evaluate: {only: [lfw]}` judges on LFW alone)
    only: Optional[list[str]] = None
    skip: list[str] = Field(default_factory=list)

    def benchmark_names(self) -> list[str]:
        """Every benchmark the params configure, before only/skip."""
        names = [*self.verification, *(n for n, v in self.ijb.items() if v is not None)]
        names += [n for n in ("megaface", "ytf") if getattr(self, n) is not None]
        return names + (["baselines"] if self.baselines else [])

    def selected(self) -> "EvaluateParams":
        """These params with the benchmarks that only/skip switch off removed."""
        keep = set(self.only if self.only is not None else self.benchmark_names()) - set(self.skip)
        return self.model_copy(update={
            "verification": {k: v for k, v in self.verification.items() if k in keep},
            "ijb": {k: v for k, v in self.ijb.items() if k in keep and v is not None},
            "megaface": self.megaface if "megaface" in keep else None,
            "ytf": self.ytf if "ytf" in keep else None,
            "baselines": self.baselines if "baselines" in keep else {},
            "only": None, "skip": []})

    @field_validator("verification")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not NAME.fullmatch(name):
                raise ValueError(f"set name {name!r} must be letters, digits, '_', '-', '.' (it names metrics/{name}.json)")
            if name in RESERVED_NAMES:
                raise ValueError(f"set name {name!r} is reserved for another output file")
        return v

    @field_validator("ijb", mode="before")
    @classmethod
    def _ijb_by_name(cls, v):
        if isinstance(v, dict) and isinstance(v.get("root"), str):
            raise ValueError("expected IJB sets by name, e.g. {ijbc: {root: ..., target: IJBC}}")
        return v

    @field_validator("ijb")
    @classmethod
    def _ijb_names(cls, v: dict) -> dict:
        for name in v:
            if not NAME.fullmatch(name) or name in RESERVED_NAMES:
                raise ValueError(f"IJB set name {name!r} cannot name metrics/{name}.json")
        return v

    @model_validator(mode="after")
    def _distinct_names(self) -> "EvaluateParams":
        clash = sorted(set(self.verification) & set(self.ijb))
        if clash:
            raise ValueError(f"{clash[0]!r} names both a verification set and an IJB set")
        return self

    @model_validator(mode="after")
    def _known_switches(self) -> "EvaluateParams":
        known = self.benchmark_names()
        for key in ("only", "skip"):
            unknown = [n for n in (getattr(self, key) or []) if n not in known]
            if unknown:
                raise ValueError(f"{key}: no benchmark named {unknown[0]!r} is configured "
                                 f"(configured: {', '.join(known) or 'none'})")
        return self

    @model_validator(mode="after")
    def _distinct_dirs(self) -> "EvaluateParams":
        dirs = {"metrics_dir": self.metrics_dir, "plots_dir": self.plots_dir, "embeddings_dir": self.embeddings_dir}
        parts = {k: PurePosixPath(v.replace("\\", "/").rstrip("/") or ".").parts for k, v in dirs.items()}
        keys = list(dirs)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                pa, pb = parts[a], parts[b]
                if pa[:len(pb)] == pb or pb[:len(pa)] == pa:
                    raise ValueError(f"{a} {dirs[a]!r} and {b} {dirs[b]!r} must be separate folders "
                                     "(each holds one kind of file)")
        return self


class ReportParams(Section):
    """params.yaml `report`: the table beside the paper (results.md, .csv) and index.html, one
    self-contained page with the curves and images. The inputs of the sections beyond the table
    default (null) to where their stages write them; a section whose input is absent says so."""

    out_dir: str = "reports"
    # write index.html (inline CSS, images as data: URIs, curves as inline SVG) beside results.md
    html: bool = True
    # DVCLive folders whose plots/metrics/**/*.tsv are drawn, {run name: folder}; null:
    # {train: train.live_dir, train_bootstrap: train_bootstrap.live_dir}
    training: Optional[dict[str, str]] = None
    # alignment contact sheets (JPEG), {data set: file}; null: <align.out_dir>/<name>/contact_sheet.jpg
    # for every detect.datasets name; {} embeds none (each is about 0.1-0.3 MB in index.html)
    contact_sheets: Optional[dict[str, str]] = None
    # the clean stage's metrics file (counts per rule); null: clean.metrics
    clean_metrics: Optional[str] = None
    # the clean stage's folder with intra_similarity.png and nearest_centre.png; null: clean.out_dir
    clean_dir: Optional[str] = None

    @field_validator("training", "contact_sheets")
    @classmethod
    def _named(cls, v: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        for name, path in (v or {}).items():
            if not NAME.fullmatch(name):
                raise ValueError(f"name {name!r} must be letters, digits, '_', '-', '.'")
            if not path:
                raise ValueError(f"{name}: empty path")
        return v
