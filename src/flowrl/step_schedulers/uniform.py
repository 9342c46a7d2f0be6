"""Follows XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py@15cc71d (method=dancegrpo) and
yifan123/flow_grpo scripts/train_sd3.py, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py@ac4c86e
(method=flowgrpo); deviations:
- DanceGRPO's per-sample trained steps come from the run's seeded generator (the script draws
  them from torch's global RNG), so a resumed run draws the same ones;
- the official per-GPU batches are emulated ranks of one process (`prompts_per_rank`);
- Flow-GRPO's zero-advantage filter drops rows without re-adding any for divisibility (the
  update takes any number of rows).

`uniform`: G full SDE trajectories per prompt, a share of the steps trained, one group per
prompt. DanceGRPO (method=dancegrpo) and Flow-GRPO (method=flowgrpo) are two configurations of
this one scheduler; every difference between them is a config value, each following the official
code where the paper is silent:

| | DanceGRPO (`fastvideo/train_grpo_flux.py`) | Flow-GRPO (`scripts/train_sd3.py`) |
|---|---|---|
| sigma grid | shift(linspace(1, 0, T+1)) (`sd3_time_shift`) | the SD3 pipeline's FlowMatchEulerDiscreteScheduler (`sigma_grid: flow_match_euler`): last sigma 0.0089 at T 10 |
| step | DanceGRPO step, eta 0.3 | Flow-GRPO SDE (or CPS), a 0.7 |
| initial noise | the same for the G samples of a group | independent |
| trained steps | per sample, a random int((T-1)*0.6) of the first T-1 | the first int(T*0.99) in order |
| advantage | (r - mean_G) / (std_G + 1e-8), unbiased std | per prompt mean / (population std of all rewards + 1e-4) |
| scored image | x0 prediction of the last step | the final sample |
| optimizer steps | one every gradient_accumulation_steps samples | 2 per rollout, over shuffled halves |
"""

from __future__ import annotations

from typing import Literal

from flowrl.step_schedulers._common import SDETrajectories
from flowrl.step_schedulers.base import Fraction, Knobs, PosInt, check_whole_ranks


class UniformKnobs(Knobs):
    timestep_fraction: Fraction  # share of the steps trained
    gradient_accumulation_steps: PosInt | None = None  # DanceGRPO: samples per optimizer step, per GPU
    prompts_per_rank: PosInt | None = None  # DanceGRPO: prompts per emulated GPU
    optimizer_steps_per_rollout: PosInt | None = None  # Flow-GRPO
    sde: Literal["sde", "cps", "dance"] | None = None
    cps_log_prob: Literal["official", "gaussian"] | None = None

    def check(self, method: dict, train: dict) -> None:
        check_whole_ranks(self.prompts_per_rank, train)


class UniformStepScheduler(SDETrajectories):
    name = "uniform"
    knobs = UniformKnobs
