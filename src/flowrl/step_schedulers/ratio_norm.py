"""Follows yifan123/flow_grpo scripts/train_sd3_GRPO_Guard.py, config/grpo_guard.py @9745241
(general_ocr_sd3_rationorm; method=grpo_guard); deviations:
- Flow-GRPO's zero-advantage filter drops rows without re-adding any for divisibility (the script
  puts random dropped ones back so the count divides num_batches_per_epoch; flowrl's update takes
  any number of rows), as flowrl's flowgrpo;
- one process shuffles all samples into the two optimizer steps' halves (the script: each GPU its
  own), as flowrl's flowgrpo;
- RatioNorm's s is the step's own transition std per term (the script: the batch means of
  std_dev_t and sqrt|dt|, equal to it since every row of a batch is at the same step);
- the 1 / |dt| re-weighting is computed from the plan's float64 sigmas (the script: the fp32
  batch mean of sqrt|dt|, squared), and the `sde: dance` / `step_weight: none` switches are
  flowrl's (the script runs only the Flow-GRPO SDE with both RatioNorm and the re-weighting on).

`ratio_norm`: GRPO-Guard (arXiv 2510.22319) is Flow-GRPO with two changes to the loss, both plan
data here (no method name in the engine):
  (a) the importance ratio is RatioNorm's, exp(rho) with rho = (l + b) s, l the Gaussian log-ratio,
      b = mean_d((mu_theta - mu_old)^2) / (2 s^2), s the transition std: rho = mean_d(eps *
      (mu_theta - mu_old)), mean 1 and no 1/s spread across steps (ClippedRatio(ratio="ratio_norm");
      the rollout keeps each jump's mean mu_old);
  (b) each step's clipped policy loss is divided by |dt_j| = sigma_j - sigma_{j+1}
      (Jump.loss_weight, `step_weight: inv_dt`; `none` switches it off), after the clip, before
      the KL.
Everything else is the Flow-GRPO machinery (SDETrajectories) at the Guard config's values.
On the DanceGRPO step (`sde: dance`) s is that step's own std, eta sqrt|dt| (SDEStepOutput.std),
so rho is again mean_d(eps * (mu_theta - mu_old)).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch

from flowrl.contract import StepPlan
from flowrl.contract.objectives import ClippedRatio
from flowrl.step_schedulers._common import SDETrajectories
from flowrl.step_schedulers.base import Fraction, Knobs, PosInt

STEP_WEIGHTS = ("inv_dt", "none")


class RatioNormKnobs(Knobs):
    timestep_fraction: Fraction  # share of the steps trained (config/grpo_guard.py: 0.99)
    optimizer_steps_per_rollout: PosInt  # gradient_accumulation_steps = num_batches_per_epoch // 2
    sde: Literal["sde", "dance"]  # RatioNorm assumes a Gaussian step: not CPS's mse log-prob
    step_weight: Literal["inv_dt", "none"]  # the per-step loss / |dt| re-weighting, or none


class RatioNormStepScheduler(SDETrajectories):
    name = "ratio_norm"
    knobs = RatioNormKnobs
    sweep_knobs = ("step_weight",)
    run_name_knobs = {"step_weight": lambda v, m: None if v == "inv_dt" else f"w{v}"}

    def __init__(self, step_weight: str = "inv_dt", **kwargs):
        if step_weight not in STEP_WEIGHTS:
            raise ValueError(f"step_weight must be one of {STEP_WEIGHTS}, got {step_weight!r}")
        if kwargs.get("sde", "sde") not in ("sde", "dance"):
            raise ValueError(f"RatioNorm needs a Gaussian step, sde 'sde' or 'dance', got {kwargs['sde']!r}")
        super().__init__(**kwargs)
        self.step_weight = step_weight

    def loss_weight(self, start: int, stop: int) -> float:
        """1 / |dt| of jump start -> stop (`inv_dt`: train_sd3_GRPO_Guard.py's policy_loss /
        sqrt_dt.mean()**2), or 1 (`none`)."""
        if self.step_weight == "none":
            return 1.0
        return 1.0 / abs(self.sigmas[stop] - self.sigmas[start])

    def plan(self, iteration: int = 0, generator: torch.Generator | None = None) -> StepPlan:
        base = super().plan(iteration, generator)
        jumps = tuple(replace(j, loss_weight=self.loss_weight(j.start, j.stop)) for j in base.jumps)
        return replace(base, jumps=jumps, objective=ClippedRatio(ratio="ratio_norm"))
