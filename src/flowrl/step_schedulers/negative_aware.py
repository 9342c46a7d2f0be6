"""Follows NVlabs/DiffusionNFT scripts/train_nft_sd3.py, config/nft.py (sd3_geneval),
flow_grpo/diffusers_patch/solver.py @24af555 (method=diffusionnft); deviations:
- the re-noising noise of every (sample, level) term is drawn at the rollout from the run's noise
  source and kept (the script draws it in the training loop); the same distribution, seeded;
- the model's timestep is the float sigma * 1000 in the rollout too (the script casts the
  rollout's to an integer, its training forward keeps the float);
- samples are not re-batched per GPU: one optimizer step per rollout over all (sample, level)
  terms, the mean of them, as `gradient_step_per_epoch = 1` gives (the script divides by the
  accumulation count x levels);
- the evaluation EMA (decay 0.9, every step) is the run's `method.ema`, as for Flow-GRPO.

`negative_aware`: DiffusionNFT, the forward-process negative-aware fine-tune. The rollout samples
G images per prompt with the *old* policy, deterministically (DPM-Solver++(2M), CFG off), and
keeps only x0 and the reward. Each sample is re-noised at the first int(T * 0.99) levels of a
random permutation of the T sampler sigmas; the loss contrasts the implicit positive policy
beta v_theta + (1 - beta) v_old and the negative one (1 + beta) v_old - beta v_theta in x0 space,
weighted by the optimality probability r = clip(A / 5, -1, 1) / 2 + 1/2, plus a small KL to the
base weights. The old policy is soft-updated once per iteration, d = min(0.001 k, 0.5) after k
optimizer steps (decay_type 1; OCR's decay_type 2: d = 0 until k = 75, then min(0.0075 (k - 75), 0.999)).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from flowrl.contract.objectives import NegativeAware, PolicyCopy
from flowrl.step_schedulers._common import FinalSamples
from flowrl.step_schedulers.base import Knobs, NonNegFloat, NonNegInt, PosFloat, PosInt


class NegativeAwareKnobs(Knobs):
    beta: PosFloat  # config.beta, the guidance strength of the implicit policies
    sampler: Literal["euler", "dpm2"]
    cfg_scale: PosFloat | None = None
    old_decay_rate: NonNegFloat  # d = min(rate * (k - delay), cap)
    old_decay_cap: Annotated[float, Field(ge=0, lt=1)]
    old_decay_delay: NonNegInt = 0
    levels: dict
    optimizer_steps_per_rollout: PosInt = 1


class NegativeAwareStepScheduler(FinalSamples):
    name = "negative_aware"
    knobs = NegativeAwareKnobs
    sweep_knobs = ("beta",)
    run_name_knobs = {"beta": lambda v, m: f"beta{v:g}"}
    small_overrides = ("method.num_steps=4", "method.group_size=2", "method.levels.fraction=0.5")

    def __init__(
        self,
        beta: float = 1.0,
        kl_beta: float = 1e-4,
        old_decay_rate: float = 1e-3,
        old_decay_cap: float = 0.5,
        old_decay_delay: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.beta, self.kl_beta = float(beta), float(kl_beta)
        self.old = PolicyCopy("old", float(old_decay_rate), float(old_decay_cap), int(old_decay_delay), samples=True)
        self.objective()  # validate now

    def objective(self) -> NegativeAware:
        return NegativeAware(beta=self.beta, adv_clip=self.adv_clip, kl_beta=self.kl_beta, old="old")

    def policies(self) -> tuple[PolicyCopy, ...]:
        return (self.old,)
