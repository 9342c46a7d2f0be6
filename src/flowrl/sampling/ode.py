"""Deterministic sampling: integrate the probability-flow ODE along a sigma grid."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from flowrl.sampling.steps import ode_step


@torch.no_grad()
def ode_sample(model, x: torch.Tensor, sigmas: torch.Tensor, embeds, progress: bool = False) -> torch.Tensor:
    """Euler ODE from sigmas[0] to sigmas[-1]: x [B, *latent] -> x at sigmas[-1].
    One model forward (NFE) per step, the whole batch at once."""
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="ode", leave=False):
        sigma = sigmas[i].to(x.device).expand(x.shape[0])
        v = model.velocity(x, sigma, embeds)
        x = ode_step(x, v, sigmas[i], sigmas[i + 1])
    return x


@torch.no_grad()
def generate(
    model, prompts: list[str], num_steps: int = 16, shift: float = 3.0, seed: int = 0, batch_size: int = 64
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for prompts with the ODE sampler; noise fixed by seed,
    drawn per prompt index so the result does not depend on batch_size."""
    from flowrl.sampling.sigmas import flow_sigmas

    sigmas = flow_sigmas(num_steps, shift)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), *model.latent_shape), generator=g)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        embeds = model.encode_prompts(chunk)
        x = ode_sample(model, noise[i : i + len(chunk)].to(model.device), sigmas, embeds)
        out.append(model.decode(x).cpu())
    return torch.cat(out)
