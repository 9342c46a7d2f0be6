"""lr_schedulers the config can name (`lr_scheduler:` in conf/train.yaml, instantiated by Hydra with
`_partial_: true`; the module calls it with the optimizer once Lightning asks for it). Stepped once
per applied optimizer step, so a schedule's length is counted in optimizer steps."""

from __future__ import annotations

import math


def warmup_cosine(optimizer, warmup_steps: int = 0, decay_steps: int = 0, min_lr_ratio: float = 0.0, last_epoch: int = -1):
    """lr = base lr x factor(step): a linear warm-up over `warmup_steps` ((s + 1) / warmup), then a
    cosine from 1 down to `min_lr_ratio` over `decay_steps` (held there after). Both 0: constant
    (the default: no official script of flowrl's methods schedules its lr)."""
    from torch.optim.lr_scheduler import LambdaLR

    if warmup_steps < 0 or decay_steps < 0 or not 0 <= min_lr_ratio <= 1:
        raise ValueError(
            f"lr_scheduler: warmup_steps and decay_steps must be >= 0 and min_lr_ratio in [0, 1], got "
            f"{warmup_steps}, {decay_steps}, {min_lr_ratio}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay_steps == 0:
            return 1.0
        t = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor, last_epoch=last_epoch)
