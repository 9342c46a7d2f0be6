"""What a plan trains: the objective of its policy update and the extra weight copies it reads.

The update (flowrl.engine.update) dispatches on the *type* of `plan.objective`; no method name
enters the engine. Three families:

  ClippedRatio               the SDE-step family (DanceGRPO, Flow-GRPO, ..., GRPO-Guard): PPO's
                             clipped surrogate on each trained jump's Gaussian log-prob ratio. Its
                             clip / KL values stay in the run's LossConfig (method.clip_eps, ...);
                             the record says only how the ratio is formed.
  NegativeAware              DiffusionNFT: flow matching on re-noised final samples, contrasting an
                             implicit positive and negative policy built from the current and the
                             old (sampling) policy, weighted by the optimality probability r(A).
  AdvantageWeightedMatching  AWM: the pretraining flow-matching loss on the rollout's final samples,
                             weighted by the group advantage, plus KL terms to the reference and to
                             an EMA of the policy.

The forward-process objectives ("final" plans) train (sample, noise level) terms: plan.levels
says which sigma indices each sample is re-noised at. `views` names the no-grad velocity views an
objective reads besides the current policy: "reference" (the initial weights: adapter off, or a
frozen copy) and the names of `plan.policies` (copies the trainer keeps and soft-updates).
"""

from __future__ import annotations

from dataclasses import dataclass

RATIO_FORMS = ("plain", "ratio_norm")


@dataclass(frozen=True)
class ClippedRatio:
    """ratio "plain": exp(log pi_theta - log pi_old) of the jump's Gaussian (every SDE method);
    "ratio_norm": GRPO-Guard's RatioNorm, rho = (log-ratio + mean_d(delta^2) / (2 s^2)) * s with
    delta = mu_theta - mu_old and s the transition std, which equals mean_d(eps * delta): the
    quadratic term that shifts the ratio's mean below 1 cancels (the rollout keeps mu_old)."""

    ratio: str = "plain"

    def __post_init__(self):
        if self.ratio not in RATIO_FORMS:
            raise ValueError(f"ratio must be one of {RATIO_FORMS}, got {self.ratio!r}")

    @property
    def views(self) -> tuple[str, ...]:
        return ()

    @property
    def keeps_mean(self) -> bool:
        """The rollout must keep each trained jump's transition mean mu_old."""
        return self.ratio == "ratio_norm"

    def to_dict(self) -> dict:
        return {"objective": "clipped_ratio", "ratio": self.ratio}


@dataclass(frozen=True)
class NegativeAware:
    """DiffusionNFT (train_nft_sd3.py): r = clamp(A / adv_clip / 2 + 1/2, 0, 1);
    v+ = beta v_theta + (1 - beta) v_old, v- = (1 + beta) v_old - beta v_theta; x0 errors of both,
    each divided by its detached mean absolute error (adaptive x0 weighting); term =
    adv_clip * (r L+ + (1 - r) L-) / beta, plus kl_beta * mean_d((v_theta - v_ref)^2)."""

    beta: float = 1.0  # config.beta, the "guidance strength"
    adv_clip: float = 5.0  # config.sample.adv_clip_max: the A -> r map's Z and the loss scale
    kl_beta: float = 1e-4  # config.train.beta
    old: str = "old"  # the policy copy that samples and forms v+ / v-

    def __post_init__(self):
        if self.beta <= 0 or self.adv_clip <= 0 or self.kl_beta < 0:
            raise ValueError(f"NegativeAware needs beta > 0, adv_clip > 0, kl_beta >= 0, got {self}")

    @property
    def views(self) -> tuple[str, ...]:
        return (self.old, "reference") if self.kl_beta > 0 else (self.old,)

    keeps_mean = False

    def to_dict(self) -> dict:
        return {"objective": "negative_aware", "beta": self.beta, "adv_clip": self.adv_clip, "kl_beta": self.kl_beta}


@dataclass(frozen=True)
class AdvantageWeightedMatching:
    """AWM (train_sd3_awm.py): A' = clamp(A, +-adv_clip) * adv_scale; m = mean_d((v_theta -
    (eps - x0))^2); l = -((m + 1e-10)^power - 1e-10^power) * sigma / power; policy term
    -A' * exp(l - sg(l)) (value -A', gradient A' sigma m^(power-1) grad m); plus
    kl_ref_beta * mean_d((v_theta - v_ref)^2) + kl_ema_beta * mean_d((v_theta - v_ema)^2)."""

    adv_scale: float = 0.2  # advantage_max / adv_clip_max = 1 / 5
    power: float = 0.25  # ghuber_power
    kl_ref_beta: float = 1e-3  # train.beta (GenEval, be51372)
    kl_ema_beta: float = 1.0  # train.ema_beta
    ema: str = "ema_kl"  # the policy copy of the EMA KL term

    def __post_init__(self):
        if self.adv_scale <= 0 or self.power <= 0 or self.kl_ref_beta < 0 or self.kl_ema_beta < 0:
            raise ValueError(f"AdvantageWeightedMatching needs adv_scale, power > 0 and KL betas >= 0, got {self}")

    @property
    def views(self) -> tuple[str, ...]:
        out = ("reference",) if self.kl_ref_beta > 0 else ()
        return out + ((self.ema,) if self.kl_ema_beta > 0 else ())

    keeps_mean = False

    def to_dict(self) -> dict:
        return {
            "objective": "advantage_weighted_matching",
            "adv_scale": self.adv_scale,
            "power": self.power,
            "kl_ref_beta": self.kl_ref_beta,
            "kl_ema_beta": self.kl_ema_beta,
        }


Objective = ClippedRatio | NegativeAware | AdvantageWeightedMatching


@dataclass(frozen=True)
class PolicyCopy:
    """A copy of the trained weights the trainer keeps beside them: it starts equal to theta and,
    after every iteration's optimizer steps, moves to d * copy + (1 - d) * theta with
    d = min(rate * (k - delay), cap) for k >= delay, else 0 (k: optimizer steps so far).
    DiffusionNFT's old policy: rate 1e-3, cap 0.5 (decay_type 1) or delay 75, rate 7.5e-3, cap 0.999
    (decay_type 2); AWM's KL EMA: rate 1e-3, cap 0.3. `samples`: the rollout runs under this copy."""

    name: str
    rate: float
    cap: float
    delay: int = 0
    samples: bool = False

    def __post_init__(self):
        if self.name == "reference" or not self.name:
            raise ValueError(f"a policy copy needs a name other than 'reference', got {self.name!r}")
        if self.rate < 0 or not 0 <= self.cap < 1 or self.delay < 0:
            raise ValueError(f"policy copy {self.name}: rate >= 0, 0 <= cap < 1, delay >= 0, got {self}")

    def decay(self, optimizer_steps: int) -> float:
        if optimizer_steps < self.delay:
            return 0.0
        return min(self.rate * (optimizer_steps - self.delay), self.cap)

    def to_dict(self) -> dict:
        return {"name": self.name, "rate": self.rate, "cap": self.cap, "delay": self.delay, "samples": self.samples}
