"""The step-scheduler base class: a GRPO variant's plan of SDE/ODE steps, groups, trained steps and
optimizer steps (the plan itself and the advantages' layout are the contract: flowrl.contract)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from flowrl.contract.advantages import MULTI_REWARD, RewardScores, combine_advantages, group_normalize
from flowrl.contract.plan import StepPlan

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class KnobError(ValueError):
    """A knob value that cannot run, with its full config key (the config schema reports it in one line)."""

    def __init__(self, key: str, value, allowed: str):
        super().__init__(f"{key}={value}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class Knobs(BaseModel):
    """A variant's own `method.*` keys (beyond the shared name, num_steps, shift, group_size,
    noise_level, clip_eps, adv_clip, kl_beta, lr, ema, ...), typed, with their ranges. The config
    schema validates `method.*` through the class named by `method.step_scheduler._target_`: a
    key that is neither shared nor declared here is refused (another method's knob, a typo).
    `check` holds the checks across keys (a knob against method.num_steps, train.prompts_per_step)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    def check(self, method: dict, train: dict) -> None:
        """Raise KnobError for a combination that cannot run. `method`, `train`: the resolved groups."""


def check_whole_ranks(prompts_per_rank: int | None, train: dict) -> None:
    """Emulated GPUs (DanceGRPO's and MixGRPO's per-GPU gradient accumulation) must be whole."""
    if prompts_per_rank and train["prompts_per_step"] % prompts_per_rank:
        raise KnobError(
            "train.prompts_per_step",
            train["prompts_per_step"],
            f"a multiple of method.prompts_per_rank ({prompts_per_rank}): whole emulated GPUs",
        )


def check_at_most_steps(key: str, value: int | None, method: dict, margin: int = 0) -> None:
    """A knob counted in steps may not exceed method.num_steps (- margin)."""
    limit = method["num_steps"] - margin
    if value is not None and value > limit:
        what = "method.num_steps" + (f" - {margin}" if margin else "")
        raise KnobError(f"method.{key}", value, f"at most {what} ({limit})")


def check_distinct(key: str, values: list | None) -> None:
    if values is not None and len(set(values)) != len(values):
        raise KnobError(f"method.{key}", values, "must be distinct")


class StepScheduler(ABC):
    """A GRPO variant's plan of SDE/ODE steps, branches, groups, trained steps and optimizer steps.

    Subclasses implement `plan()` and `normalize()`. The generic parts: the noise schedule (T + 1
    sigmas of the grid `sigma_grid` names, flowrl.sampling.sigmas: the method's official one), the
    group statistics (std estimator and eps), clamping, and multiple rewards: "combined"
    normalises the reward model's combined score (reward=multi: its weighted sum), "sum_advantages"
    normalises each part and adds the advantages unweighted (G²RPO's hps_clip script),
    "weighted_sum_advantages" adds them with the reward weights normalised to sum 1 (MixGRPO's
    train_grpo_flux.py, which divides its weights by their sum).

    Class attributes a subclass declares (read by run names and the benchmark, so that no list of
    method names exists elsewhere):
      run_name_knobs: {method config key: formatter(value, method config) -> str | None}, the
        parts of a run's name beyond the shared ones;
      small_overrides: Hydra overrides that shrink the method to seconds with its structure kept;
      knobs: the Knobs model of the method's own config keys (validated by the config schema);
      sweep_knobs: the knobs its ablations sweep: run tags (MLflow group-by) and the keys
        flowrl.compare looks at first.
    """

    name: str = "step_scheduler"
    run_name_knobs: dict = {}
    knobs: ClassVar[type[Knobs]] = Knobs
    sweep_knobs: ClassVar[tuple[str, ...]] = ()
    small_overrides: tuple[str, ...] = ("method.num_steps=4", "method.group_size=2")

    def __init__(
        self,
        num_steps: int,
        group_size: int,
        shift: float = 3.0,
        adv_clip: float = 5.0,
        multi_reward: str = "combined",
        std_unbiased: bool = True,
        std_eps: float = 1e-8,
        method: str | None = None,
        sigma_grid: str = "shifted_linspace",
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group-relative advantage needs a group), got {group_size}")
        if multi_reward not in MULTI_REWARD:
            raise ValueError(f"multi_reward must be one of {MULTI_REWARD}, got {multi_reward!r}")
        if adv_clip <= 0 or std_eps < 0:
            raise ValueError(f"adv_clip must be > 0 and std_eps >= 0, got {adv_clip}, {std_eps}")
        from flowrl.sampling.sigmas import noise_schedule

        self.num_steps = int(num_steps)
        self.group_size = int(group_size)
        self.shift = float(shift)
        self.sigma_grid = sigma_grid
        self.sigmas = tuple(noise_schedule(self.num_steps, self.shift, sigma_grid).tolist())
        self.adv_clip = float(adv_clip)
        self.multi_reward = multi_reward
        self.std_unbiased = bool(std_unbiased)
        self.std_eps = float(std_eps)
        self.method = method or self.name

    @abstractmethod
    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        """The frozen plan of iteration `iteration`; random choices draw from `generator`."""

    @abstractmethod
    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """One reward [P, G, *plan.score_shape] -> unclamped advantages [P, G, J]."""

    def advantages(self, rewards: torch.Tensor | RewardScores, plan: StepPlan, prompts: list[str] | None = None):
        """Rewards of one rollout -> advantages clamped to +-adv_clip, one [M_j, K_j] tensor per
        plan jump (the engine's jump-set layout)."""
        adv = combine_advantages(rewards, lambda r: self.normalize(r, plan, prompts), self.multi_reward)
        return plan.per_jump(adv.clamp(-self.adv_clip, self.adv_clip))

    def group_normalize(self, rewards: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return group_normalize(rewards, dim=dim, unbiased=self.std_unbiased, eps=self.std_eps)

    def seed_from(self, generator: torch.Generator | None) -> int:
        """A seed for the plan's frozen draws, taken from the run's generator (or 0)."""
        if generator is None:
            return 0
        return int(torch.randint(0, 2**62, (1,), generator=generator))

    def will_calibrate(self) -> bool:
        """Whether `calibrate` would change anything with these settings (checked before a model loads)."""
        return False

    def calibrate(self, rollout_fn, prompts: list[str]) -> dict | None:
        """Optional pre-training phase (DenseGRPO's exploration calibration). `rollout_fn(prompts,
        plan)` runs one rollout of `plan` and returns (Rollout, RewardScores). Returns a
        json-able record of what changed, or None when the method has nothing to calibrate."""
        return None

    def state_dict(self) -> dict:
        """What the plan of later iterations depends on beyond the config (resume)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(state)}")

    @classmethod
    def run_name_parts(cls, method_cfg) -> list[str]:
        """The run-name parts of this scheduler's own knobs, read from the method config: each
        formatter gets (value, method config) and returns a string, or None to leave it out."""
        parts = []
        for key, fmt in cls.run_name_knobs.items():
            value = method_cfg.get(key)
            part = None if value is None else fmt(value, method_cfg)
            if part is not None:
                parts.append(part)
        return parts
