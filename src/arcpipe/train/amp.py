"""Mixed precision: autocast dtype, a loss scaler for fp16 that every rank agrees with, and
gradient clipping by the norm of the whole model (the head's centres are sharded over ranks).

A per-rank GradScaler would skip or shrink on an overflow seen in one rank's shard of centres
only, and the ranks' copies of the backbone would drift apart; here the overflow check is
all-reduced, so every rank skips the same steps and keeps the same scale.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist

from .dist import Place


def autocast_dtype(amp: Optional[str]):
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp or "")


def _sq_norm(params: Iterable[torch.nn.Parameter], device) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        if p.grad is not None:
            total += p.grad.detach().double().pow(2).sum()
    return total


class LossScaler:
    """Dynamic loss scale for fp16 (init 2^16, halved on an overflow anywhere, doubled after
    `growth_interval` clean steps); a no-op when disabled (float32, bf16)."""

    def __init__(self, enabled: bool, init: float = 2.0 ** 16, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = float(init) if enabled else 1.0
        self.growth_interval = growth_interval
        self.clean_steps = 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale_and_check(self, place: Place, backbone, head, clip: Optional[float]) -> bool:
        """Unscale the gradients, clip the global norm; False (skip this step) when any rank
        saw an inf/NaN. Backbone gradients are the same on every rank (DDP); the head's are
        per shard, so their squared norms are summed over ranks."""
        bb, hd = list(backbone.parameters()), list(head.parameters())
        if self.enabled:
            inv = 1.0 / self.scale
            for p in bb + hd:
                if p.grad is not None:
                    p.grad.mul_(inv)
        dev = next(iter(bb)).device
        head_sq = _sq_norm(hd, dev)
        if place.distributed:
            dist.all_reduce(head_sq)
        total_sq = _sq_norm(bb, dev) + head_sq
        finite = bool(torch.isfinite(total_sq))
        if self.enabled:
            if not finite:
                self.scale /= 2.0
                self.clean_steps = 0
                return False
            self.clean_steps += 1
            if self.clean_steps % self.growth_interval == 0:
                self.scale *= 2.0
        if clip and finite:
            norm = float(total_sq.sqrt())
            if norm > clip:
                k = clip / (norm + 1e-6)
                for p in bb + hd:
                    if p.grad is not None:
                        p.grad.mul_(k)
        return finite

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
