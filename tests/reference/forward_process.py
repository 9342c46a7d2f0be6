"""Reference update loops of the two forward-process methods, written from the structure of the
official training scripts (read, not copied):
  DiffusionNFT  NVlabs/DiffusionNFT scripts/train_nft_sd3.py@24af555 (the training half of an epoch)
  AWM           scxue/advantage_weighted_matching advantage_weighted_matching/scripts/train_sd3_awm.py@be51372

Each takes what the rollout left (the final samples x0, per sample its prompt's embeddings), the
rewards, and the draws the script makes at training time as inputs (the plan froze them in flowrl;
a reference reproduces what the script does with a draw, not the draw): the sigma index of each
(sample, level), the re-noising noise of each, and the shuffle of the samples. It imports nothing
from flowrl but the model objects handed to it (`velocity`), and does its own advantage formula,
micro-batching, loss math, accumulation and optimizer-step placement.

`mistake` plants one error a port might make (tests/reference/test_forward_process_parity.py
checks that the comparison catches it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Replay:
    """The inputs of one update (rows: samples, prompt-major p * G + g)."""

    x0: torch.Tensor  # [N, *latent]
    sigmas: torch.Tensor  # [T + 1] the sampler's grid
    level_index: torch.Tensor  # [N, K] sigma index of each (sample, level column)
    level_noise: torch.Tensor  # [N, K, *latent]
    embeds: Callable  # rows [n] long -> the prompt embeddings of those rows (a model's PromptEmbeds)
    rewards: torch.Tensor  # [P, G]
    order: torch.Tensor  # [N] the shuffle of the samples before they are batched
    steps: int  # optimizer steps per epoch (gradient_step_per_epoch / one for AWM)
    micro_batch: int  # samples per micro-batch (train.batch_size)


@dataclass
class Result:
    advantages: torch.Tensor  # [N] clamped
    weights: torch.Tensor  # [N] NFT: r; AWM: the scaled advantage
    losses: list[float] = field(default_factory=list)  # per optimizer step: the mean over its terms
    grads: list[torch.Tensor] = field(default_factory=list)  # per optimizer step, before the clip
    optimizer_steps: int = 0


def stat_tracker_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """flow_grpo's PerPromptStatTracker with global_std: each prompt's mean removed, divided by the
    population std of every reward of the epoch + 1e-4. [P, G] -> [P * G]."""
    r = rewards.double()
    centred = r - r.mean(dim=1, keepdim=True)
    return (centred / (r.flatten().std(unbiased=False) + eps)).flatten().float()


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).clone()


def _apply(params, optimizer, max_grad_norm: float, result: Result) -> None:
    """The script's end of an accumulation cycle: clip the norm, step, zero the gradients."""
    result.grads.append(_flat_grad(params))
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    result.optimizer_steps += 1


def _micro_batches(rp: Replay) -> list[torch.Tensor]:
    """The shuffled samples cut into micro-batches (the script's rebatching after its randperm)."""
    return list(rp.order.split(rp.micro_batch))


