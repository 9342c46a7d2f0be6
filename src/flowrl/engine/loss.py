"""GRPO policy loss for flow models (DanceGRPO, Flow-GRPO and the schedulers built on them).

PPO's clipped surrogate on the per-step Gaussian log-probs of the SDE sampler, with
group-relative advantages clamped to +-adv_clip, plus Flow-GRPO's optional KL to the reference
policy. Inputs are [N]: one entry per trained (sample, denoising step); log-probs are the [B]
fp32 per-step log-densities of `flowrl.sampling.steps` (averaged over non-batch dims).
All math runs in fp32 whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GRPOLossOutput:
    """What one loss evaluation hands to the training module: the tensor to backprop and the
    scalars it logs. Only `loss`, `policy_loss` and `kl_loss` carry a graph."""

    loss: torch.Tensor  # [] policy_loss + kl_beta * kl_loss: what backward() is called on
    policy_loss: torch.Tensor  # [] mean clipped surrogate
    kl_loss: torch.Tensor  # [] mean KL to the reference policy (0 when kl_beta == 0)
    ratio_mean: torch.Tensor  # [] detached: mean of pi_theta / pi_old
    clip_frac: torch.Tensor  # [] detached: fraction of entries with |ratio - 1| > clip_eps
    approx_kl: torch.Tensor  # [] detached: 0.5 * mean((log_prob - old_log_prob)^2)

    def metrics(self) -> dict[str, float]:
        """Python floats under `train/` keys, ready for a logger."""
        return {
            "train/loss": float(self.loss.detach()),
            "train/policy_loss": float(self.policy_loss.detach()),
            "train/kl_loss": float(self.kl_loss.detach()),
            "train/ratio_mean": float(self.ratio_mean),
            "train/clip_frac": float(self.clip_frac),
            "train/approx_kl": float(self.approx_kl),
        }


def clip_advantages(advantages: torch.Tensor, adv_clip: float = 5.0) -> torch.Tensor:
    """A clamped to [-adv_clip, adv_clip] (fp32). The papers clamp at 5 so that one group with a
    near-zero reward std cannot blow up the step."""
    if adv_clip <= 0:
        raise ValueError(f"adv_clip must be > 0, got {adv_clip}")
    return advantages.float().clamp(-adv_clip, adv_clip)


def policy_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """r = pi_theta / pi_old = exp(log_prob - old_log_prob) (fp32).

    Both sides are cast to fp32 *before* the subtraction, so identical inputs give exactly
    exp(0) = 1: the ratio before the first update is 1 bit for bit, not 1 +- rounding.
    """
    return torch.exp(log_prob.float() - old_log_prob.float())


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Per-entry PPO loss [N]: max(-A r, -A clip(r, 1 - eps, 1 + eps)).

    The max of the two losses is the pessimistic bound: a step that already moved the ratio
    past the trust region in the advantage's direction gets no further gradient, a step that
    moved it the wrong way keeps its full gradient.
    """
    ratio, advantages = ratio.float(), advantages.float()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped)


def mean_kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std) -> torch.Tensor:
    """Per-entry KL [N] between N(mean, std^2) and N(ref_mean, std^2): (mean - ref_mean)^2 / (2 std^2),
    averaged over the non-batch dims (Flow-GRPO).

    With equal stds the log-ratio of the two Gaussians reduces to this squared mean gap, so the
    KL needs no sampling. It is averaged, not summed, over dims like the log-probs, so kl_beta
    has the same scale as the policy term. mean, ref_mean: [N, ...]; std: a float, a 0-d
    tensor, [N] (one per entry) or anything broadcastable to mean.
    """
    mean, ref_mean = mean.float(), ref_mean.float()
    if mean.shape != ref_mean.shape:
        raise ValueError(f"mean and ref_mean must have one shape, got {tuple(mean.shape)} and {tuple(ref_mean.shape)}")
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    if std.ndim == 1 and mean.ndim > 1 and std.shape[0] == mean.shape[0]:
        std = std.view(-1, *([1] * (mean.ndim - 1)))  # [N] -> [N, 1, ..., 1]
    kl = (mean - ref_mean) ** 2 / (2 * std**2)  # [N, ...]
    return kl.reshape(kl.shape[0], -1).mean(dim=1)  # [N]


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
    weight: torch.Tensor | float = 1.0,
) -> GRPOLossOutput:
    """loss = mean(w * clipped_surrogate(r, clip(A), eps)) + kl_beta * mean(KL(mean || ref_mean)).

    weight [N] or a float (> 0): each term's policy weight (the plan's Jump.loss_weight), applied
    after the advantage clamp and not to the KL, as GRPO-Guard's per-step re-weighting.
    log_prob, old_log_prob, advantages: [N]. Gradient flows only into log_prob (and mean):
    the advantages, the rollout's log-probs, the reference mean and the step's std are
    constants of the rollout, so they are detached here rather than trusted to be.
    mean, ref_mean, std (see mean_kl_to_reference) are needed only when kl_beta > 0.
    """
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta}")
    shapes = [tuple(t.shape) for t in (log_prob, old_log_prob, advantages)]
    if len(set(shapes)) != 1 or len(shapes[0]) != 1:
        raise ValueError(f"log_prob, old_log_prob and advantages must all be [N], got shapes {shapes}")
    adv = clip_advantages(advantages.detach(), adv_clip)  # [N]
    old_log_prob = old_log_prob.detach().float()  # [N]
    ratio = policy_ratio(log_prob, old_log_prob)  # [N]
    policy_loss = (clipped_surrogate(ratio, adv, clip_eps) * weight).mean()  # []

    if kl_beta > 0:
        missing = [n for n, t in (("mean", mean), ("ref_mean", ref_mean), ("std", std)) if t is None]
        if missing:
            raise ValueError(f"kl_beta > 0 needs the step's mean, ref_mean and std; missing: {', '.join(missing)}")
        if mean.shape[0] != shapes[0][0]:
            raise ValueError(f"mean must have N = {shapes[0][0]} rows like log_prob, got shape {tuple(mean.shape)}")
        std = std.detach() if torch.is_tensor(std) else std
        kl_loss = mean_kl_to_reference(mean, ref_mean.detach(), std).mean()  # []
        loss = policy_loss + kl_beta * kl_loss
    else:
        kl_loss = torch.zeros((), dtype=torch.float32, device=log_prob.device)
        loss = policy_loss

    with torch.no_grad():
        log_ratio = log_prob.detach().float() - old_log_prob  # [N]
        ratio_mean = ratio.detach().mean()
        clip_frac = ((ratio.detach() - 1).abs() > clip_eps).float().mean()
        approx_kl = 0.5 * (log_ratio**2).mean()
    return GRPOLossOutput(
        loss=loss,
        policy_loss=policy_loss,
        kl_loss=kl_loss,
        ratio_mean=ratio_mean,
        clip_frac=clip_frac,
        approx_kl=approx_kl,
    )
