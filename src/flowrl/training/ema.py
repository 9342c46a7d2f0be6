"""Exponential moving average of the trained weights (optional: `method.ema.decay` > 0).

    ema <- d * ema + (1 - d) * theta        every `every`-th optimizer step

with d = decay, or, with `warmup` (flow_grpo's `EMAModuleWrapper`), d = min((1 + s) / (10 + s),
decay) at optimizer step s, so the average starts from the live weights. The values each method
uses, and how its official script applies them, are in its yaml (`method.ema`); flowrl averages
once per optimizer step. Evaluation and the saved final model use the averaged weights (`swapped_in`), training keeps the raw ones. Costs one fp32 copy of the
trainable parameters (the LoRA weights only, with an adapter).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

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

    def swapped_in(self):
        """Within the block the parameters hold the averaged weights; restored after."""
        return swapped(self.params, self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "every": self.every, "warmup": self.warmup, "shadow": self.shadow}


@contextmanager
def swapped(params: list[torch.nn.Parameter], values: list[torch.Tensor]):
    """Within the block `params` hold `values` (cast to their dtype); their own values restored after."""
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for v, p in zip(values, params, strict=True):
            p.copy_(v.to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for b, p in zip(backup, params, strict=True):
                p.copy_(b)


class PolicyCopies:
    """The weight copies a plan's objective reads (plan.policies: DiffusionNFT's old policy, AWM's
    KL EMA), kept beside the trained weights. A copy starts equal to the weights the first plan
    that names it sees (theta_0) and after every iteration's optimizer steps moves to
    d * copy + (1 - d) * theta with d = PolicyCopy.decay(optimizer steps so far), as the official
    scripts soft-update once per epoch. One fp32 copy of the trainable parameters each."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = list(params)
        self.shadow: dict[str, list[torch.Tensor]] = {}

    def ensure(self, plan) -> None:
        for c in plan.policies:
            if c.name not in self.shadow:
                self.shadow[c.name] = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def after_iteration(self, plan, optimizer_steps: int) -> None:
        for c in plan.policies:
            d = c.decay(optimizer_steps)
            for s, p in zip(self.shadow[c.name], self.params, strict=True):
                s.mul_(d).add_(p.detach().float(), alpha=1 - d)

    def swapped_in(self, name: str):
        if name not in self.shadow:
            raise KeyError(f"no policy copy {name!r} (kept: {sorted(self.shadow)})")
        return swapped(self.params, self.shadow[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{i}": s.contiguous() for name, shadow in self.shadow.items() for i, s in enumerate(shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = {k.rsplit(".", 1)[0] for k in state}
        self.shadow = {n: [state[f"{n}.{i}"].to(p.device) for i, p in enumerate(self.params)] for n in names}

    def sampling(self, plan):
        """The block runs under the copy the plan samples with (DiffusionNFT: the old policy), else as is."""
        self.ensure(plan)
        name = next((c.name for c in plan.policies if c.samples), None)
        return self.swapped_in(name) if name is not None else nullcontext()
