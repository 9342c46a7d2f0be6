"""The step-scheduler interface: where a GRPO variant puts its stochasticity, how it groups
samples, which steps it trains. Everything else (model, rollout engine, loss, trainer) is shared.

A step scheduler turns the noise schedule into a StepPlan and rewards into advantages. Sigma
indices run 0..T (sigmas[0] = 1 is noise, sigmas[T] = 0 the image); a Jump start -> stop is one
model evaluation (NFE) that moves x from sigmas[start] to sigmas[stop].

Layouts (P prompts, G samples per group, J = len(plan.jumps)):
  rewards the engine hands back: [P, G, *plan.score_shape]
    "sde" trajectories: [P, G] (final image), or [P, G, T+1] with intermediate completions
    "anchor" trajectories: [P, G, B, C] (branch, completion schedule)
  advantages: [P, G, J], one per (sample, stochastic jump)
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
    # "sde" only: for sigma index i (0..T-1), the ODE schedule that completes x_i to an image
    # (DenseGRPO's intermediate rewards); empty = only the final image is scored.
    intermediate_completions: list[list[int]] = field(default_factory=list)
    note: str = ""  # how trained steps are chosen, in words

    def __post_init__(self):
        if self.trajectory not in ("sde", "anchor"):
            raise ValueError(f"trajectory must be 'sde' or 'anchor', got {self.trajectory!r}")
        if self.trajectory == "anchor":
            if not self.branches or len({len(b.completions) for b in self.branches}) != 1:
                raise ValueError("an anchor plan needs branches, each with the same number of completions")
            for b in self.branches:
                for c in b.completions:
                    if c[0] != b.jump.stop or c[-1] != self.num_steps or sorted(set(c)) != c:
                        raise ValueError(f"completion {c} of jump {b.jump} must rise from {b.jump.stop} to {self.num_steps}")
        for i, c in enumerate(self.intermediate_completions):
            if c[0] != i or c[-1] != self.num_steps:
                raise ValueError(f"intermediate completion {c} must run from {i} to {self.num_steps}")

    @property
    def score_shape(self) -> tuple[int, ...]:
        """Trailing dims of the rewards the engine returns for this plan, after [P, G]."""
        if self.trajectory == "anchor":
            return (len(self.branches), len(self.branches[0].completions))
        if self.intermediate_completions:
            return (self.num_steps + 1,)
        return ()

    def nfe_per_generation(self) -> int:
        """Model evaluations behind one of the G samples, as the papers count them (anchor
        steps, shared by the group, not counted; a branch's jump counts 1)."""
        if self.trajectory == "sde":
            return self.num_steps + sum(len(c) - 1 for c in self.intermediate_completions)
        return sum(1 + sum(len(c) - 1 for c in b.completions) for b in self.branches)

    def anchor_nfe(self) -> int:
        """ODE steps of the shared anchor trajectory needed to reach the last branch point."""
        return max((b.jump.start for b in self.branches), default=0)

    def budget(self) -> dict[str, int]:
        """Per-prompt cost: NFE, reward-model queries, backward passes (= trained steps)."""
        g = self.group_size
        if self.trajectory == "sde":
            rewards = g * (1 + len(self.intermediate_completions))
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
            "jump_lengths": [j.stop - j.start for j in self.jumps],
            "completions": [b.completions for b in self.branches],
            "intermediate_completions": self.intermediate_completions,
            "trained_per_generation": self.trained_per_generation,
            "trained_steps": self.note,
            **self.budget(),
        }


@dataclass
class RewardScores:
    """What the reward model said about one rollout: each part's raw scores and the combined
    reward, all [P, G, *plan.score_shape]. Crosses module -> step scheduler."""

    parts: dict[str, torch.Tensor]
    total: torch.Tensor
    weights: dict[str, float]

    @classmethod
    def single(cls, name: str, scores: torch.Tensor) -> RewardScores:
        return cls({name: scores}, scores, {name: 1.0})


def anchor_plan(method: str, num_steps: int, group_size: int, branches: list[Branch], note: str) -> StepPlan:
    """A plan on one ODE anchor trajectory: G samples leave it at each branch, every branch's jump
    is trained, one group per (prompt, branch)."""
    return StepPlan(
        method=method,
        num_steps=num_steps,
        group_size=group_size,
        trajectory="anchor",
        jumps=[b.jump for b in branches],
        trained_per_generation=len(branches),
        same_initial_noise=True,
        branches=branches,
        note=note,
    )


def group_normalize(rewards: torch.Tensor, eps: float = 1e-8, dim: int = -1) -> torch.Tensor:
    """(r - mean_G) / (std_G + eps) over `dim` (the group). Population std (unbiased=False)
    as DanceGRPO; a group of identical rewards gets advantage 0, not NaN."""
    r = rewards.float()
    return (r - r.mean(dim, keepdim=True)) / (r.std(dim, unbiased=False, keepdim=True) + eps)


