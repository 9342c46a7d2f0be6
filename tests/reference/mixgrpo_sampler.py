"""follows Tencent-Hunyuan/MixGRPO fastvideo/train_grpo_flux.py (sample_reference_model),
fastvideo/utils/sampling_utils.py (run_sample_step, flow_grpo_step) and fastvideo/utils/grpo_states.py
(the progressive window)@e5cdd6a, as scripts/finetune/finetune_flux_grpo_MixGRPO.sh runs them
(--flow_grpo_sampling, --init_same_noise, training_strategy part, dpm_algorithm_type null,
--drop_last_sample off); deviations:
- noise from the shared KeyedNoise (tests/reference/common.py); the script also draws (and
  discards) noise on its ODE steps, which only moves its global RNG;
- one prompt per GPU (train_batch_size 1 in the script), so `init_same_noise` is one x_1 per prompt;
- only the progressive window strategy (the script's default) is transcribed; MixGRPO-Flash's
  DPM-Solver++ is not;
- the transformer call (int(sigma*1000)/1000 timesteps, guidance 3.5, bf16 autocast) is the wrapper's;
- the scored image goes from `decode` to the reward as a tensor (the script scores a PIL image).

MixGRPO's rollout: G full trajectories per prompt from the prompt's shared initial noise on the FLUX
scripts' grid shift(linspace(1, 0, T+1)); inside the window the Flow-GRPO SDE (eta, sigma_max =
sigmas[1]), elsewhere the Euler ODE step; the final sample scored (drop_last_sample is off).
"""

from __future__ import annotations

import math

import torch

from tests.reference.common import ReferenceRollout, Transition


def sigma_grid(num_steps: int, shift: float) -> torch.Tensor:
    """sd3_time_shift(shift, linspace(1, 0, T+1)) in fp32, as the script."""
    t = torch.linspace(1, 0, num_steps + 1)
    return (shift * t) / (1 + (shift - 1) * t)


def progressive_window(iteration: int, num_steps: int, window: int, iters_per_group: int, stride: int = 1) -> list[int]:
    """grpo_states.py, sample_strategy "progressive" with prog_overlap and roll_back: the window
    read before `iteration` updates have moved it. max_timesteps = sampling_steps - 2 (the script),
    so the last two steps are never stochastic."""
    max_timesteps = num_steps - 2
    cur, in_group = 0, 0
    for _ in range(iteration):  # update_iteration() runs once per training step, after the read
        in_group += 1
        if in_group >= iters_per_group:
            in_group, cur = 0, cur + stride
        if cur > max_timesteps:
            cur, in_group = 0, 0
    return list(range(cur, min(cur + window, max_timesteps)))


def flow_grpo_step(v, z, eta: float, sigmas: torch.Tensor, i: int, eps=None, deterministic: bool = False, prev_sample=None):
    """sampling_utils.flow_grpo_step: the Flow-GRPO SDE step, or, where `deterministic`, the Euler
    step x + dt * v (whose log-prob the script computes but never uses), for z, v [B, ...].
    Returns (z_next, log-prob [B] averaged over each sample's elements); `prev_sample` given: its
    log-prob (grpo_one_step, the training pass)."""
    z, v = z.float(), v.float()
    sigma, sigma_prev = sigmas[i], sigmas[i + 1]
    sigma_max = sigmas[1]
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * eta
    mean = z * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_dev_t * torch.sqrt(-dt)
    if prev_sample is not None:
        z_next = prev_sample.float()
    else:
        z_next = z + dt * v if deterministic else mean + std * eps.float()
    lp = -((z_next - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return z_next, lp.flatten(1).mean(1)


@torch.no_grad()
def sample(
    model,
    prompts: list[str],
    reward,
    noise,
    *,
    num_steps: int,
    group_size: int,
    window: list[int],
    eta: float = 0.7,
    shift: float = 3.0,
) -> ReferenceRollout:
    """`prompts` x G trajectories, SDE inside `window` (progressive_window), ODE elsewhere."""
    sigmas = sigma_grid(num_steps, shift)
    out = ReferenceRollout(sigmas)
    deterministic = [i not in window for i in range(num_steps)]  # training_strategy "part"
    for p, prompt in enumerate(prompts):
        embeds = model.encode_prompts([prompt])
        for g in range(group_size):  # batch_size 1: one row at a time
            z = noise.eps("x1", p, 0).to(model.device).unsqueeze(0)  # init_same_noise
            for i in range(num_steps):
                v = model.velocity(z, sigmas[i].reshape(1).to(z), embeds)
                eps = noise.eps("step", p, g, i).to(z.device)
                z_next, lp = flow_grpo_step(v, z, eta, sigmas, i, eps, deterministic[i])
                if not deterministic[i]:
                    out.transitions[(p, g, i)] = Transition(i + 1, z[0], z_next[0], lp[0])
                z = z_next
            out.score(("final", p, g), model.decode(z)[0], reward, prompt)
    return out
