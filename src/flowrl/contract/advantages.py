"""Rewards -> advantages: the reward record that crosses module -> step scheduler, the group
statistics every variant uses, and the combination of several rewards (a contract module: the
step schedulers, the engine and the update import it; it imports none of them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowrl.contract.plan import StepPlan


@dataclass
class RewardScores:
    """What the reward model said about one rollout: each part's raw scores and the combined
    reward, all [P, G, *plan.score_shape]. Crosses module -> step scheduler."""

    parts: dict[str, torch.Tensor]
    total: torch.Tensor
    weights: dict[str, float]

    @classmethod
    def single(cls, name: str, scores: torch.Tensor) -> RewardScores:
        return cls({name: scores}, scores, {name: 1.0})


def group_normalize(rewards: torch.Tensor, dim: int = -1, unbiased: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(r - mean) / (std + eps) over `dim` (the group). Unbiased std + 1e-8 is torch's default as
    DanceGRPO, E-GRPO, G²RPO and MixGRPO use it (rewards [1, 2, 3, 6] -> [-0.92582, -0.46291, 0,
    1.38873]); Flow-GRPO's stat tracker uses the population std + 1e-4 (`unbiased=False`). A
    group of identical rewards gets advantage 0, not NaN."""
    r = rewards.float()
    return (r - r.mean(dim, keepdim=True)) / (r.std(dim, unbiased=unbiased, keepdim=True) + eps)


def branch_group_advantages(rewards: torch.Tensor, unbiased: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Anchor plans: rewards [P, G, B, C] -> advantages [P, G, B]. The G samples that left the
    same anchor state with the same jump form a group (E-GRPO's multi-step group-normalised
    advantage, per (prompt, branch)); each completion schedule c is normalised on its own and
    the C results are summed (G²RPO's Multi-Granularity Advantage Integration, which E-GRPO's
    official config uses too)."""
    if rewards.ndim != 4:
        raise ValueError(f"branch advantages take rewards [P, G, B, C], got shape {tuple(rewards.shape)}")
    return group_normalize(rewards, dim=1, unbiased=unbiased, eps=eps).sum(-1)


MULTI_REWARD = ("combined", "sum_advantages", "weighted_sum_advantages")


def combine_advantages(rewards: torch.Tensor | RewardScores, normalize, mode: str = "combined") -> torch.Tensor:
    """Several rewards -> one advantage tensor. `normalize(r)` is the variant's own reward ->
    advantage map. "combined" normalises the reward model's combined score (reward=multi: its
    weighted sum); "sum_advantages" normalises each part and adds the advantages unweighted
    (G²RPO's hps_clip script); "weighted_sum_advantages" adds them with the reward weights
    normalised to sum 1 (MixGRPO's train_grpo_flux.py divides its weights by their sum)."""
    if mode not in MULTI_REWARD:
        raise ValueError(f"multi_reward must be one of {MULTI_REWARD}, got {mode!r}")
    if not isinstance(rewards, RewardScores):
        return normalize(rewards)
    if mode == "combined":
        return normalize(rewards.total)
    weighted = mode == "weighted_sum_advantages"
    total_w = sum(rewards.weights[k] for k in rewards.parts)
    return sum((rewards.weights[k] / total_w if weighted else 1.0) * normalize(part) for k, part in rewards.parts.items())


def check_rewards(rewards: torch.Tensor, plan: StepPlan) -> None:
    want = len(plan.score_shape) + 2
    if rewards.ndim != want or rewards.shape[1] != plan.group_size or tuple(rewards.shape[2:]) != plan.score_shape:
        shape = ", ".join(["P", str(plan.group_size), *map(str, plan.score_shape)])
        raise ValueError(f"{plan.method} advantages take rewards [{shape}], got shape {tuple(rewards.shape)}")
