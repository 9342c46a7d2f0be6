"""`singular_stochastic` (G²RPO, Zhou et al. 2025, "G²RPO: Granular GRPO for Precise Reward in
Flow Models"): one SDE step per branch off an ODE anchor (Singular Stochastic Sampling), and
Multi-Granularity Advantage Integration (MGAI): every branch is also completed on coarser
schedules, each granularity normalised within its group, the advantages summed.

Completion of the branch leaving anchor step e at granularity g (sigma indices):
    [e+1] ++ [e+2, e+2+g, e+2+2g, ...]       (the paper's sigmas[:e+2] ++ sigmas[e+2::g])
The strided tail does not always land on sigma = 0 (index T); the paper leaves this open. We
replace its last point by T, so the image is clean and the NFE count stays the paper's
(100 / 148 / 181 per generation for g in [1] / [1,2] / [1,2,3], T 16, 8 SDE steps).
"""

from __future__ import annotations

import torch

from flowrl.step_schedulers.base import (
    Branch,
    Jump,
    StepPlan,
    StepScheduler,
    anchor_plan,
    branch_group_advantages,
    check_rewards,
)


def coarse_completion(e: int, num_steps: int, granularity: int) -> list[int]:
    """Sigma indices from e+1 (after the SDE step at e) to T on granularity g (see module doc)."""
    tail = list(range(e + 2, num_steps + 1, granularity))
    if tail:
        tail[-1] = num_steps  # land on sigma = 0
    return [e + 1, *tail]


class SingularStochasticStepScheduler(StepScheduler):
    name = "singular_stochastic"

    def __init__(
        self,
        num_steps: int = 16,
        group_size: int = 12,
        noise_level: float = 0.7,
        num_branch_steps: int = 8,
        granularities: tuple[int, ...] = (1, 2, 3),
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "sum_advantages",
        method: str = "g2rpo",
    ):
        super().__init__(num_steps, group_size, noise_level, sde, adv_clip, multi_reward)
        if not 1 <= num_branch_steps <= num_steps:
            raise ValueError(f"num_branch_steps must be in [1, num_steps={num_steps}], got {num_branch_steps}")
        granularities = [int(g) for g in granularities]
        if not granularities or min(granularities) < 1 or len(set(granularities)) != len(granularities):
            raise ValueError(f"granularities must be distinct integers >= 1, got {granularities}")
        self.num_branch_steps = int(num_branch_steps)
        self.granularities = granularities
        self.method = method

    def plan(self) -> StepPlan:
        t = self.num_steps
        jumps = [Jump(e, e + 1) for e in range(self.num_branch_steps)]
        branches = [Branch(j, [coarse_completion(j.start, t, g) for g in self.granularities]) for j in jumps]
        note = f"the single SDE step of each of the first {self.num_branch_steps} branch points"
        return anchor_plan(self.method, t, self.group_size, branches, note)

    def normalize(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G, B, len(granularities)] -> [P, G, B]: per-granularity group
        normalisation, summed (MGAI)."""
        check_rewards(rewards, self.plan(), self.method)
        return branch_group_advantages(rewards)
