"""Losses: the GRPO clipped policy-gradient loss with optional KL to the reference policy."""

from flowrl.losses.grpo import (
    GRPOLossOutput,
    clip_advantages,
    clipped_surrogate,
    grpo_loss,
    mean_kl_to_reference,
    policy_ratio,
)

__all__ = [
    "GRPOLossOutput",
    "clip_advantages",
    "clipped_surrogate",
    "grpo_loss",
    "mean_kl_to_reference",
    "policy_ratio",
]
