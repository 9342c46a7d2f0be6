"""Follows bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py@ef6ec9f and
fastvideo/train_g2rpo_hps_clip.py@cae0961; deviations:
- where the strided completion misses sigma = 0 its last point is replaced by T (the script
  decodes the x0 prediction of its last point: the same image);
- the G branches leaving one anchor state share that state's velocity (one forward, not G).

`singular_stochastic` (G²RPO, Zhou et al. 2025, "G²RPO: Granular GRPO for Precise Reward in
Flow Models"): one SDE step per branch off an ODE anchor (Singular Stochastic Sampling), and
Multi-Granularity Advantage Integration (MGAI): every branch is also completed on coarser
schedules, each granularity normalised within its group, the advantages summed.

Completion of the branch leaving anchor step e at granularity g (sigma indices):
    [e+1] ++ [e+2, e+2+g, e+2+2g, ...]       (the paper's sigmas[:e+2] ++ sigmas[e+2::g])
Where the strided tail misses sigma = 0 (index T) its last point is replaced by T: the official
sampler (bcmi/Granular-GRPO `fastvideo/train_g2rpo_hps.py`) decodes the x0 prediction of the last
point it evaluates, which is that Euler step to 0. NFE per generation: 100 / 148 / 181 for g in
[1] / [1,2] / [1,2,3] (T 16, 8 SDE steps).

Where the paper is silent the official scripts decide: every one of the 8 SDE steps is a branch
point every iteration, one optimizer step per SDE step with loss = the mean over its G samples
(`train_g2rpo_hps.py`), unbiased std + 1e-8, advantages clamped to +-5 after the MGAI sum, and
with two rewards (`train_g2rpo_hps_clip.py`) the HPS and CLIP advantages added unweighted.
Where they differ, the code is the default: Lambda = [1, 2] (`scripts/finetune/finetune_g2rpo_hps.sh`;
the paper's {1, 2, 3} is `method.granularities=[1,2,3]`).
"""

from __future__ import annotations

from typing import Literal

import torch

from flowrl.contract import Branch, Jump, StepPlan, StepSettings, branch_group_advantages, check_rewards
from flowrl.step_schedulers._common import check_granularities, strided_completion, update_schedule
from flowrl.step_schedulers.base import Knobs, PosInt, StepScheduler, check_at_most_steps, check_distinct


def coarse_completion(e: int, num_steps: int, granularity: int) -> tuple[int, ...]:
    """Sigma indices from e+1 (after the SDE step at e) to T on granularity g (see module doc)."""
    return strided_completion(e + 1, num_steps, granularity)


class SingularStochasticKnobs(Knobs):
    num_branch_steps: PosInt  # SDE steps e = 0 .. num_branch_steps - 1
    granularities: list[PosInt]  # MGAI's Lambda
    step_every: Literal["jump", "rollout"]

    def check(self, method: dict, train: dict) -> None:
        check_at_most_steps("num_branch_steps", self.num_branch_steps, method)
        check_distinct("granularities", self.granularities)


class SingularStochasticStepScheduler(StepScheduler):
    name = "singular_stochastic"
    knobs = SingularStochasticKnobs
    sweep_knobs = ("num_branch_steps", "granularities")
    run_name_knobs = {"granularities": lambda v, m: "L" + ",".join(str(g) for g in v)}
    small_overrides = ("method.num_steps=4", "method.group_size=2", "method.num_branch_steps=2", "method.granularities=[1,2]")

    def __init__(
        self,
        num_steps: int = 16,
        group_size: int = 12,
        noise_level: float = 0.7,
        shift: float = 3.0,
        num_branch_steps: int = 8,
        granularities: tuple[int, ...] = (1, 2),
        update: dict | None = None,
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "sum_advantages",
        std_unbiased: bool = True,
        std_eps: float = 1e-8,
        method: str = "g2rpo",
        sigma_grid: str = "shifted_linspace",
    ):
        super().__init__(num_steps, group_size, shift, adv_clip, multi_reward, std_unbiased, std_eps, method, sigma_grid)
        if not 1 <= num_branch_steps <= num_steps:
            raise ValueError(f"num_branch_steps must be in [1, num_steps={num_steps}], got {num_branch_steps}")
        self.noise_level = float(noise_level)
        self.sde = sde
        self.num_branch_steps = int(num_branch_steps)
        self.granularities = check_granularities(granularities)
        self.update_cfg = dict(update or {"step_every": "jump"})
        update_schedule(self.update_cfg, trained=[0])  # validate now
        StepSettings(sde, self.noise_level)

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        t = self.num_steps
        step = StepSettings(self.sde, self.noise_level, sigma_max=self.sigmas[1])
        jumps = tuple(Jump(e, e + 1, step) for e in range(self.num_branch_steps))
        branches = tuple(Branch(j, tuple(coarse_completion(j.start, t, g) for g in self.granularities)) for j in jumps)
        upd = update_schedule(self.update_cfg, trained=range(len(jumps)), seed=self.seed_from(generator))
        note = f"the single SDE step of each of the first {self.num_branch_steps} branch points"
        return StepPlan(self.method, self.sigmas, self.group_size, "anchor", jumps, upd, True, branches, note=note)

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G, B, len(granularities)] -> [P, G, B]: per-granularity group
        normalisation, summed (MGAI)."""
        check_rewards(rewards, plan)
        return branch_group_advantages(rewards, self.std_unbiased, self.std_eps)
