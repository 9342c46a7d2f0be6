"""Follows the TempFlow-GRPO paper (arXiv 2508.04324; no code released: Shredded-Pork/TempFlow-GRPO@afe6d33
holds only the README and paper.pdf); deviations/choices:
- the paper's PDF could not be read here (only its abstract, project page and third-party
  summaries); what they state is followed, everything else is a config value with its choice
  stated in conf/method/tempflow_grpo.yaml;
- branch points: the paper branches at "selected timesteps" (its Fig. 4 shows several); which
  ones is not known here. Default "all" = steps 0..T-2, the steps Flow-GRPO trains at T 10
  (int(10 * 0.99) = 9) and the ones the paper's single-step perturbation analysis covers
  (steps 0-8 of 10); the last step (sigma 0.0089 -> 0 on the SD3 grid) injects almost no noise.
  An explicit list of step indices is `method.branch_points=[0,1,2]`;
- noise-aware weight: the paper scales each timestep's policy term by its "exploration potential",
  larger at the early, high-noise steps, and names the injected noise sigma_t sqrt(dt) eps; the
  exact form is not known here. Default "noise_std_normalized": w_k = s_k / mean_b(s_b), s_k =
  std_dev_t(k) sqrt(|dt_k|) (the Flow-GRPO SDE's transition std), mean over the plan's branch jumps,
  so the weights average 1 and Flow-GRPO's lr / clip / KL keep their scale; "noise_std" is s_k
  itself, "none" the unweighted ablation. The weight multiplies the clipped policy term, not the KL;
- group advantage per (prompt, branch point), torch's unbiased std + 1e-8 (as G²RPO's branch
  groups): the per-branch-point group is the paper's; the estimator is a choice;
- the G branches leaving one anchor state share that state's velocity (one forward, not G).

`noise_aware` (TempFlow-GRPO, He et al. 2025, "TempFlow-GRPO: When Timing Matters for GRPO in
Flow Models"): on Flow-GRPO's base (SD3 grid, Flow-GRPO SDE with noise level a), one ODE anchor
per prompt from the group's shared initial noise (the seed group); at each branch point k the G
samples leave the anchor state x_k with ONE SDE step (trajectory branching: stochasticity only
there), then complete by ODE at full resolution (k+1, k+2, ..., T) to a scored image, so the
branch's final reward is a process reward for the decision at k. The group advantage of the G
branches at k trains only the step-k transition, weighted by the noise-aware weight of step k.

NFE per prompt (flowrl's count, the jump counting 1 per sample): last branch point (anchor ODE
steps) + G * sum_k (1 + T - k - 1). T 10, G 24, all 9 branch points: 8 + 24 * 54 = 1,304.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from flowrl.contract import Branch, Jump, StepPlan, StepSettings, branch_group_advantages, check_rewards
from flowrl.sampling.steps import flow_grpo_std_dev_t
from flowrl.step_schedulers._common import strided_completion, update_schedule
from flowrl.step_schedulers.base import KnobError, Knobs, NonNegInt, PosInt, StepScheduler, check_distinct

WEIGHTINGS = ("none", "noise_std", "noise_std_normalized")


class NoiseAwareKnobs(Knobs):
    branch_points: Literal["all"] | list[NonNegInt]  # "all": steps 0..T-2; or explicit step indices
    weighting: Literal["none", "noise_std", "noise_std_normalized"]
    sde: Literal["sde"]  # the Flow-GRPO SDE, whose transition std the weighting reads
    step_every: Literal["jump", "rollout"]
    optimizer_steps_per_rollout: PosInt

    def check(self, method: dict, train: dict) -> None:
        if self.branch_points != "all":
            check_distinct("branch_points", self.branch_points)
            if not self.branch_points or max(self.branch_points) >= method["num_steps"]:
                raise KnobError(
                    "method.branch_points",
                    self.branch_points,
                    f"step indices in 0..method.num_steps - 1 ({method['num_steps'] - 1})",
                )
        prompts = train.get("prompts_per_step")
        if self.step_every == "rollout" and prompts is not None and self.optimizer_steps_per_rollout > prompts:
            raise KnobError(
                "method.optimizer_steps_per_rollout",
                self.optimizer_steps_per_rollout,
                f"at most train.prompts_per_step ({prompts}): each optimizer step takes whole prompts' anchors",
            )


def noise_std(sigmas, k: int, noise_level: float) -> float:
    """The Flow-GRPO SDE's transition std at step k -> k+1: std_dev_t * sqrt(|dt|), std_dev_t =
    a sqrt(sigma / (1 - sigma)) with sigma_max = sigmas[1] where sigma = 1 (float64)."""
    s, s_next = float(sigmas[k]), float(sigmas[k + 1])
    return flow_grpo_std_dev_t(s, noise_level, float(sigmas[1])) * math.sqrt(abs(s - s_next))


class NoiseAwareStepScheduler(StepScheduler):
    name = "noise_aware"
    knobs = NoiseAwareKnobs
    sweep_knobs = ("branch_points", "weighting")
    run_name_knobs = {
        "weighting": lambda v, m: {"none": "unweighted", "noise_std": "wstd", "noise_std_normalized": None}[v],
        "branch_points": lambda v, m: None if v == "all" else "bp" + ",".join(str(k) for k in v),
    }
    small_overrides = ("method.num_steps=4", "method.group_size=2")

    def __init__(
        self,
        num_steps: int = 10,
        group_size: int = 24,
        noise_level: float = 0.7,
        shift: float = 3.0,
        branch_points: str | list[int] = "all",
        weighting: str = "noise_std_normalized",
        update: dict | None = None,
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "combined",
        std_unbiased: bool = True,
        std_eps: float = 1e-8,
        method: str = "tempflow_grpo",
        sigma_grid: str = "flow_match_euler",
    ):
        super().__init__(num_steps, group_size, shift, adv_clip, multi_reward, std_unbiased, std_eps, method, sigma_grid)
        if sde != "sde":
            raise ValueError(f"tempflow_grpo branches with the Flow-GRPO SDE (sde 'sde'), got {sde!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if weighting != "none" and not noise_level > 0:
            raise ValueError(f"weighting {weighting!r} reads the step's noise: noise_level must be > 0, got {noise_level}")
        if isinstance(branch_points, str):
            if branch_points != "all":
                raise ValueError(f"branch_points must be 'all' or a list of step indices, got {branch_points!r}")
            points = list(range(num_steps - 1))
        else:
            points = [int(k) for k in branch_points]
            if len(set(points)) != len(points) or any(not 0 <= k < num_steps for k in points):
                raise ValueError(f"branch_points must be distinct step indices in 0..{num_steps - 1}, got {points}")
        if not points:
            raise ValueError(f"no branch point: 'all' needs num_steps >= 2, got {num_steps}")
        self.branch_points = sorted(points)
        self.noise_level = float(noise_level)
        self.sde = sde
        self.weighting = weighting
        self.update_cfg = dict(update or {"step_every": "rollout", "steps_per_rollout": 2, "shuffle": True})
        update_schedule(self.update_cfg, trained=[0])  # validate now
        StepSettings(sde, self.noise_level)

    def loss_weights(self) -> list[float]:
        """Each branch jump's policy weight, in branch-point order (see the module doc)."""
        s = [noise_std(self.sigmas, k, self.noise_level) for k in self.branch_points]
        if self.weighting == "none":
            return [1.0] * len(s)
        if self.weighting == "noise_std":
            return s
        mean = sum(s) / len(s)
        return [x / mean for x in s]

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        t = self.num_steps
        step = StepSettings(self.sde, self.noise_level, sigma_max=self.sigmas[1])
        jumps = tuple(Jump(k, k + 1, step, loss_weight=w) for k, w in zip(self.branch_points, self.loss_weights()))
        branches = tuple(Branch(j, (strided_completion(j.stop, t, 1),)) for j in jumps)
        upd = update_schedule(self.update_cfg, trained=range(len(jumps)), seed=self.seed_from(generator))
        note = f"the single SDE step of each branch point {self.branch_points}, weighted ({self.weighting})"
        return StepPlan(self.method, self.sigmas, self.group_size, "anchor", jumps, upd, True, branches, note=note)

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G, B, 1] -> [P, G, B]: normalised within each (prompt, branch point) group."""
        check_rewards(rewards, plan)
        return branch_group_advantages(rewards, self.std_unbiased, self.std_eps)
