"""The forward-process objectives' math and GRPO-Guard's RatioNorm (the records that select them
are in flowrl.contract.objectives). Per-term functions: inputs [N, *latent] velocities / latents
and [N] per-term scalars, outputs [N] losses; all in fp32 (AWM's official loss runs in fp64: the
terms are formed in fp64 here too). The update (flowrl.engine.update) averages the terms of an
optimizer step and adds nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _mean_d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(dim=1)


def _col(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [N] per-term scalar broadcastable to like [N, *latent]."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def ratio_norm_log_ratio(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor, std
) -> torch.Tensor:
    """GRPO-Guard's normalised log-ratio [N] (flow_grpo scripts/train_sd3_GRPO_Guard.py@9745241):
    rho = (l + b) * s, l = log_prob - old_log_prob (the dims-averaged Gaussian log-probs),
    b = mean_d((mean - old_mean)^2) / (2 s^2), s the transition std (a scalar per term). b is
    formed from `mean` with its graph, as there, so rho = mean_d(eps * (mean - old_mean)) exactly
    and d rho / d mean = eps / D."""
    s = torch.as_tensor(std, dtype=torch.float32, device=log_prob.device)
    # a scalar, or one per term ([N] or [N, 1, ..., 1], the step output's broadcast shape) -> [N]
    s = s.reshape(()) if s.numel() == 1 else s.reshape(s.shape[0], -1)[:, 0]
    s = s.detach()
    b = _mean_d((mean.float() - old_mean.detach().float()) ** 2) / (2 * s**2)  # [N]
    return (log_prob.float() - old_log_prob.detach().float() + b) * s


@dataclass
class TermsOutput:
    """One chunk's forward-process terms: `loss` [N] with a graph (policy + KL), the parts for logging."""

    loss: torch.Tensor  # [N]
    policy: torch.Tensor  # [N] detached
    kl: torch.Tensor  # [N] detached

    def metrics(self) -> dict[str, float]:
        return {
            "train/loss": float(self.loss.detach().mean()),
            "train/policy_loss": float(self.policy.mean()),
            "train/kl_loss": float(self.kl.mean()),
        }


def negative_aware_terms(
    v_theta: torch.Tensor,
    v_old: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: torch.Tensor,
    advantages: torch.Tensor,
    beta: float,
    adv_clip: float = 5.0,
    kl_beta: float = 0.0,
    v_ref: torch.Tensor | None = None,
) -> TermsOutput:
    """DiffusionNFT's per-term loss (NVlabs/DiffusionNFT scripts/train_nft_sd3.py@24af555).
    v_theta (grad), v_old, v_ref [N, *latent]; x_t, x0 [N, *latent]; t [N] the level's sigma;
    advantages [N] (already clamped to +-adv_clip).
      r = clamp(A / adv_clip / 2 + 1/2, 0, 1)
      v+ = beta v_theta + (1 - beta) v_old,  v- = (1 + beta) v_old - beta v_theta
      x0+ = x_t - t v+, L+ = mean_d((x0+ - x0)^2) / max(mean_d|x0+ - x0|, 1e-5) (weight detached); likewise L-
      term = adv_clip * (r L+ + (1 - r) L-) / beta + kl_beta * mean_d((v_theta - v_ref)^2)"""
    v_theta, v_old, x_t, x0 = v_theta.float(), v_old.detach().float(), x_t.float(), x0.float()
    r = (advantages.detach().float() / adv_clip / 2 + 0.5).clamp(0, 1)  # [N]
    tt = _col(t.float(), x_t)
    pos = x_t - tt * (beta * v_theta + (1 - beta) * v_old)
    neg = x_t - tt * ((1 + beta) * v_old - beta * v_theta)

    def adaptive(pred):  # the self-normalised x0 error, its weight detached
        w = _mean_d((pred - x0).abs()).clamp_min(1e-5).detach()
        return _mean_d((pred - x0) ** 2) / w

    policy = adv_clip * (r * adaptive(pos) + (1 - r) * adaptive(neg)) / beta  # [N]
    kl = torch.zeros_like(policy)
    if kl_beta > 0:
        kl = _mean_d((v_theta - v_ref.detach().float()) ** 2)
    return TermsOutput(policy + kl_beta * kl, policy.detach(), kl.detach())


AWM_EPS = 1e-10  # train_sd3_awm.py's offset inside the power (changes the value, not the gradient)


def advantage_weighted_terms(
    v_theta: torch.Tensor,
    noise: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    advantages: torch.Tensor,
    adv_scale: float = 0.2,
    power: float = 0.25,
    kl_ref_beta: float = 0.0,
    v_ref: torch.Tensor | None = None,
    kl_ema_beta: float = 0.0,
    v_ema: torch.Tensor | None = None,
) -> TermsOutput:
    """AWM's per-term loss (scxue/advantage_weighted_matching advantage_weighted_matching/scripts/
    train_sd3_awm.py@be51372, weighting "ghuber", loss_type "exp_first", on-policy).
    v_theta (grad) [N, *latent]; noise, x0 [N, *latent]; sigma [N]; advantages [N] (clamped).
      m = mean_d((v_theta - (noise - x0))^2),  l = -((m + 1e-10)^p - 1e-10^p) * sigma / p
      term = -A * adv_scale * exp(l - sg(l)) + kl_ref_beta mean_d((v_theta - v_ref)^2)
             + kl_ema_beta mean_d((v_theta - v_ema)^2)
    The ratio exp(l - sg(l)) is 1 on-policy (the clip at 1 +- 1 never binds and is left out): the
    policy term's value is -A', its gradient A' sigma m^(p-1) grad m."""
    v = v_theta.double()
    target = noise.double() - x0.double()
    m = _mean_d((v - target) ** 2)  # [N]
    ell = -((m + AWM_EPS) ** power - AWM_EPS**power) * sigma.double() / power
    a = advantages.detach().double() * adv_scale
    policy = -a * torch.exp(ell - ell.detach())
    kl = torch.zeros_like(policy)
    if kl_ref_beta > 0:
        kl = kl + kl_ref_beta * _mean_d((v - v_ref.detach().double()) ** 2)
    if kl_ema_beta > 0:
        kl = kl + kl_ema_beta * _mean_d((v - v_ema.detach().double()) ** 2)
    loss = (policy + kl).float()
    return TermsOutput(loss, policy.detach().float(), kl.detach().float())
