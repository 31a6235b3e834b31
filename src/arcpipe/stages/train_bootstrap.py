"""The bootstrap model for cleaning: the train stage on the raw pack, params section train_bootstrap.

    python scripts/train_bootstrap.py      (torchrun --nproc-per-node N for DDP, as train)

Sub-center ArcFace (K = 3) by default: its backbone embeds the raw images for the features stage
and its class sub-centres (centres.npy) are what the clean stage's subcenter rule measures angles
to. Writes <train_bootstrap.out_dir> (models/train_bootstrap/) exactly as the train stage writes
models/train/; checkpoints resume the same way.
"""
from __future__ import annotations

from typing import Any

from .train import run_section

__all__ = ["run"]


def run(ctx) -> dict[str, Any]:
    return run_section(ctx, ctx.params.train_bootstrap)
