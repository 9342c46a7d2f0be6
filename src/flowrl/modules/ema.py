"""Exponential moving average of the trained weights (optional: `train.ema_decay` > 0).

    ema <- decay * ema + (1 - decay) * theta        after every optimizer step

Evaluation and the saved final model use the averaged weights (`swapped_in`), training keeps the
raw ones. Costs one fp32 copy of the trainable parameters (the LoRA weights only, with an adapter).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach().float(), 1 - self.decay)

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
        return {"decay": self.decay, "shadow": self.shadow}
