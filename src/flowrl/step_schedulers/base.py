"""The step-scheduler interface: where a GRPO variant puts its stochasticity, how it groups
samples, which steps it trains. Everything else (model, rollout engine, loss, trainer) is shared.

A step scheduler turns the noise schedule into a StepPlan and rewards into advantages. Sigma
indices run 0..T (sigmas[0] = 1 is noise, sigmas[T] = 0 the image); a Jump start -> stop is one
model evaluation (NFE) that moves x from sigmas[start] to sigmas[stop].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from flowrl.sampling.steps import SDEStepOutput, dance_sde_step, sde_step


@dataclass(frozen=True)
class Jump:
    """One stochastic transition sigmas[start] -> sigmas[stop] (stop > start), one NFE."""

    start: int
    stop: int

    def to_dict(self) -> dict[str, int]:
        return {"start": self.start, "stop": self.stop}


@dataclass
class Branch:
    """G samples leave the anchor state x_start with one SDE jump, then follow each deterministic
    completion (a list of sigma indices from jump.stop to the end) to a scored image."""

    jump: Jump
    completions: list[list[int]]


@dataclass
class StepPlan:
    """What to roll out for one prompt, and what it costs. Crosses scheduler -> engine -> module."""

    method: str
    num_steps: int  # T
    group_size: int  # G
    trajectory: str  # "sde": G full stochastic trajectories | "anchor": ODE anchor + branches
    jumps: list[Jump]  # the stochastic jumps of one generation
    trained_per_generation: int  # how many of them get a policy-gradient term per iteration
    same_initial_noise: bool  # the G samples of a group start from the same x_1
    branches: list[Branch] = field(default_factory=list)  # "anchor" only
    note: str = ""  # how trained steps are chosen, in words

    def nfe_per_generation(self) -> int:
        """Model evaluations behind one of the G samples (anchor steps, shared, not counted)."""
        if self.trajectory == "sde":
            return self.num_steps
        return sum(1 + sum(len(c) - 1 for c in b.completions) for b in self.branches)

    def anchor_nfe(self) -> int:
        """ODE steps of the shared anchor trajectory needed to reach the last branch point."""
        return max((b.jump.start for b in self.branches), default=0)

    def budget(self) -> dict[str, int]:
        """Per-prompt cost: NFE, reward-model queries, backward passes (= trained steps)."""
        g = self.group_size
        if self.trajectory == "sde":
            rewards = g
        else:
            rewards = g * sum(len(b.completions) for b in self.branches)
        return {
            "nfe_per_generation": self.nfe_per_generation(),
            "nfe_per_prompt": self.anchor_nfe() + g * self.nfe_per_generation(),
            "reward_queries_per_prompt": rewards,
            "trained_steps_per_prompt": g * self.trained_per_generation,
        }

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "num_steps": self.num_steps,
            "group_size": self.group_size,
            "trajectory": self.trajectory,
            "same_initial_noise": self.same_initial_noise,
            "branches": [j.to_dict() for j in self.jumps],
            "completions": [b.completions for b in self.branches],
            "trained_per_generation": self.trained_per_generation,
            "trained_steps": self.note,
            **self.budget(),
        }


def group_normalize(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean_G) / (std_G + eps) over the last dim (the group). Population std (unbiased=False)
    as DanceGRPO; a group of identical rewards gets advantage 0, not NaN."""
    r = rewards.float()
    return (r - r.mean(-1, keepdim=True)) / (r.std(-1, unbiased=False, keepdim=True) + eps)


def make_sde_step(kind: str, noise_level: float):
    """The stochastic step a method uses: 'dance' (DanceGRPO, eta), 'sde' / 'cps' (Flow-GRPO, a)."""
    if kind == "dance":

        def step(x, v, sigma, sigma_next, noise=None, prev_sample=None, generator=None) -> SDEStepOutput:
            return dance_sde_step(
                x, v, sigma, sigma_next, eta=noise_level, noise=noise, prev_sample=prev_sample, generator=generator
            )

    elif kind in ("sde", "cps"):

        def step(x, v, sigma, sigma_next, noise=None, prev_sample=None, generator=None) -> SDEStepOutput:
            return sde_step(
                x,
                v,
                sigma,
                sigma_next,
                noise_level=noise_level,
                noise=noise,
                prev_sample=prev_sample,
                generator=generator,
                sde_type=kind,
            )

    else:
        raise ValueError(f"sde must be 'dance', 'sde' or 'cps', got {kind!r}")
    return step


class StepScheduler(ABC):
    """A GRPO variant's plan of SDE/ODE steps, branches, groups and trained steps."""

    name: str = "step_scheduler"

    def __init__(self, num_steps: int, group_size: int, noise_level: float, sde: str = "sde", adv_clip: float = 5.0):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group-relative advantage needs a group), got {group_size}")
        self.num_steps = int(num_steps)
        self.group_size = int(group_size)
        self.noise_level = float(noise_level)
        self.sde = sde
        self.adv_clip = float(adv_clip)
        self.sde_step = make_sde_step(sde, self.noise_level)

    @abstractmethod
    def plan(self) -> StepPlan:
        """The rollout plan for one prompt."""

    @abstractmethod
    def advantages(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """Rewards of one rollout -> advantages, clamped to +-adv_clip, same layout."""
