"""follows XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py@15cc71d (sample_reference_model,
run_sample_step, flux_step); deviations:
- noise comes from the shared KeyedNoise (tests/reference/common.py), not torch's global RNG, so the
  engine can be handed the same draws;
- one prompt per GPU (scripts/finetune/finetune_flux_grpo.sh, train_batch_size 1): the script's
  `init_same_noise` draws ONE x_1 for all rows of a GPU, which is one per prompt there. The 8-GPU
  scripts (train_batch_size 2) share that x_1 across the GPU's two prompts; flowrl (and this
  reference) draw one per prompt;
- the transformer call (int(sigma*1000)/1000 timesteps, guidance 3.5, bf16 autocast) is the model
  wrapper's: the reference hands `velocity` the sigma;
- the scored image goes from `decode` to the reward as a tensor (the script saves a PNG / a PIL
  image: 8-bit quantisation before the reward model).

The sampler of DanceGRPO's FLUX script, one sample at a time: G full stochastic trajectories per
prompt from the prompt's shared initial noise, the DanceGRPO SDE step at every step, the log-prob
of every step, and the image decoded from the x0 prediction of the LAST step (the final noisy
sample is not what the script scores).
"""

from __future__ import annotations

import math

import torch

from tests.reference.common import ReferenceRollout, Transition


def sd3_time_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """The script's grid: shift * t / (1 + (shift - 1) * t) of linspace(1, 0, T+1), in fp32 as the
    script computes it (torch.linspace's default dtype)."""
    return (shift * t) / (1 + (shift - 1) * t)


def sigma_grid(num_steps: int, shift: float) -> torch.Tensor:
    return sd3_time_shift(shift, torch.linspace(1, 0, num_steps + 1))


def flux_step(v, z, eta: float, sigmas: torch.Tensor, i: int, eps: torch.Tensor | None = None, prev_sample=None):
    """flux_step(grpo=True, sde_solver=True): one DanceGRPO SDE step from sigmas[i] to sigmas[i+1]
    for z, v [B, ...]. Returns (z_next, x0 prediction, log-prob [B] averaged over each sample's
    elements). `prev_sample` given: its log-prob (grpo_one_step, the training pass). fp32
    throughout, as the script casts z to float32 before the step."""
    z, v = z.float(), v.float()
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    dsigma = sigma_next - sigma  # < 0
    mean = z + dsigma * v  # the Euler (ODE) mean ...
    x0 = z - sigma * v
    std = eta * math.sqrt(float(sigma - sigma_next))  # the script takes math.sqrt of the step length
    score = -(z - x0 * (1 - sigma)) / sigma**2  # ... plus the score correction of the reverse SDE
    mean = mean + (-0.5 * eta**2 * score) * dsigma
    z_next = mean + eps.float() * std if prev_sample is None else prev_sample.float()
    # the Gaussian log-density of z_next, averaged over each sample's elements (not summed: the
    # script's `mean(dim=tuple(range(1, ndim)))`, which keeps ratios of 10^5-dim latents in range)
    lp = -((z_next - mean) ** 2) / (2 * std**2) - math.log(std) - math.log(math.sqrt(2 * math.pi))
    return z_next, x0, lp.flatten(1).mean(1)


@torch.no_grad()
def sample(
    model,
    prompts: list[str],
    reward,
    noise,
    *,
    num_steps: int,
    group_size: int,
    eta: float = 0.3,
    shift: float = 3.0,
    init_same_noise: bool = True,
    score: str = "last_x0",
    sigmas: torch.Tensor | None = None,
) -> ReferenceRollout:
    """The script's rollout of `prompts` x G samples. `score`: "last_x0" (the script) or "final"
    (the last noisy sample: a negative control); `sigmas` replaces the script's grid (a negative
    control); `init_same_noise` False gives every sample its own x_1 (a negative control)."""
    sigmas = sigma_grid(num_steps, shift) if sigmas is None else sigmas
    out = ReferenceRollout(sigmas)
    for p, prompt in enumerate(prompts):
        # the script repeats each prompt's embeddings G times and samples the rows one by one
        embeds = model.encode_prompts([prompt])
        for g in range(group_size):
            z = noise.eps("x1", p, 0 if init_same_noise else g).to(model.device).unsqueeze(0)
            x0 = None
            for i in range(num_steps):
                v = model.velocity(z, sigmas[i].reshape(1).to(z), embeds)
                z_next, x0, lp = flux_step(v, z, eta, sigmas, i, noise.eps("step", p, g, i).to(z.device))
                out.transitions[(p, g, i)] = Transition(i + 1, z[0], z_next[0], lp[0])
                z = z_next
            # `latents = pred_original`: the x0 prediction of the last step is decoded and scored
            scored = x0 if score == "last_x0" else z
            out.score(("final", p, g), model.decode(scored)[0], reward, prompt)
    return out
