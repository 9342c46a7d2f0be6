"""`dense_reward` (DenseGRPO, Deng et al. 2026, "DenseGRPO: From Sparse to Dense Reward for Flow
Matching Model Alignment"): Flow-GRPO's G full SDE trajectories, but each step is credited with
its own reward gain instead of the final reward, and each step's noise level is calibrated.

  R_i  = reward(ODE completion of x_i)      for sigma index i = 0..T-1;  R_T = reward(x_T)
  dR_i = R_{i+1} - R_i                      the gain of the jump i -> i+1 (an improving step is > 0)
  A_i  = (dR_i - mean_G) / std_G            normalised per timestep within the prompt's group

Completions use the remaining schedule (dense_horizon null), or n evenly spaced points of it
(dense_horizon n, the paper's cheaper variant; the spacing is our choice).

Reward-aware exploration calibration (the paper's Alg. 1), before training: roll out with the
current per-step noise levels psi, count per step the samples whose step reward is positive and
negative; where |#(dR>0) - #(dR<0)| < eps1 raise psi(t) by eps2, else lower it by eps2.
The paper does not give the initial psi, the number of samples or of iterations: ours are config
values (`calibration.*`): initial psi = the noise level, counts taken per group of G and
averaged over the calibration prompts, psi clamped to [min_noise_level, max_noise_level].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flowrl.step_schedulers.base import StepPlan, check_rewards, group_normalize
from flowrl.step_schedulers.uniform import UniformStepScheduler


def completion_schedule(i: int, num_steps: int, horizon: int | None) -> list[int]:
    """Sigma indices completing x_i to the image: all remaining steps, or `horizon` of them evenly spaced."""
    if horizon is None or horizon >= num_steps - i:
        return list(range(i, num_steps + 1))
    points = torch.linspace(i, num_steps, horizon + 1).round().long().tolist()
    return sorted(set(points))


def step_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """R [..., T+1] (R_0..R_T) -> dR [..., T] with dR_i = R_{i+1} - R_i."""
    return rewards[..., 1:] - rewards[..., :-1]


def calibration_update(noise_levels: list[float], step_reward: torch.Tensor, eps1: float, eps2: float, lo: float, hi: float):
    """One Alg. 1 update. step_reward [P, G, T] -> (new levels, per-step imbalance [T]):
    imbalance_t = mean over prompts of |#(dR > 0) - #(dR < 0)| within the group."""
    pos = (step_reward > 0).sum(1).float()  # [P, T]
    neg = (step_reward < 0).sum(1).float()
    imbalance = (pos - neg).abs().mean(0)  # [T]
    new = [min(hi, max(lo, level + (eps2 if imbalance[t] < eps1 else -eps2))) for t, level in enumerate(noise_levels)]
    return new, imbalance


class DenseRewardStepScheduler(UniformStepScheduler):
    name = "dense_reward"

    def __init__(
        self,
        num_steps: int = 10,
        group_size: int = 24,
        noise_level: float = 0.7,
        timestep_fraction: float = 0.99,
        dense_horizon: int | None = None,
        noise_levels: list[float] | None = None,
        noise_levels_file: str | None = None,
        calibration: dict | None = None,
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "combined",
        method: str = "densegrpo",
    ):
        super().__init__(
            num_steps, group_size, noise_level, sde, timestep_fraction, False, "group", adv_clip, method, multi_reward
        )
        if dense_horizon is not None and dense_horizon < 1:
            raise ValueError(f"dense_horizon must be >= 1 or null, got {dense_horizon}")
        self.dense_horizon = dense_horizon
        cal = {"iterations": 0, "num_prompts": 4, "eps1": 2.0, "eps2": 0.01, "min_noise_level": 0.05, "max_noise_level": 1.5}
        unknown = set(calibration or {}) - set(cal)
        if unknown:
            raise ValueError(f"unknown calibration keys {sorted(unknown)}; known: {sorted(cal)}")
        self.calibration = {**cal, **dict(calibration or {})}
        if noise_levels_file is not None:
            path = Path(noise_levels_file)
            if not path.is_file():
                raise FileNotFoundError(f"noise-level table not found: {path} (write one with python -m flowrl.calibrate)")
            noise_levels = json.loads(path.read_text())["noise_levels"]
        self.calibrated = noise_levels is not None
        self.noise_levels = [float(x) for x in noise_levels] if noise_levels is not None else [self.noise_level] * self.num_steps
        if len(self.noise_levels) != self.num_steps:
            raise ValueError(f"noise_levels has {len(self.noise_levels)} entries, need one per step ({self.num_steps})")

    def noise_level_at(self, start: int) -> float:
        return self.noise_levels[start]

    def plan(self) -> StepPlan:
        plan = super().plan()
        plan.intermediate_completions = [
            completion_schedule(i, self.num_steps, self.dense_horizon) for i in range(self.num_steps)
        ]
        plan.note += "; dense step rewards from ODE completions of every intermediate latent"
        return plan

    def normalize(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G, T+1] (R_0..R_T) -> per-timestep group-normalised step rewards [P, G, T]."""
        check_rewards(rewards, self.plan(), self.method)
        return group_normalize(step_rewards(rewards.float()), dim=1)

    def calibrate(self, rollout_fn, prompts: list[str]) -> dict | None:
        """Alg. 1 for `calibration.iterations` rounds on `calibration.num_prompts` train prompts;
        skipped when a table was given (noise_levels / noise_levels_file) or iterations is 0."""
        cal = self.calibration
        if self.calibrated or cal["iterations"] <= 0:
            return None
        prompts = list(prompts)[: cal["num_prompts"]]
        history = []
        for it in tqdm(range(int(cal["iterations"])), desc="calibration", leave=False):
            _, scores = rollout_fn(prompts)
            before = list(self.noise_levels)
            self.noise_levels, imbalance = calibration_update(
                before,
                step_rewards(scores.total.float()),
                cal["eps1"],
                cal["eps2"],
                cal["min_noise_level"],
                cal["max_noise_level"],
            )
            history.append({"iteration": it, "noise_levels": before, "imbalance": imbalance.tolist()})
        self.calibrated = True
        return {"noise_levels": self.noise_levels, "history": history, "calibration": cal, "prompts": prompts}
