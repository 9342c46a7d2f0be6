"""Exponential moving average of the trained weights (optional: `method.ema.decay` > 0).

    ema <- d * ema + (1 - d) * theta        every `every`-th optimizer step

with d = decay, or, with `warmup` (flow_grpo's `EMAModuleWrapper`), d = min((1 + s) / (10 + s),
decay) at optimizer step s, so the average starts from the live weights. The values each method
uses, and how its official script applies them, are in its yaml (`method.ema`); flowrl averages
once per optimizer step. Evaluation and the saved final model use the averaged weights (`swapped_in`), training keeps the raw ones. Costs one fp32 copy of the
trainable parameters (the LoRA weights only, with an adapter).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, every: int = 1, warmup: bool = False):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"ema every must be >= 1, got {every}")
        self.params = list(params)
        self.decay = float(decay)
        self.every = int(every)
        self.warmup = bool(warmup)
        self.shadow = [p.detach().float().clone() for p in self.params]

    def decay_at(self, step: int) -> float:
        return min((1 + step) / (10 + step), self.decay) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int = 0) -> None:
        """After optimizer step number `step` (0-based): average in when (step + 1) % every == 0."""
        if (step + 1) % self.every:
            return
        d = self.decay_at(step)
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1 - d)

    @contextmanager
    def swapped_in(self):
        """Within the block the parameters hold the averaged weights; restored after."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, self.params, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "every": self.every, "warmup": self.warmup, "shadow": self.shadow}
