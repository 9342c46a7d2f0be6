"""Follows Tencent-Hunyuan/MixGRPO fastvideo/train_grpo_flux.py, fastvideo/utils/grpo_states.py,
scripts/finetune/finetune_flux_grpo_MixGRPO.sh@e5cdd6a; deviations:
- at start == max_timesteps the window rolls back (the script crashes on the empty window);
- the `random` strategy draws from a seeded generator (the script's draws are unseeded);
- MixGRPO-Flash (DPM-Solver++ after the window) is not built.

`sliding_window` (MixGRPO, Li et al. 2025, "MixGRPO: Unlocking Flow-based GRPO Efficiency with
Mixed ODE-SDE", arXiv 2507.21802): G full trajectories per prompt that are ODE everywhere except
a window of w consecutive SDE steps; only the window's steps are trained, and the window moves
with the iteration count. What the paper leaves open follows the official code
(Tencent-Hunyuan/MixGRPO `fastvideo/train_grpo_flux.py`, `fastvideo/utils/grpo_states.py`,
`scripts/finetune/finetune_flux_grpo_MixGRPO.sh`):

- window: steps [start, min(start + w, max_timesteps)), max_timesteps = T - 2 (the script's
  sampling_steps - 2), so the last two steps are never stochastic; T 25, w 4, Flow-GRPO SDE with
  eta 0.7 inside it, Euler outside; the G samples share their initial noise; the final sample is scored.
- strategies (grpo_states.py, read before each iteration's update):
  progressive: after `iters_per_group` iterations (25) the start moves by `stride` (1);
  decay: the interval falls linearly from max_iters_per_group to min_iters_per_group as the
    start moves (int(max (1 - p) + min p), p = start / max_timesteps);
  exp_decay: interval ceil(iters_per_group * exp(-k * max(0, start - threshold))) (k 0.1, 13);
  random: a start drawn uniformly from 0 .. max_timesteps - w each iteration (seeded here, the
    official draws unseeded).
  Past the end the start rolls back to 0 (`roll_back`). The official code rolls back only when
  the start exceeds max_timesteps and crashes on the empty window at start == max_timesteps
  (iteration 575 of the script); flowrl rolls back there instead (our choice).
- trained: every window step, every sample; advantages (r - mean_G) / (std_G + 1e-8), unbiased;
  several rewards normalised each and summed with their weights (1/3 each in the script);
  an optimizer step every gradient_accumulation_steps (3) samples, loss / (3 x w).
Not built: MixGRPO-Flash (DPM-Solver++ 2M after the window) needs a multistep ODE solver in the
engine, which no other method uses.

The window position is this scheduler's state (state_dict / load_state_dict); plan(iteration)
replays the official state machine from it, so the window of any iteration can be printed
(`python -m flowrl.plan --iteration N method=mixgrpo`) and a resumed run continues where it was.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from flowrl.contract import Jump, StepPlan, StepSettings, check_rewards
from flowrl.step_schedulers._common import update_schedule
from flowrl.step_schedulers.base import Knobs, PosInt, StepScheduler, check_at_most_steps, check_whole_ranks
from flowrl.utils.seeds import mix_seed

STRATEGIES = ("progressive", "decay", "exp_decay", "random")


class SlidingWindowKnobs(Knobs):
    window_size: PosInt  # w SDE steps
    strategy: Literal[STRATEGIES]
    iters_per_group: PosInt  # iterations before the window moves
    stride: PosInt
    roll_back: bool
    gradient_accumulation_steps: PosInt  # samples per optimizer step, per GPU
    prompts_per_rank: PosInt  # prompts per emulated GPU

    def check(self, method: dict, train: dict) -> None:
        # MixGRPO's last two steps are never stochastic (max_timesteps = T - 2)
        check_at_most_steps("window_size", self.window_size, method, margin=2)
        check_whole_ranks(self.prompts_per_rank, train)


class SlidingWindowStepScheduler(StepScheduler):
    name = "sliding_window"
    knobs = SlidingWindowKnobs
    sweep_knobs = ("window_size", "iters_per_group")
    run_name_knobs = {
        "window_size": lambda v, m: f"w{v}",
        "strategy": lambda v, m: None if v == "progressive" else v,
        "iters_per_group": lambda v, m: f"every{v}",
    }
    small_overrides = ("method.num_steps=6", "method.group_size=2", "method.window_size=2", "method.iters_per_group=1")

    def __init__(
        self,
        num_steps: int = 25,
        group_size: int = 12,
        noise_level: float = 0.7,
        shift: float = 3.0,
        window_size: int = 4,
        strategy: str = "progressive",
        iters_per_group: int = 25,
        stride: int = 1,
        overlap: bool = True,
        roll_back: bool = True,
        max_timesteps: int | None = None,
        max_iters_per_group: int = 10,
        min_iters_per_group: int = 1,
        exp_decay_threshold: int = 13,
        exp_decay_k: float = 0.1,
        seed: int = 0,
        same_initial_noise: bool = True,
        update: dict | None = None,
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "weighted_sum_advantages",
        std_unbiased: bool = True,
        std_eps: float = 1e-8,
        method: str = "mixgrpo",
        sigma_grid: str = "shifted_linspace",
    ):
        super().__init__(num_steps, group_size, shift, adv_clip, multi_reward, std_unbiased, std_eps, method, sigma_grid)
        self.max_timesteps = int(num_steps - 2 if max_timesteps is None else max_timesteps)
        if not 1 <= self.max_timesteps <= num_steps:
            raise ValueError(f"max_timesteps must be in [1, num_steps={num_steps}], got {self.max_timesteps}")
        if not 1 <= window_size <= self.max_timesteps:
            raise ValueError(f"window_size must be in [1, max_timesteps={self.max_timesteps}], got {window_size}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if iters_per_group < 1 or stride < 0 or min_iters_per_group < 1 or max_iters_per_group < min_iters_per_group:
            raise ValueError(
                f"need iters_per_group >= 1, stride >= 0, 1 <= min_iters_per_group <= max_iters_per_group; got "
                f"{iters_per_group}, {stride}, {min_iters_per_group}, {max_iters_per_group}"
            )
        self.noise_level = float(noise_level)
        self.sde = sde
        self.window_size = int(window_size)
        self.strategy = strategy
        self.iters_per_group = int(iters_per_group)
        self.stride = int(stride)
        self.overlap = bool(overlap)
        self.roll_back = bool(roll_back)
        self.max_iters_per_group = int(max_iters_per_group)
        self.min_iters_per_group = int(min_iters_per_group)
        self.exp_decay_threshold = int(exp_decay_threshold)
        self.exp_decay_k = float(exp_decay_k)
        self.seed = int(seed)
        self.same_initial_noise = bool(same_initial_noise)
        self.update_cfg = dict(update or {"step_every": "samples", "samples_per_step": 3})
        update_schedule(self.update_cfg, trained=[0])  # validate now
        StepSettings(sde, self.noise_level)
        self._state = self._initial_state()

    # ---- the window state machine (grpo_states.py) --------------------------------------------
    def _initial_state(self) -> dict:
        return {"iteration": 0, "start": self._random_start(0) if self.strategy == "random" else 0, "iter_in_group": 0}

    def _random_start(self, iteration: int) -> int:
        g = torch.Generator().manual_seed(mix_seed("window", self.seed, iteration))
        return int(torch.randint(0, self.max_timesteps - self.window_size + 1, (1,), generator=g))

    def _interval(self, start: int) -> int:
        if self.strategy == "decay":
            p = start / self.max_timesteps
            return max(self.min_iters_per_group, int(self.max_iters_per_group * (1 - p) + self.min_iters_per_group * p))
        if self.strategy == "exp_decay":
            return math.ceil(self.iters_per_group * math.exp(-self.exp_decay_k * max(0, start - self.exp_decay_threshold)))
        return self.iters_per_group

    def _advance(self, state: dict) -> dict:
        """The state after one more iteration (update_iteration in grpo_states.py)."""
        it, start, k = state["iteration"] + 1, state["start"], state["iter_in_group"] + 1
        if self.strategy == "random":
            return {"iteration": it, "start": self._random_start(it), "iter_in_group": 0}
        if k >= self._interval(start):
            k, start = 0, start + (self.stride if self.overlap else self.window_size)
        if start >= self.max_timesteps:  # the window would be empty (official: > max, then a crash at ==)
            if not self.roll_back:
                raise ValueError(f"{self.method}: the window passed the last step at iteration {it} and roll_back is off")
            start, k = 0, 0
        return {"iteration": it, "start": start, "iter_in_group": k}

    def window(self, iteration: int) -> list[int]:
        """The SDE (and trained) steps of `iteration`; moves the state there."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        state = self._state if self._state["iteration"] <= iteration else self._initial_state()
        while state["iteration"] < iteration:
            state = self._advance(state)
        self._state = state
        return list(range(state["start"], min(state["start"] + self.window_size, self.max_timesteps)))

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        missing = {"iteration", "start", "iter_in_group"} - set(state)
        if missing:
            raise ValueError(f"{self.name} state lacks {sorted(missing)}")
        self._state = {k: int(state[k]) for k in ("iteration", "start", "iter_in_group")}

    # ---- the plan -----------------------------------------------------------------------------
    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        window = self.window(iteration)
        step = StepSettings(self.sde, self.noise_level, sigma_max=self.sigmas[1])
        jumps = tuple(Jump(i, i + 1, step) for i in window)
        upd = update_schedule(self.update_cfg, trained=range(len(jumps)), seed=self.seed_from(generator))
        return StepPlan(
            method=self.method,
            sigmas=self.sigmas,
            group_size=self.group_size,
            trajectory="sde",
            jumps=jumps,
            update=upd,
            same_initial_noise=self.same_initial_noise,
            score="final",
            note=f"the SDE window, steps {window[0]}..{window[-1]} ({self.strategy}), ODE elsewhere",
        )

    def normalize(self, rewards: torch.Tensor, plan: StepPlan, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G] -> [P, G, J]: the final image's group advantage on every window step."""
        check_rewards(rewards, plan)
        adv = self.group_normalize(rewards, dim=1)
        return adv.unsqueeze(-1).expand(*adv.shape, len(plan.jumps))
