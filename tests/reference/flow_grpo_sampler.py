"""follows yifan123/flow_grpo flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py and
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py@ac4c86e (as scripts/train_sd3.py calls them);
deviations:
- noise comes from the shared KeyedNoise (tests/reference/common.py), not the pipeline's
  prepare_latents / randn_tensor on torch's global RNG;
- one sample at a time (the pipeline runs sample.batch_size images per call): the same images to
  float rounding of other batchings;
- classifier-free guidance is done here, as the pipeline does it, from the wrapper's raw
  conditional and unconditional predictions: the caller hands a model whose own guidance is off
  (SD3 wrapper guidance_scale 1) and the empty prompt's embeddings;
- the scored image goes from `decode` to the reward as a tensor (the pipeline post-processes to
  an image first; train_sd3.py asks for output_type "pt", so no 8-bit step).

Flow-GRPO's rollout: the SD3 pipeline's own sigma grid (retrieve_timesteps on its
FlowMatchEulerDiscreteScheduler: shift 3, 1000 train timesteps, so the last sigma before 0 is the
train schedule's smallest, shifted again: 0.0089 at T 10), independent initial noise per image, the
Flow-GRPO SDE at every step (noise level a), the log-prob of every step, and the final sample
(after the last, nearly noiseless, SDE step) decoded and scored.
"""

from __future__ import annotations

import math

import torch

from tests.reference.common import ReferenceRollout, Transition


def pipeline_sigmas(num_steps: int, scheduler=None) -> torch.Tensor:
    """The grid the SD3 pipeline samples on: `retrieve_timesteps(scheduler, T)` then the scheduler's
    sigmas [T+1] (the pipeline's scheduler when given, else SD3.5's: FlowMatchEulerDiscreteScheduler,
    1000 train timesteps, shift 3, no dynamic shifting)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

    scheduler = scheduler or FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    retrieve_timesteps(scheduler, num_steps, "cpu")
    return scheduler.sigmas.float().clone()


def sde_step_with_logprob(v, z, sigmas: torch.Tensor, i: int, noise_level: float, eps=None, prev_sample=None, std_dev_t=None):
    """One Flow-GRPO SDE step from sigmas[i] to sigmas[i+1] (fp32, as the patched scheduler upcasts).
    z, v [B, ...]. Returns (z_next, log-prob [B] averaged over each sample's elements, the
    transition mean, std_dev_t).
    `prev_sample` given: its log-prob (the training pass). `std_dev_t` given: the diffusion
    coefficient itself (DenseGRPO's Eq. 11 sets it to psi(t)); else a * sqrt(sigma / (1 - sigma))."""
    z, v = z.float(), v.float()
    sigma, sigma_prev = sigmas[i], sigmas[i + 1]
    sigma_max = sigmas[1]  # the denominator where sigma = 1 (1 - 1 would divide by 0)
    dt = sigma_prev - sigma  # < 0
    if std_dev_t is None:
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    std_dev_t = torch.as_tensor(std_dev_t, dtype=torch.float32)
    # "our sde": the reverse-time SDE of the rectified flow, discretised with Euler-Maruyama
    mean = z * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_dev_t * torch.sqrt(-dt)
    if prev_sample is None:
        prev_sample = mean + std * eps.float()
    lp = -((prev_sample.float() - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return prev_sample, lp.flatten(1).mean(1), mean, std_dev_t


def guided_velocity(model, z, sigma, cond, uncond, guidance_scale: float):
    """The pipeline's noise_pred: uncond + s * (cond - uncond) when guidance is on (s > 1)."""
    sigma = sigma.reshape(1).to(z)
    v_cond = model.velocity(z, sigma, cond)
    if guidance_scale <= 1:
        return v_cond
    v_uncond = model.velocity(z, sigma, uncond)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample(
    model,
    prompts: list[str],
    reward,
    noise,
    *,
    num_steps: int,
    group_size: int,
    noise_level: float = 0.7,
    guidance_scale: float = 1.0,
    scheduler=None,
    sigmas: torch.Tensor | None = None,
    independent_noise: bool = True,
    last_step_noise=None,
) -> ReferenceRollout:
    """train_sd3.py's sampling of `prompts` x G images through pipeline_with_logprob.
    Negative controls: `sigmas` replaces the pipeline's grid; independent_noise False gives a
    group one x_1; `last_step_noise(p, g)` replaces the last step's noise."""
    sigmas = pipeline_sigmas(num_steps, scheduler) if sigmas is None else sigmas
    uncond = model.encode_prompts([""]) if guidance_scale > 1 else None  # the empty negative prompt
    out = ReferenceRollout(sigmas)
    for p, prompt in enumerate(prompts):
        cond = model.encode_prompts([prompt])
        for g in range(group_size):
            z = noise.eps("x1", p, g if independent_noise else 0).to(model.device).unsqueeze(0)
            for i in range(num_steps):
                v = guided_velocity(model, z, sigmas[i], cond, uncond, guidance_scale)
                eps = noise.eps("step", p, g, i) if last_step_noise is None or i < num_steps - 1 else last_step_noise(p, g)
                z_next, lp, _, _ = sde_step_with_logprob(v, z, sigmas, i, noise_level, eps=eps.to(z.device))
                out.transitions[(p, g, i)] = Transition(i + 1, z[0], z_next[0], lp[0])
                z = z_next
            out.score(("final", p, g), model.decode(z)[0], reward, prompt)  # the final sample itself
    return out
