"""Follows the paper (arXiv 2601.20218v2; DenseGRPO has no public code) and, where it is silent,
yifan123/flow_grpo scripts/train_sd3.py@ac4c86e, which it builds on; deviations (choices the
paper leaves open, each a config value): the initial psi (Flow-GRPO's std_dev_t), N and the
number of calibration rounds, the spacing of the cheaper completions (dense_horizon n).

`dense_reward` (DenseGRPO, Deng et al. 2026, "DenseGRPO: From Sparse to Dense Reward for Flow
Matching Model Alignment", arXiv 2601.20218v2): Flow-GRPO's G full SDE trajectories, but each
step is credited with its own reward gain instead of the final reward, and each step's noise is
calibrated. DenseGRPO has no public code; this follows the paper, and Flow-GRPO's official code
(which the paper says it builds on) where the paper is silent.

  R_i  = reward(ODE completion of x_i)      for sigma index i = 0..T-1;  R_T = reward(x_T)
  dR_i = R_{i+1} - R_i                      the gain of the jump i -> i+1 (Eq. 7: an improving step is > 0)
  A_i  = (dR_i - mean_G) / (std_G + 1e-4)   per timestep within the prompt's group (Eq. 10; the
                                            population std + 1e-4 of flow_grpo's stat tracker)

The sigma grid is Flow-GRPO's (the SD3 pipeline's FlowMatchEulerDiscreteScheduler, method.sigma_grid),
so the initial psi and every completion grid are taken on it.

Completions use the remaining schedule (dense_horizon null: the paper's n = t), or n evenly
spaced points of it (dense_horizon n, the paper's cheaper variant; the spacing is our choice).

The step's noise is psi(t) itself (Eq. 11: sigma_t = psi(t), the sqrt(t/(1-t)) factor absorbed):
psi(t) replaces Flow-GRPO's std_dev_t everywhere, in the transition mean as in its std
psi(t) * sqrt(-dt), and in the KL. Initial psi (not given by the paper; ours): Flow-GRPO's own
std_dev_t = a * sqrt(sigma / (1 - sigma)) at each step, so calibration starts from Flow-GRPO.

Reward-aware exploration calibration (Alg. 1), before training, psi fixed afterwards: roll out N
samples, each from its own prompt (no groups), under the current psi; for each timestep pool
the signs of the N step rewards: where |#(dR > 0) - #(dR < 0)| < eps1 raise psi(t) by eps2, else
lower it by eps2 (eps1 2, eps2 0.01, in std_dev_t units). N, the number of rounds and the
initial psi are not given: config values (`calibration.*`), N = G by default (the paper labels the
samples 1..G); psi is kept >= min_std (0: our choice).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flowrl.contract import StepPlan, StepSettings, check_rewards
from flowrl.sampling.steps import flow_grpo_std_dev_t
from flowrl.step_schedulers._common import SDETrajectories
from flowrl.step_schedulers.base import Fraction, KnobError, Knobs, NonNegFloat, NonNegInt, PosFloat, PosInt, check_at_most_steps

CALIBRATION_DEFAULTS = {"iterations": 0, "num_samples": None, "eps1": 2.0, "eps2": 0.01, "min_std": 0.0, "max_std": None}


def completion_schedule(i: int, num_steps: int, horizon: int | None) -> tuple[int, ...]:
    """Sigma indices completing x_i to the image: all remaining steps, or `horizon` of them evenly spaced."""
    if horizon is None or horizon >= num_steps - i:
        return tuple(range(i, num_steps + 1))
    points = torch.linspace(i, num_steps, horizon + 1).round().long().tolist()
    return tuple(sorted(set(points)))


def step_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """R [..., T+1] (R_0..R_T) -> dR [..., T] with dR_i = R_{i+1} - R_i."""
    return rewards[..., 1:] - rewards[..., :-1]


def calibration_update(psi: list[float], step_reward: torch.Tensor, eps1: float, eps2: float, lo: float = 0.0, hi=None):
    """One Alg. 1 update. step_reward [N, T] (one row per sample, pooled over all N) ->
    (new psi, per-step sign imbalance [T]): imbalance_t = |#(dR_t > 0) - #(dR_t < 0)|; a step
    reward of exactly 0 counts to neither side."""
    step_reward = step_reward.reshape(-1, step_reward.shape[-1])
    imbalance = ((step_reward > 0).sum(0) - (step_reward < 0).sum(0)).abs().float()  # [T]
    new = []
    for t, level in enumerate(psi):
        level = level + (eps2 if imbalance[t] < eps1 else -eps2)
        level = max(lo, level) if hi is None else min(hi, max(lo, level))
        new.append(level)
    return new, imbalance


class CalibrationKnobs(Knobs):
    iterations: NonNegInt  # Alg. 1 rounds before training (0 = off)
    num_samples: PosInt | None = None  # N samples per round (null = G)
    eps1: PosFloat
    eps2: PosFloat
    min_std: NonNegFloat
    max_std: PosFloat | None = None


class DenseRewardKnobs(Knobs):
    timestep_fraction: Fraction
    dense_horizon: PosInt | None = None  # ODE steps per completion (null = all remaining)
    noise_levels_file: str | None = None
    calibration: CalibrationKnobs
    global_std: bool
    optimizer_steps_per_rollout: PosInt

    def check(self, method: dict, train: dict) -> None:
        check_at_most_steps("dense_horizon", self.dense_horizon, method)
        cal = self.calibration
        if cal.iterations and (cal.num_samples or method["group_size"]) < 2:
            raise KnobError("method.calibration.num_samples", cal.num_samples, ">= 2 (signs are pooled over the samples)")


class DenseRewardStepScheduler(SDETrajectories):
    name = "dense_reward"
    knobs = DenseRewardKnobs
    sweep_knobs = ("dense_horizon",)
    run_name_knobs = {"dense_horizon": lambda v, m: f"n{v}"}

    def __init__(
        self,
        num_steps: int = 10,
        group_size: int = 24,
        noise_level: float = 0.7,
        shift: float = 3.0,
        timestep_fraction: float = 0.99,
        dense_horizon: int | None = None,
        noise_levels: list[float] | None = None,
        noise_levels_file: str | None = None,
        calibration: dict | None = None,
        global_std: bool = False,
        std_unbiased: bool = False,
        std_eps: float = 1e-4,
        update: dict | None = None,
        adv_clip: float = 5.0,
        multi_reward: str = "combined",
        method: str = "densegrpo",
        sigma_grid: str = "shifted_linspace",
    ):
        super().__init__(
            num_steps=num_steps,
            group_size=group_size,
            noise_level=noise_level,
            sde="sde",
            shift=shift,
            timestep_fraction=timestep_fraction,
            timestep_selection="first",
            exclude_last_step=False,
            same_initial_noise=False,
            group_by="group",
            global_std=global_std,
            std_unbiased=std_unbiased,
            std_eps=std_eps,
            score="final",
            update=update or {"step_every": "rollout", "steps_per_rollout": 1},
            adv_clip=adv_clip,
            method=method,
            multi_reward=multi_reward,
            sigma_grid=sigma_grid,
        )
        if dense_horizon is not None and dense_horizon < 1:
            raise ValueError(f"dense_horizon must be >= 1 or null, got {dense_horizon}")
        self.dense_horizon = dense_horizon
        unknown = set(calibration or {}) - set(CALIBRATION_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown calibration keys {sorted(unknown)}; known: {sorted(CALIBRATION_DEFAULTS)}")
        self.calibration = {**CALIBRATION_DEFAULTS, **dict(calibration or {})}
        if noise_levels_file is not None:
            path = Path(noise_levels_file)
            if not path.is_file():
                raise FileNotFoundError(f"noise-level table not found: {path} (write one with python -m flowrl.calibrate)")
            noise_levels = json.loads(path.read_text())["noise_levels"]
        self.calibrated = noise_levels is not None
        if noise_levels is None:
            noise_levels = [flow_grpo_std_dev_t(self.sigmas[i], self.noise_level, self.sigmas[1]) for i in range(self.num_steps)]
        self.noise_levels = [float(x) for x in noise_levels]  # psi(t) per sigma index: the step's std_dev_t
        if len(self.noise_levels) != self.num_steps or min(self.noise_levels) < 0:
            raise ValueError(f"noise_levels needs {self.num_steps} values >= 0 (one per step), got {self.noise_levels}")

    def step_settings(self, i: int) -> StepSettings:
        return StepSettings("sde", self.noise_level, std_dev_t=self.noise_levels[i], sigma_max=self.sigmas[1])

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        plan = super().plan(iteration, generator)
        return dataclasses.replace(
            plan,
            intermediate_completions=tuple(
                completion_schedule(i, self.num_steps, self.dense_horizon) for i in range(self.num_steps)
            ),
            note=plan.note + "; dense step rewards from ODE completions of every intermediate latent",
        )

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G, T+1] (R_0..R_T) -> per-timestep group-normalised step rewards [P, G, J]."""
        check_rewards(rewards, plan)
        dr = step_rewards(rewards.float())  # [P, G, T]
        mean = dr.mean(1, keepdim=True)
        if self.global_std:  # per timestep, over every sample of the rollout
            std = dr.std(dim=(0, 1), unbiased=self.std_unbiased, keepdim=True)
        else:
            std = dr.std(1, unbiased=self.std_unbiased, keepdim=True)
        adv = (dr - mean) / (std + self.std_eps)
        return adv[:, :, [j.start for j in plan.jumps]]

    def will_calibrate(self) -> bool:
        return not self.calibrated and self.calibration["iterations"] > 0

    def calibrate(self, rollout_fn, prompts: list[str]) -> dict | None:
        """Alg. 1 for `calibration.iterations` rounds, each on N train prompts x one sample;
        skipped when a table was given (noise_levels / noise_levels_file) or iterations is 0."""
        cal = self.calibration
        if self.calibrated or cal["iterations"] <= 0:
            return None
        n = int(cal["num_samples"] or self.group_size)
        prompts = list(prompts)
        if len(prompts) < n:
            raise ValueError(f"calibration needs {n} distinct prompts (one per sample), the train set has {len(prompts)}")
        history = []
        for it in tqdm(range(int(cal["iterations"])), desc="calibration", leave=False):
            batch = [prompts[(it * n + k) % len(prompts)] for k in range(n)]
            plan = dataclasses.replace(self.plan(0), group_size=1)  # one sample per prompt: no groups
            _, scores = rollout_fn(batch, plan)
            before = list(self.noise_levels)
            self.noise_levels, imbalance = calibration_update(
                before, step_rewards(scores.total.float()), cal["eps1"], cal["eps2"], cal["min_std"], cal["max_std"]
            )
            history.append({"iteration": it, "noise_levels": before, "imbalance": imbalance.tolist(), "prompts": batch})
        self.calibrated = True
        return {"noise_levels": self.noise_levels, "history": history, "calibration": cal}

    def state_dict(self) -> dict:
        return {"noise_levels": list(self.noise_levels), "calibrated": self.calibrated}

    def load_state_dict(self, state: dict) -> None:
        levels = [float(x) for x in state["noise_levels"]]
        if len(levels) != self.num_steps:
            raise ValueError(f"noise_levels has {len(levels)} entries, this plan has {self.num_steps} steps")
        self.noise_levels, self.calibrated = levels, bool(state["calibrated"])
