"""`entropy_merge` (E-GRPO, Zhang et al. 2026, "E-GRPO: High Entropy Steps Drive Effective
Reinforcement Learning for Flow Models"): merge consecutive low-entropy SDE steps into one
high-entropy jump, branch G samples off an ODE anchor at each active step, and normalise
advantages within the samples that share a (prompt, merged jump).

Entropy of one Flow-GRPO SDE jump sigma -> sigma' (Gaussian, d dims, std_dev_t as in sde_step):
    h = d/2 * log(2*pi*e * a^2 * sigma/(1 - sigma) * |sigma' - sigma|)
The threshold tau is compared with the per-dimension scale exp(h/d) = sqrt(2*pi*e * std^2) of
the jump, which is what reproduces the paper's merge lengths (T 16, shift 3, a 0.7; checked in
tests/test_methods.py): tau 1.8 -> [1,1,1,2,2,2,2,3], 2.0 -> [1,1,1,2,2,2,3,3], 2.6 -> [1,1,2,3,3,4,4,4].
"""

from __future__ import annotations

import math

import torch

from flowrl.step_schedulers.base import (
    Branch,
    Jump,
    StepPlan,
    StepScheduler,
    anchor_plan,
    branch_group_advantages,
    check_rewards,
)


def jump_entropy(sigma: float, sigma_next: float, noise_level: float, sigma_max: float) -> float:
    """Per-dimension differential entropy h/d (nats) of the SDE jump sigma -> sigma_next.
    Where sigma = 1 the std_dev_t denominator uses sigma_max (the schedule's sigmas[1])."""
    denom = 1 - (sigma_max if sigma >= 1 else sigma)
    var = noise_level**2 * sigma / denom * abs(sigma_next - sigma)  # std_dev_t^2 * |dsigma|
    if var <= 0:
        return -math.inf
    return 0.5 * math.log(2 * math.pi * math.e * var)


def entropy_scale(sigma: float, sigma_next: float, noise_level: float, sigma_max: float) -> float:
    """exp(h/d) = sqrt(2*pi*e * std_dev_t^2 * |dsigma|): the quantity tau thresholds."""
    return math.exp(jump_entropy(sigma, sigma_next, noise_level, sigma_max))


def merge_lengths(
    sigmas: list[float], active: int, tau: float, noise_level: float, merge: str = "adaptive", merge_length: int = 1
) -> list[int]:
    """For each active step k, how many schedule steps its jump spans.
    adaptive: the smallest l with entropy_scale(sigma_k -> sigma_{k+l}) >= tau (capped at the end);
    fixed: `merge_length` for every step (the paper's ablation). tau = 0 never merges."""
    t = len(sigmas) - 1
    if merge == "fixed":
        return [min(merge_length, t - k) for k in range(active)]
    lengths = []
    for k in range(active):
        length = 1
        while length < t - k and entropy_scale(sigmas[k], sigmas[k + length], noise_level, sigmas[1]) < tau:
            length += 1
        lengths.append(length)
    return lengths


class EntropyMergeStepScheduler(StepScheduler):
    name = "entropy_merge"

    def __init__(
        self,
        num_steps: int = 16,
        group_size: int = 12,
        noise_level: float = 0.7,
        shift: float = 3.0,
        tau: float = 2.2,
        num_branch_steps: int = 8,
        merge: str = "adaptive",
        merge_length: int = 2,
        sde: str = "sde",
        adv_clip: float = 5.0,
        multi_reward: str = "combined",
        method: str = "egrpo",
    ):
        super().__init__(num_steps, group_size, noise_level, sde, adv_clip, multi_reward)
        if not 1 <= num_branch_steps <= num_steps:
            raise ValueError(f"num_branch_steps must be in [1, num_steps={num_steps}], got {num_branch_steps}")
        if merge not in ("adaptive", "fixed"):
            raise ValueError(f"merge must be 'adaptive' or 'fixed', got {merge!r}")
        if merge_length < 1:
            raise ValueError(f"merge_length must be >= 1, got {merge_length}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.shift = float(shift)
        self.tau = float(tau)
        self.num_branch_steps = int(num_branch_steps)
        self.merge = merge
        self.merge_length = int(merge_length)
        self.method = method

    def merge_lengths(self) -> list[int]:
        from flowrl.sampling.sigmas import flow_sigmas

        sigmas = flow_sigmas(self.num_steps, self.shift).tolist()
        return merge_lengths(sigmas, self.num_branch_steps, self.tau, self.noise_level, self.merge, self.merge_length)

    def plan(self) -> StepPlan:
        t = self.num_steps
        jumps = [Jump(k, k + length) for k, length in enumerate(self.merge_lengths())]
        # deterministic completion from k + l (where the merged jump lands), not from k + 1
        branches = [Branch(j, [list(range(j.stop, t + 1))]) for j in jumps]
        note = f"every merged jump ({self.merge}, tau {self.tau}) of the first {self.num_branch_steps} steps"
        return anchor_plan(self.method, t, self.group_size, branches, note)

    def normalize(self, rewards: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """rewards [P, G, B, 1] -> [P, G, B]: multi-step group-normalised advantage per (prompt, jump)."""
        check_rewards(rewards, self.plan(), self.method)
        return branch_group_advantages(rewards)
