"""Follows scxue/advantage_weighted_matching advantage_weighted_matching/scripts/train_sd3_awm.py,
config/dgx_awm.py (geneval_sd3_no_cfg_1node) @be51372 (method=awm); deviations:
- the rollout sampler is the deterministic Euler ODE on the plan's sigmas: the script's SA-Solver
  (predictor / corrector order 2, stochastic tau = 0.4 for 0.3 <= sigma <= 0.9 in the GenEval config,
  0 for PickScore) is not ported; 14 NFE per image either way;
- the re-noising noise of every (sample, level) term is drawn at the rollout from the run's noise
  source (the script draws and stores it before training); the same distribution, seeded;
- a level draw is shared by each block of `share_rows` consecutive samples of the rollout (rows
  are prompt-major: 3 samples of one prompt); the script draws once per micro-batch after shuffling
  the samples, so its micro-batches mix prompts. The same levels' distribution per sample;
- `adv_scale` is its own knob (0.2 = advantage_max 1 / adv_clip_max 5): changing method.adv_clip
  alone does not rescale it, as the script's ratio would;
- the script skips its first two epochs (a comment blames a group-size bug): not emulated;
- the evaluation EMA (0.99, every step) is the run's `method.ema`.

`advantage_weighted`: AWM, advantage-weighted flow matching. The rollout samples G images per
prompt with the current policy, CFG off, and keeps x0 and the reward. Each sample is re-noised at
K = 6 levels, one drawn from each stratum of int(linspace(1, int(0.9 T), 7)) of the sampler's sigma
indices ("discrete_wo_init": sigma = 1 and the last steps never), one draw shared by each micro-batch
of train.batch_size = 3 samples. The loss is the flow-matching error of v_theta, generalised-Huber
(power 0.25) and sigma weighted, times the advantage (clamped to +-5, divided by 5), plus KL terms
to the base weights (beta 1e-3) and to an EMA of the policy (weight 1), the EMA soft-updated once per
iteration with d = min(0.001 k, 0.3) after k optimizer steps. One optimizer step per iteration.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from flowrl.contract.objectives import AdvantageWeightedMatching, PolicyCopy
from flowrl.step_schedulers._common import FinalSamples
from flowrl.step_schedulers.base import Knobs, NonNegFloat, PosFloat, PosInt


class AdvantageWeightedKnobs(Knobs):
    sampler: str = "euler"
    cfg_scale: PosFloat | None = None
    power: PosFloat  # train.ghuber_power
    adv_scale: PosFloat  # train.advantage_max / sample.adv_clip_max
    kl_ema_beta: NonNegFloat  # train.ema_beta
    ema_kl_rate: NonNegFloat  # kl_ema_decay_type "linear": d = min(rate * k, cap)
    ema_kl_cap: Annotated[float, Field(ge=0, lt=1)]
    levels: dict
    optimizer_steps_per_rollout: PosInt = 1


class AdvantageWeightedStepScheduler(FinalSamples):
    name = "advantage_weighted"
    knobs = AdvantageWeightedKnobs
    sweep_knobs = ("power",)
    run_name_knobs = {"power": lambda v, m: f"p{v:g}"}
    small_overrides = ("method.num_steps=4", "method.group_size=2", "method.levels.count=2", "method.levels.fraction=0.75")

    def __init__(
        self,
        power: float = 0.25,
        adv_scale: float = 0.2,
        kl_beta: float = 1e-3,
        kl_ema_beta: float = 1.0,
        ema_kl_rate: float = 1e-3,
        ema_kl_cap: float = 0.3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.power, self.adv_scale = float(power), float(adv_scale)
        self.kl_beta, self.kl_ema_beta = float(kl_beta), float(kl_ema_beta)
        self.ema = PolicyCopy("ema_kl", float(ema_kl_rate), float(ema_kl_cap))
        self.objective()  # validate now

    def objective(self) -> AdvantageWeightedMatching:
        return AdvantageWeightedMatching(self.adv_scale, self.power, self.kl_beta, self.kl_ema_beta, ema="ema_kl")

    def policies(self) -> tuple[PolicyCopy, ...]:
        return (self.ema,) if self.kl_ema_beta > 0 else ()