def _col(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


# ---- DiffusionNFT -------------------------------------------------------------------------------
def nft_update(
    policy,
    old,
    ref,
    rp: Replay,
    optimizer,
    *,
    beta: float,
    adv_clip_max: float = 5.0,
    kl_beta: float = 1e-4,
    max_grad_norm: float = 1.0,
    mistake: str | None = None,
) -> Result:
    """train_nft_sd3.py's training loop: micro-batches of the shuffled samples, inside each a loop
    over the K level columns; per (micro-batch, level) one backward of loss / (accumulation x K),
    an optimizer step every accumulation x K backwards.
    mistake: "no_adv_clamp" (r from the unclamped advantage), "velocity_space" (the paper's
    velocity-space loss instead of the code's x0-space one), "weight_with_grad" (the adaptive weight
    left in the graph), "swap_policies" (v+ and v- exchanged)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    raw = stat_tracker_advantages(rp.rewards)
    adv = raw if mistake == "no_adv_clamp" else raw.clamp(-adv_clip_max, adv_clip_max)
    r = adv / adv_clip_max / 2.0 + 0.5
    if mistake != "no_adv_clamp":
        r = r.clamp(0, 1)
    result = Result(adv, r)
    batches = _micro_batches(rp)
    accumulation = len(batches) // rp.steps  # gradient_accumulation_steps
    num_levels = rp.level_index.shape[1]
    per_step = accumulation * num_levels  # effective_grad_accum_steps
    backwards, step_loss = 0, 0.0
    for rows in batches:
        x0 = rp.x0[rows].float()
        c = rp.embeds(rows)
        for j in range(num_levels):
            t = rp.sigmas[rp.level_index[rows, j]].float()  # [B]
            te = _col(t, x0.ndim)
            xt = (1 - te) * x0 + te * rp.level_noise[rows, j].float()
            with torch.no_grad():
                v_old = old.velocity(xt, t, c).detach()
            v = policy.velocity(xt, t, c)
            with torch.no_grad():
                v_ref = ref.velocity(xt, t, c)
            pos = beta * v + (1 - beta) * v_old
            neg = (1.0 + beta) * v_old - beta * v
            if mistake == "swap_policies":
                pos, neg = neg, pos
            dims = tuple(range(1, x0.ndim))
            if mistake == "velocity_space":
                target = rp.level_noise[rows, j].float() - x0
                pos_loss = ((pos - target) ** 2).mean(dim=dims)
                neg_loss = ((neg - target) ** 2).mean(dim=dims)
            else:
                losses = []
                for pred_v in (pos, neg):
                    x0_hat = xt - te * pred_v
                    if mistake == "weight_with_grad":
                        w = (x0_hat - x0).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
                    else:
                        with torch.no_grad():
                            w = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clip(min=1e-5)
                    losses.append(((x0_hat - x0) ** 2 / w).mean(dim=dims))
                pos_loss, neg_loss = losses
            rb = r[rows].to(pos_loss.dtype)
            policy_loss = ((rb * pos_loss / beta + (1.0 - rb) * neg_loss / beta) * adv_clip_max).mean()
            kl = ((v - v_ref) ** 2).mean(dim=dims).mean()
            loss = policy_loss + kl_beta * kl
            (loss / per_step).backward()
            step_loss += float(loss.detach()) / per_step
            backwards += 1
            if backwards % per_step == 0:
                _apply(params, optimizer, max_grad_norm, result)
                result.losses.append(step_loss)
                step_loss = 0.0
    return result


# ---- AWM ----------------------------------------------------------------------------------------
def awm_update(
    policy,
    ref,
    ema,
    rp: Replay,
    optimizer,
    *,
    adv_clip_max: float = 5.0,
    advantage_max: float = 1.0,
    ghuber_power: float = 0.25,
    beta: float = 1e-3,
    ema_beta: float = 1.0,
    clip_range: float = 1.0,
    max_grad_norm: float = 1.0,
    mistake: str | None = None,
) -> Result:
    """train_sd3_awm.py's training loop (on-policy, weighting "ghuber", loss_type "exp_first", KL
    weights "Uniform"): per micro-batch one forward over its K x B (level-major) terms, the ratio
    against the same forward detached, PPO's clipped objective, the two KL terms, backward of
    loss / accumulation (accelerate), an optimizer step every `accumulation` micro-batches.
    mistake: "no_sigma_weight" (l without the sigma time weight), "plain_mse" (power 1: the plain
    matching error), "adv_unscaled" (the advantage not divided by adv_clip_max), "no_ema_kl"."""
    params = [p for p in policy.parameters() if p.requires_grad]
    adv = stat_tracker_advantages(rp.rewards).clamp(-adv_clip_max, adv_clip_max)
    scaled = adv if mistake == "adv_unscaled" else adv / adv_clip_max * advantage_max
    result = Result(adv, scaled)
    power = 1.0 if mistake == "plain_mse" else ghuber_power
    batches = _micro_batches(rp)
    accumulation = len(batches) // rp.steps
    num_levels = rp.level_index.shape[1]
    micro, step_loss = 0, 0.0
    for rows in batches:
        b = rows.numel()
        # level-major [K * B]: the micro-batch repeated once per level column
        rep = rows.repeat(num_levels)
        col = torch.arange(num_levels).repeat_interleave(b)
        sigma = rp.sigmas[rp.level_index[rep, col]].float()  # [K * B]
        x0 = rp.x0[rep].float()
        noise = rp.level_noise[rep, col].float()
        se = _col(sigma, x0.ndim)
        noised = (1 - se) * x0 + se * noise
        c = rp.embeds(rep)
        dims = tuple(range(1, x0.ndim))

        v = policy.velocity(noised, sigma, c)
        # the "ghuber" log-likelihood surrogate: -((m + 1e-10)^p - 1e-10^p) * sigma / p
        m = ((v.double() - (noise.double() - x0.double())) ** 2).mean(dim=dims)
        w = torch.ones_like(sigma.double()) if mistake == "no_sigma_weight" else sigma.double()
        log_prob = -((m + 1e-10) ** power - torch.tensor(1e-10, dtype=torch.float64) ** power) * w / power
        old_log_prob = log_prob.detach()  # on-policy: i < gradient_accumulation_steps always holds
        with torch.no_grad():
            v_ref = ref.velocity(noised, sigma, c).double()
            v_ema = ema.velocity(noised, sigma, c).double()
        ratio = torch.exp(log_prob - old_log_prob)
        a = scaled[rows].double().repeat(num_levels)  # the advantages repeated per level
        unclipped = -a * ratio
        clipped = -a * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        policy_loss = torch.maximum(unclipped, clipped).mean()
        vd = v.double()
        kl = ((vd - v_ref) ** 2).mean(dim=dims).mean()
        ema_kl = ((vd - v_ema) ** 2).mean(dim=dims).mean()
        loss = policy_loss + beta * kl + (0.0 if mistake == "no_ema_kl" else ema_beta) * ema_kl
        (loss / accumulation).backward()
        step_loss += float(loss.detach()) / accumulation
        micro += 1
        if micro % accumulation == 0:
            _apply(params, optimizer, max_grad_norm, result)
            result.losses.append(step_loss)
            step_loss = 0.0
    return result
