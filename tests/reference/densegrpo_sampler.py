"""follows the DenseGRPO paper (arXiv 2601.20218v2, Eqs. 7 and 11, App. B.2; no public code) on
yifan123/flow_grpo flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py@ac4c86e, which it builds
on (tests/reference/flow_grpo_sampler.py); deviations:
- noise from the shared KeyedNoise, one sample at a time (as flow_grpo_sampler.py);
- only the paper's full-horizon completions (n = t: every remaining step); flowrl's cheaper
  `dense_horizon` spacing is its own choice and is not checked here;
- psi(t) is an input (a calibrated table) or, where none is given, Flow-GRPO's own
  a * sqrt(sigma / (1 - sigma)) on the pipeline's grid (the paper does not give the initial psi).

DenseGRPO's rollout: Flow-GRPO's G full SDE trajectories from independent noise on the SD3
pipeline's grid, with the step's diffusion coefficient replaced by psi(t) (Eq. 11: sigma_t = psi(t),
in the transition mean as in its std), and a reward for every intermediate latent: R_i = the reward
of the deterministic (Euler ODE) completion of x_i to sigma 0, i = 0..T-1, and R_T = the reward of
the final sample itself (App. B.2). The step reward of a jump is then R_{i+1} - R_i (Eq. 7).
"""

from __future__ import annotations

import torch

from tests.reference.common import ReferenceRollout, Transition
from tests.reference.flow_grpo_sampler import guided_velocity, pipeline_sigmas, sde_step_with_logprob


def initial_psi(sigmas: torch.Tensor, noise_level: float) -> list[float]:
    """Flow-GRPO's std_dev_t at each step, the starting point of the paper's calibration."""
    out = []
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        out.append(float(torch.sqrt(s / (1 - (sigmas[1] if s == 1 else s))) * noise_level))
    return out


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
    psi: list[float] | None = None,
    guidance_scale: float = 1.0,
    scheduler=None,
    sigmas: torch.Tensor | None = None,
) -> ReferenceRollout:
    """`prompts` x G trajectories with dense rewards. `sigmas` replaces the pipeline's grid (a
    negative control)."""
    sigmas = pipeline_sigmas(num_steps, scheduler) if sigmas is None else sigmas
    psi = initial_psi(sigmas, noise_level) if psi is None else list(psi)
    uncond = model.encode_prompts([""]) if guidance_scale > 1 else None
    out = ReferenceRollout(sigmas)

    def velocity(z, i, cond):
        return guided_velocity(model, z, sigmas[i], cond, uncond, guidance_scale)

    for p, prompt in enumerate(prompts):
        cond = model.encode_prompts([prompt])
        for g in range(group_size):
            z = noise.eps("x1", p, g).to(model.device).unsqueeze(0)  # independent, as Flow-GRPO
            states = [z]
            for i in range(num_steps):
                eps = noise.eps("step", p, g, i).to(z.device)
                z_next, lp, _, _ = sde_step_with_logprob(
                    velocity(z, i, cond), z, sigmas, i, noise_level, eps=eps, std_dev_t=psi[i]
                )
                out.transitions[(p, g, i)] = Transition(i + 1, z[0], z_next[0], lp[0])
                z = z_next
                states.append(z)
            out.score(("final", p, g), model.decode(z)[0], reward, prompt)  # R_T: the sample itself
            for i in range(num_steps):  # R_i: x_i completed by the ODE along the rest of the grid
                x = states[i]
                for k in range(i, num_steps):
                    x = x + (sigmas[k + 1] - sigmas[k]) * velocity(x, k, cond)
                out.score(("intermediate", p, g, i), model.decode(x)[0], reward, prompt)
    return out
