"""Where this process runs: plain `python` (one process) or one rank of `torchrun` (DDP).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT or a c10d rendezvous); the
process group uses NCCL on CUDA and gloo on CPU. Rank 0 alone writes outputs and logs to the
terminal; every rank logs to logs/train.rank<R>.log.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import PipelineError


@dataclass(frozen=True)
class Place:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise PipelineError(f"environment: {name}={raw!r} is not a number (set by torchrun)") from None


def setup(device: str, timeout_s: float = 1800.0, section: str = "train") -> Place:
    """Read torchrun's environment, start the process group when there are several ranks."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PipelineError(f"{section}.device: {device}: this machine has no CUDA device (torch {torch.__version__})")
        dev = torch.device(f"cuda:{local}") if device == "cuda" else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except Exception as e:  # a rendezvous that times out, an unreachable master
            raise PipelineError(f"rank {rank} of {world}: cannot join the process group ({backend}): "
                                f"{' '.join(str(e).split())[:300]}") from None
    return Place(rank, world, local, dev)


def teardown(place: Place) -> None:
    if place.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(place: Place) -> None:
    if place.distributed:
        dist.barrier()


def gather_objects(place: Place, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (gloo/NCCL object collective)."""
    if not place.distributed:
        return [obj]
    out = [None] * place.world_size
    dist.all_gather_object(out, obj)
    return out


def all_finite(place: Place, value: torch.Tensor) -> bool:
    """Is `value` finite on every rank (so all ranks stop together on a NaN)?"""
    flag = torch.tensor([float(torch.isfinite(value).all())], device=value.device)
    if place.distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)
