"""params.yaml `train`: ArcFace training from the pack stage's train.rec (one process, or torchrun)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from .base import Device, NonNegInt, PositiveFloat, PositiveInt, Section, UnitFloat


class BackboneParams(Section):
    # r18 r34 r50 r100 r200 (iResNet) or mbf (MobileFaceNet): arcpipe.train.backbones
    name: str = "r50"
    embedding_size: PositiveInt = 512
    dropout: UnitFloat = 0.0
    # channel multiplier and blocks per stage: small settings train the sample on a CPU
    width: PositiveFloat = 1.0
    layers: Optional[list[PositiveInt]] = None


class HeadParams(Section):
    # softmax | norm_softmax | arcface | cosface | sphereface | combined | subcenter: arcpipe.train.losses
    kind: str = "arcface"
    s: PositiveFloat = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0
    # sub-centres per class (subcenter ArcFace); 1 otherwise
    k: PositiveInt = 1
    # Partial FC: share of negative class centres sampled per step (1.0 = all: full softmax)
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    # past theta = pi - m2: insightface (the reference's cos - m2*sin(m2), for m1 = 1) | exact
    # (continuous; always used for m1 != 1): arcpipe.train.losses
    falloff: Literal["insightface", "exact"] = "insightface"


class ScheduleParams(Section):
    # step: lr x gamma at each milestone (steps); poly: arcface_torch's polynomial decay with warmup
    kind: Literal["step", "poly"] = "poly"
    milestones: list[PositiveInt] = Field(default_factory=list)
    gamma: PositiveFloat = 0.1
    warmup_steps: NonNegInt = 0
    power: PositiveFloat = 2.0


class TrainParams(Section):
    pack_dir: str = "data/pack"
    out_dir: str = "models/train"
    # one folder per run id inside (arcpipe.train.checkpoint)
    checkpoint_dir: str = "models/checkpoints/train"
    # DVCLive folder: metrics.json (loss, lr, verification accuracy) and plots/ per step
    live_dir: str = "dvclive"
    # must equal the pack's `property` when given; null: read it from there
    num_classes: Optional[PositiveInt] = None
    device: Device = "cpu"
    # ranks per machine (one per GPU): above 1, `python scripts/train.py` starts them itself through
    # torchrun (--standalone); under torchrun already, it must equal --nproc-per-node
    processes: PositiveInt = 1
    # machines: above 1, one launcher per node under srun (the Snakemake rule starts them;
    # by hand: `srun --nodes N --ntasks-per-node 1 python scripts/train.py ...`), c10d rendezvous
    # on the first node of the allocation at rendezvous_port
    nodes: PositiveInt = 1
    rendezvous_port: int = Field(default=29500, ge=1024, le=65535)
    # seconds the nodes have to meet there before the launchers give up (torchrun's join_timeout)
    rendezvous_timeout_s: PositiveInt = 600
    backbone: BackboneParams = Field(default_factory=BackboneParams)
    head: HeadParams = Field(default_factory=HeadParams)
    # global batch over all ranks (each rank takes batch_size / world size)
    batch_size: PositiveInt = 128
    epochs: PositiveInt = 20
    # stop after this many steps (null: epochs x steps per epoch)
    max_steps: Optional[PositiveInt] = None
    lr: PositiveFloat = 0.1
    momentum: UnitFloat = 0.9
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    # mixed precision: fp16 (CUDA, with a grad scaler) or bf16; null = float32
    amp: Optional[Literal["fp16", "bf16"]] = None
    # clip the gradient norm of the backbone and head to this (null: no clipping)
    grad_clip: Optional[PositiveFloat] = None
    seed: NonNegInt = 0
    # torch: train.rec through a DataLoader; dali: the pack's flat shuffled copy (train_flat.rec)
    # through NVIDIA DALI, decoding on the GPU under CUDA (needs nvidia-dali: arcpipe.train.dali)
    loader: Literal["torch", "dali"] = "torch"
    # DataLoader worker processes per rank (DALI: its decoding threads)
    workers: NonNegInt = 2
    # checkpoint every this many steps (and at every epoch's end); logging and verification likewise
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 10
    verify_every: PositiveInt = 500
    # .bin packs run through the 10-fold protocol while training: {name: path}
    verification: dict[str, str] = Field(default_factory=dict)
    export: list[Literal["onnx", "torchscript"]] = Field(default_factory=lambda: ["onnx", "torchscript"])
    # resume this checkpoint file instead of the newest of this run's own (arcpipe.train.checkpoint)
    resume_from: Optional[str] = None
    # a checkpoint made with other params is refused unless this is true (then training starts over)
    restart: bool = False

    @model_validator(mode="after")
    def _checks(self) -> "TrainParams":
        if self.amp == "fp16" and self.device == "cpu":
            raise ValueError("amp fp16 needs a CUDA device; on cpu use bf16 or null")
        if self.schedule.kind == "step" and sorted(self.schedule.milestones) != list(self.schedule.milestones):
            raise ValueError("schedule.milestones must be increasing step numbers")
        dirs = {"out_dir": self.out_dir, "checkpoint_dir": self.checkpoint_dir, "live_dir": self.live_dir}
        norm = {k: v.rstrip("/") for k, v in dirs.items()}
        for a in norm:
            for b in norm:
                if a < b and (norm[a] == norm[b] or norm[a].startswith(norm[b] + "/")
                              or norm[b].startswith(norm[a] + "/")):
                    raise ValueError(f"{a} {dirs[a]!r} and {b} {dirs[b]!r} must be separate folders")
        return self


class TrainBootstrapParams(TrainParams):
    """params.yaml `train_bootstrap`: the train stage on the raw pack, whose model and class
    sub-centres the cleaning stage judges the raw images with (sub-center ArcFace, K = 3, as its
    authors clean raw web faces). The same schema as `train`, other defaults."""
    out_dir: str = "models/train_bootstrap"
    checkpoint_dir: str = "models/checkpoints/train_bootstrap"
    live_dir: str = "dvclive/train_bootstrap"
    head: HeadParams = Field(default_factory=lambda: HeadParams(kind="subcenter", k=3))