def branch_group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Anchor plans: rewards [P, G, B, C] -> advantages [P, G, B]. The G samples that left the
    same anchor state with the same jump form a group (E-GRPO's multi-step group-normalised
    advantage, per (prompt, branch)); each completion schedule c is normalised on its own and
    the C results are summed (G²RPO's Multi-Granularity Advantage Integration; C = 1 for E-GRPO)."""
    if rewards.ndim != 4:
        raise ValueError(f"branch advantages take rewards [P, G, B, C], got shape {tuple(rewards.shape)}")
    return group_normalize(rewards, dim=1).sum(-1)


def make_sde_step(kind: str, noise_level: float):
    """The stochastic step a method uses: 'dance' (DanceGRPO, eta), 'sde' / 'cps' (Flow-GRPO, a)."""
    if kind not in ("dance", "sde", "cps"):
        raise ValueError(f"sde must be 'dance', 'sde' or 'cps', got {kind!r}")

    def step(x, v, sigma, sigma_next, noise=None, prev_sample=None, generator=None, sigma_max=None) -> SDEStepOutput:
        if kind == "dance":
            return dance_sde_step(
                x, v, sigma, sigma_next, eta=noise_level, noise=noise, prev_sample=prev_sample, generator=generator
            )
        return sde_step(
            x,
            v,
            sigma,
            sigma_next,
            noise_level=noise_level,
            noise=noise,
            prev_sample=prev_sample,
            generator=generator,
            sigma_max=sigma_max,
            sde_type=kind,
        )

    return step


class StepScheduler(ABC):
    """A GRPO variant's plan of SDE/ODE steps, branches, groups and trained steps.

    Subclasses implement `plan()` and `normalize()`; the rest has generic defaults:
    every jump trained, a constant noise level, the combined reward normalised (or, with
    `multi_reward: sum_advantages`, each reward part normalised and the weighted advantages summed).
    """

    name: str = "step_scheduler"

    def __init__(
        self,
        num_steps: int,
        group_size: int,
        noise_level: float,
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "combined",
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group-relative advantage needs a group), got {group_size}")
        if multi_reward not in ("combined", "sum_advantages"):
            raise ValueError(f"multi_reward must be 'combined' or 'sum_advantages', got {multi_reward!r}")
        self.num_steps = int(num_steps)
        self.group_size = int(group_size)
        self.noise_level = float(noise_level)
        self.sde = sde
        self.adv_clip = float(adv_clip)
        self.multi_reward = multi_reward
        self.sde_step = make_sde_step(sde, self.noise_level)

    @abstractmethod
    def plan(self) -> StepPlan:
        """The rollout plan for one prompt."""

    @abstractmethod
    def normalize(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """One reward [P, G, *plan.score_shape] -> unclamped advantages [P, G, J]."""

    def advantages(self, rewards: torch.Tensor | RewardScores, prompts: list[str] | None = None) -> torch.Tensor:
        """Rewards of one rollout -> advantages [P, G, J], clamped to +-adv_clip."""
        if isinstance(rewards, RewardScores):
            if self.multi_reward == "sum_advantages":
                adv = sum(w * self.normalize(rewards.parts[k], prompts) for k, w in rewards.weights.items())
            else:
                adv = self.normalize(rewards.total, prompts)
        else:
            adv = self.normalize(rewards, prompts)
        return adv.clamp(-self.adv_clip, self.adv_clip)

    def noise_level_at(self, start: int) -> float:
        """Noise level (a or eta) of a jump leaving sigma index `start`; constant by default."""
        return self.noise_level

    def sde_jump(self, x, v, sigmas: torch.Tensor, start: int, stop: int, noise=None, prev_sample=None) -> SDEStepOutput:
        """The stochastic jump sigmas[start] -> sigmas[stop] from x with velocity v(x, sigmas[start]).
        Where sigmas[start] = 1 the Flow-GRPO std uses the schedule's sigmas[1], as flow_grpo does."""
        step = make_sde_step(self.sde, self.noise_level_at(start))
        return step(x, v, sigmas[start], sigmas[stop], noise=noise, prev_sample=prev_sample, sigma_max=sigmas[1])

    def trained_jumps(self, generator: torch.Generator | None = None) -> list[int]:
        """Indices into plan().jumps that get a policy-gradient term this iteration: all of them."""
        return list(range(len(self.plan().jumps)))

    def calibrate(self, rollout_fn, prompts: list[str]) -> dict | None:
        """Optional pre-training phase (DenseGRPO's exploration calibration). `rollout_fn(prompts)`
        runs one rollout under the current plan and returns (Rollout, RewardScores). Returns a
        json-able record of what changed, or None when the method has nothing to calibrate."""
        return None


def check_rewards(rewards: torch.Tensor, plan: StepPlan, method: str) -> None:
    want = len(plan.score_shape) + 2
    if rewards.ndim != want or rewards.shape[1] != plan.group_size or tuple(rewards.shape[2:]) != plan.score_shape:
        shape = ", ".join(["P", str(plan.group_size), *map(str, plan.score_shape)])
        raise ValueError(f"{method} advantages take rewards [{shape}], got shape {tuple(rewards.shape)}")
