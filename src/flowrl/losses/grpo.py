"""GRPO policy loss for flow models: PPO's clipped surrogate on per-step Gaussian log-probs,
advantages clamped, optional KL to the reference policy (Flow-GRPO).

Inputs are [N]: one entry per trained (sample, denoising step). Math in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GRPOLossOutput:
    loss: torch.Tensor  # scalar: what backward() is called on
    policy_loss: torch.Tensor  # scalar
    kl_loss: torch.Tensor  # scalar, 0 when kl_beta == 0
    ratio_mean: torch.Tensor  # scalar, detached
    clip_frac: torch.Tensor  # scalar, detached: share of |ratio - 1| > clip_eps
    approx_kl: torch.Tensor  # scalar, detached: 0.5 * mean((logp - logp_old)^2)

    def metrics(self) -> dict[str, float]:
        return {
            "train/loss": self.loss.item(),
            "train/policy_loss": self.policy_loss.item(),
            "train/kl_loss": self.kl_loss.item(),
            "train/ratio_mean": self.ratio_mean.item(),
            "train/clip_frac": self.clip_frac.item(),
            "train/approx_kl": self.approx_kl.item(),
        }


def clip_advantages(advantages: torch.Tensor, adv_clip: float = 5.0) -> torch.Tensor:
    """Clamp to [-adv_clip, adv_clip] (the papers use 5): one outlier group cannot dominate."""
    if adv_clip <= 0:
        raise ValueError(f"adv_clip must be > 0, got {adv_clip}")
    return advantages.float().clamp(-adv_clip, adv_clip)


def policy_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """pi_theta / pi_old = exp(logp - logp_old); exactly 1 before the first update."""
    return torch.exp(log_prob.float() - old_log_prob.float())


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Per sample [N]: max(-A r, -A clip(r, 1 - eps, 1 + eps)), PPO's pessimistic bound."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped)


def mean_kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std) -> torch.Tensor:
    """Per sample [N]: KL of two Gaussians with equal std, ||mu - mu_ref||^2 / (2 std^2),
    averaged over non-batch dims (as the log-probs are)."""
    mean, ref_mean = mean.float(), ref_mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    if std.ndim == 1 and mean.ndim > 1:
        std = std.view(-1, *([1] * (mean.ndim - 1)))
    kl = (mean - ref_mean) ** 2 / (2 * std**2)
    return kl.reshape(kl.shape[0], -1).mean(dim=1)


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    adv_clip: float = 5.0,
    kl_beta: float = 0.0,
    mean: torch.Tensor | None = None,
    ref_mean: torch.Tensor | None = None,
    std=None,
) -> GRPOLossOutput:
    """mean(clipped surrogate) + kl_beta * mean(KL to reference). Gradient flows only into
    log_prob (and mean): advantages and old log-probs are constants of the rollout."""
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if not (log_prob.shape == old_log_prob.shape == advantages.shape) or log_prob.ndim != 1:
        raise ValueError(
            f"grpo_loss takes [N] tensors of one shape, got {tuple(log_prob.shape)}, {tuple(old_log_prob.shape)}, {tuple(advantages.shape)}"
        )
    adv = clip_advantages(advantages.detach(), adv_clip)
    ratio = policy_ratio(log_prob, old_log_prob.detach())
    policy_loss = clipped_surrogate(ratio, adv, clip_eps).mean()
    if kl_beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("kl_beta > 0 needs mean, ref_mean and std of the step")
        kl_loss = mean_kl_to_reference(mean, ref_mean.detach(), std.detach() if torch.is_tensor(std) else std).mean()
    else:
        kl_loss = torch.zeros((), device=log_prob.device)
    with torch.no_grad():
        delta = log_prob.float() - old_log_prob.float()
        stats = dict(
            ratio_mean=ratio.mean(),
            clip_frac=((ratio - 1).abs() > clip_eps).float().mean(),
            approx_kl=0.5 * (delta**2).mean(),
        )
    return GRPOLossOutput(loss=policy_loss + kl_beta * kl_loss, policy_loss=policy_loss, kl_loss=kl_loss, **stats)
