"""The rollout engine: executes a step scheduler's plan with batched model calls, no gradient,
and records what training needs (every latent on the trajectory, each jump's log-prob under the
rollout policy). One code path for the tiny and the real models.

Rows are prompt-major: prompt p's group is rows p*G .. p*G+G-1. A forward takes up to
`max_batch` rows (a whole group and several prompts at once when memory allows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowrl.models.base import PromptEmbeds


@dataclass
class Rollout:
    """One rollout of P prompts x G samples; crosses engine -> module."""

    prompts: list[str]  # [P*G], each prompt repeated G times
    embeds: PromptEmbeds  # [P*G]
    sigmas: torch.Tensor  # [T+1]
    latents: torch.Tensor  # [P*G, T+1, *latent] x at every sigma index (x[:, 0] = noise)
    log_probs: torch.Tensor  # [P*G, T] fp32 log-prob of each jump under the rollout policy
    images: torch.Tensor  # [P*G, 3, H, W] in [0, 1]
    nfe: int  # model evaluations (rows x steps) spent
    group_size: int

    @property
    def num_prompts(self) -> int:
        return len(self.prompts) // self.group_size


def initial_noise(
    model, num_prompts: int, group_size: int, same_in_group: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """x_1 [P*G, *latent]: one draw per prompt repeated over its group (DanceGRPO), or one per row."""
    if same_in_group:
        return model.initial_noise(num_prompts, generator).repeat_interleave(group_size, dim=0)
    return model.initial_noise(num_prompts * group_size, generator)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def rollout_sde_trajectories(
    model,
    step_scheduler,
    prompts: list[str],
    sigmas: torch.Tensor,
    generator: torch.Generator | None = None,
    max_batch: int = 64,
) -> Rollout:
    """G full stochastic trajectories per prompt (plan.trajectory == 'sde'): every step is the
    scheduler's SDE step. Costs P*G*T NFE in ceil(P*G / max_batch) * T forwards."""
    plan = step_scheduler.plan()
    if plan.trajectory != "sde":
        raise ValueError(f"rollout_sde_trajectories runs 'sde' plans, got {plan.trajectory!r}")
    if len(sigmas) != plan.num_steps + 1:
        raise ValueError(f"plan has {plan.num_steps} steps but {len(sigmas)} sigmas")
    g = plan.group_size
    rows = [p for p in prompts for _ in range(g)]
    embeds = model.encode_prompts(list(prompts)).repeat_interleave(g)
    x = initial_noise(model, len(prompts), g, plan.same_initial_noise, generator)
    n, t = x.shape[0], plan.num_steps
    latents = torch.empty((n, t + 1, *x.shape[1:]), dtype=x.dtype, device=x.device)  # preallocated
    log_probs = torch.empty((n, t), dtype=torch.float32, device=x.device)
    latents[:, 0] = x
    noise = torch.randn((t, *x.shape), generator=generator, device=x.device)  # drawn up front: chunking cannot change samples
    for i in range(t):
        for sl in _chunks(n, max_batch):
            xi = latents[sl, i]
            v = model.velocity(xi, sigmas[i].expand(xi.shape[0]).to(xi), embeds[sl])
            out = step_scheduler.sde_step(xi, v, sigmas[i], sigmas[i + 1], noise=noise[i, sl])
            latents[sl, i + 1] = out.prev_sample
            log_probs[sl, i] = out.log_prob
    images = torch.cat([model.decode(latents[sl, t]) for sl in _chunks(n, max_batch)])
    return Rollout(rows, embeds, sigmas, latents, log_probs, images, nfe=n * t, group_size=g)


def step_log_prob(model, step_scheduler, rollout: Rollout, step: int, rows: slice):
    """Re-evaluate jump `step` of the given rows under the current (trainable) policy: the
    training-time forward. Returns the SDEStepOutput (log_prob with grad, mean, std)."""
    x = rollout.latents[rows, step]
    sigma, sigma_next = rollout.sigmas[step], rollout.sigmas[step + 1]
    v = model.velocity(x, sigma.expand(x.shape[0]).to(x), rollout.embeds[rows])
    return step_scheduler.sde_step(x, v, sigma, sigma_next, prev_sample=rollout.latents[rows, step + 1])
