"""Learning-rate schedules, by optimiser step: the paper's steps and arcface_torch's polynomial decay.

    lr_at(step, base_lr, params.train.schedule, total_steps)

step   base_lr x gamma^(milestones passed): the paper's MS1MV2 run is lr 0.1 divided by 10 at
       100K and 160K iterations (milestones [100000, 160000]), stopped at 180K.
poly   linear warmup over warmup_steps, then base_lr x (1 - (t - w) / (T - w))^power, as
       arcface_torch's PolynomialLRWarmup gives at each step (closed form).

A pure function of the step, so a resumed run is on exactly the schedule of an uninterrupted one.
"""
from __future__ import annotations

import bisect


def lr_at(step: int, base_lr: float, schedule, total_steps: int) -> float:
    """The learning rate for optimiser step `step` (0-based: the first update uses step 0)."""
    if schedule.kind == "step":
        return base_lr * schedule.gamma ** bisect.bisect_right(list(schedule.milestones), step)
    w = int(schedule.warmup_steps)
    if w and step < w:
        return base_lr * (step + 1) / w
    t = max(int(total_steps), w + 1)
    frac = min(max(step - w, 0), t - w) / (t - w)
    return base_lr * (1.0 - frac) ** schedule.power
