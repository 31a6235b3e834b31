"""Training checkpoints: everything a run needs to continue as if it had never stopped.

    <checkpoint_dir>/<run id>/step-00001200.pt      (the last KEEP are kept)
    <checkpoint_dir>/<run id>/run.json              the params that define the run

A run id is the digest of what decides the weights (the train params except paths, logging and
export, the class count, the world size, and the inputs the stage names: the pack's bytes and the
code's), so a variant of the params, another pack or changed code trains in a folder of its own
and resumes only its own checkpoints. A checkpoint named explicitly (`train.resume_from`)
whose run differs is refused, naming the first differing key, unless `train.restart` is true.

A checkpoint holds the backbone, the head (each rank's shard of class centres), both optimisers,
the step, the epoch and the position inside it, the grad scaler, and every RNG state (python,
numpy, torch, CUDA) of every rank. It is written to a temporary file, fsynced and renamed, so a
run killed while saving leaves the previous checkpoint as the last good one.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import PipelineError
from ..fsutil import atomic_path, digest_of, write_json_atomic

KEEP = 2
# train params that do not change the weights a run ends with
NOT_IN_RUN_ID = ("pack_dir", "out_dir", "checkpoint_dir", "live_dir", "device", "workers", "checkpoint_every",
                 "log_every", "verify_every", "verification", "export", "restart", "resume_from")
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def run_definition(train_params, num_classes: int, world_size: int,
                   inputs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    d = {k: v for k, v in train_params.model_dump(mode="json").items() if k not in NOT_IN_RUN_ID}
    out = {"train": d, "num_classes": int(num_classes), "world_size": int(world_size)}
    if inputs:
        out["inputs"] = dict(inputs)
    return out


def run_id(definition: dict[str, Any]) -> str:
    return digest_of(definition)


def run_dir(checkpoint_dir: str | os.PathLike, definition: dict[str, Any]) -> Path:
    return Path(checkpoint_dir) / run_id(definition)


def latest(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint in a run folder (None when there is none)."""
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    return found[-1][1] if found else None


def rng_states() -> dict[str, Any]:
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(folder: Path, definition: dict[str, Any], state: dict[str, Any], step: int) -> Path:
    """Write step-<step>.pt atomically (fsynced), then drop all but the newest KEEP."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "run.json").is_file():
        write_json_atomic(folder / "run.json", definition)
    path = folder / f"step-{step:08d}.pt"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"definition": definition, "step": step, **state}, f)
            f.flush()
            os.fsync(f.fileno())
    for old in sorted(p for p in folder.iterdir() if _NAME.match(p.name))[:-KEEP]:
        old.unlink()
    return path


def load(path: Path, definition: dict[str, Any], restart: bool, section: str = "train") -> Optional[dict[str, Any]]:
    """The checkpoint at `path` if it belongs to this run; None when it does not and restart is set."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own files
    except Exception as e:
        raise PipelineError(f"{path}: cannot read the checkpoint: {str(e).splitlines()[0]}") from None
    theirs = ckpt.get("definition") or {}
    if theirs != definition:
        if restart:
            return None
        key, a, b = first_difference(theirs, definition)
        what = "data or code" if key.startswith("inputs.") else "params"
        raise PipelineError(f"{path}: made with other {what} ({key}: {a!r} there, {b!r} now); set "
                            f"{section}.restart: true to start over, or resume a checkpoint of this run")
    return ckpt


def first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                key = f"{prefix}.{k}" if prefix else k
                return first_difference(a.get(k), b.get(k), key)
    return (prefix or "(all)", a, b)
