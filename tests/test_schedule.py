"""Learning-rate schedules by step: the paper's steps and arcface_torch's polynomial decay."""
import math

import pytest
import torch

from arcpipe.params.train import ScheduleParams
from arcpipe.train.schedule import lr_at


def test_step_schedule_is_the_papers():
    s = ScheduleParams(kind="step", milestones=[100000, 160000], gamma=0.1)
    assert lr_at(0, 0.1, s, 180000) == 0.1
    assert lr_at(99999, 0.1, s, 180000) == 0.1
    assert lr_at(100000, 0.1, s, 180000) == pytest.approx(0.01)
    assert lr_at(160000, 0.1, s, 180000) == pytest.approx(0.001)


def test_poly_with_warmup_matches_the_closed_form():
    s = ScheduleParams(kind="poly", warmup_steps=10, power=2.0)
    total = 110
    assert [lr_at(i, 1.0, s, total) for i in range(3)] == [0.1, 0.2, 0.3]
    assert lr_at(9, 1.0, s, total) == 1.0
    for step in (10, 35, 60, 109):
        assert lr_at(step, 1.0, s, total) == pytest.approx((1 - (step - 10) / 100) ** 2)
    assert lr_at(total, 1.0, s, total) == 0.0 and lr_at(total + 5, 1.0, s, total) == 0.0
    lrs = [lr_at(i, 0.1, s, total) for i in range(10, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and math.isclose(lrs[0], 0.1)


def test_poly_equals_torch_polynomial_lr_without_warmup():
    s = ScheduleParams(kind="poly", warmup_steps=0, power=2.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=50, power=2.0)
    for step in range(50):
        assert lr_at(step, 0.1, s, 50) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        sched.step()
