"""The config's lr_scheduler (flowrl.training.lr_schedulers.warmup_cosine), hand-worked."""

import math

import pytest
import torch

from flowrl.training.lr_schedulers import warmup_cosine


def _lrs(n: int, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, **kw)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_default_is_constant_bit_for_bit():
    # the default (both lengths 0) must leave the lr exactly as the optimizer got it: base x 1.0
    assert _lrs(5) == [1.0] * 5


def test_warmup_then_cosine_by_hand():
    # warm-up 2 steps: (0+1)/2, (1+1)/2; then a cosine over 4 steps to 0.1:
    # 0.1 + 0.9 * 0.5 * (1 + cos(pi * t)), t = 0, 1/4, 2/4, 3/4, then held at t = 1
    got = _lrs(8, warmup_steps=2, decay_steps=4, min_lr_ratio=0.1)
    want = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)) for t in (0, 0.25, 0.5, 0.75, 1, 1)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[2] == pytest.approx(1.0) and got[4] == pytest.approx(0.55) and got[-1] == pytest.approx(0.1)


def test_resumed_schedule_continues_where_it_stopped():
    # GRPOModule builds the lr_scheduler with last_epoch = optimizer steps done - 1 on resume:
    # the lr at step k is then the uninterrupted run's
    full = _lrs(7, warmup_steps=2, decay_steps=4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    warmup_cosine(opt, warmup_steps=2, decay_steps=4, last_epoch=3 - 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(full[3])


@pytest.mark.parametrize("kw", [{"warmup_steps": -1}, {"decay_steps": -2}, {"min_lr_ratio": 1.5}])
def test_bad_values_are_refused(kw):
    with pytest.raises(ValueError, match="lr_scheduler"):
        _lrs(1, **kw)
