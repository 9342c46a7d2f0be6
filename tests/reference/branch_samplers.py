"""follows bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py@ef6ec9f (G²RPO: sample_reference_model,
run_anchor_sample_step, run_sde_sample_step, run_ode_sample_step, flow_grpo_step) and
shengjun-zhang/VisualGRPO fastvideo/workers/sampler/flux_sampler.py@ae619bf (E-GRPO: FluxSampler.sample,
_run_anchor_sample, _run_sde_sample_step with merge_step, _run_ode_sample); deviations:
- noise from the shared KeyedNoise (tests/reference/common.py), not torch's global RNG;
- every sample of a group branches (G²RPO's script does; E-GRPO's released sampler branches only
  for the first sample of a group and then stacks an empty list, so it cannot run as released);
- the anchor and branch latents stay in the wrapper's dtype: both scripts store the anchor
  trajectory in bf16 (`all_latents.append(z.to(torch.bfloat16))`, their mixed precision), so a
  branch starts from a bf16-rounded anchor state; E-GRPO also stores the branch's successor in bf16
  after computing its log-prob on the fp32 one;
- E-GRPO's completion starts where the merged jump lands (k + l, `landing`, flowrl's default);
  `completion_start="next"` transcribes the released loop, which restarts at k + 1 on a latent
  already at sigma_{k+l};
- the anchor runs only to the last branch point (the scripts run it to the end for an evaluation
  reward that nothing trains on);
- the transformer call (int(sigma*1000)/1000 timesteps, guidance 3.5, bf16 autocast) is the wrapper's;
  the scored image goes from `decode` to the reward as a tensor (the scripts score a PIL image).

The branching rollout both scripts share: one ODE anchor trajectory per prompt (Flow-GRPO's step
at eta 0, i.e. Euler) from the prompt's shared initial noise on shift(linspace(1, 0, T+1)); at each
branch step k every sample takes ONE Flow-GRPO SDE jump from the anchor state x_k to sigma_{k+l}
(l = 1 for G²RPO; E-GRPO's merge_step l: std_dev_t at sigma_k, dt over the l steps); then, per
granularity g, the ODE on the grid sigmas[:k+l+1] ++ sigmas[k+l+1::g], and the scored image is the
x0 prediction at the last grid point it evaluates (the loop stops one point short of the grid's end,
which is sigma 0 when the stride reaches it and otherwise the stride's last point).
"""

from __future__ import annotations

import math

import torch

from tests.reference.common import ReferenceRollout, Transition


def sigma_grid(num_steps: int, shift: float) -> torch.Tensor:
    """sd3_time_shift(shift, linspace(1, 0, T+1)) in fp32, as both scripts."""
    t = torch.linspace(1, 0, num_steps + 1)
    return (shift * t) / (1 + (shift - 1) * t)


def flow_grpo_step(v, z, eta: float, sigmas: torch.Tensor, i: int, eps=None, merge_step: int = 1, prev_sample=None):
    """flow_grpo_step / FluxSampler._flow_grpo_step: the Flow-GRPO SDE from sigmas[i] to
    sigmas[i + merge_step] (std_dev_t at sigmas[i], dt over the whole jump) for z, v [B, ...]; eta 0
    is the Euler step (the anchor and the completions). Returns (z_next, x0 prediction, log-prob [B]
    averaged over each sample's elements); `prev_sample` given: its log-prob (the training pass)."""
    z, v = z.float(), v.float()
    sigma, sigma_prev = sigmas[i], sigmas[i + merge_step]
    sigma_max = sigmas[1]
    dt = sigma_prev - sigma
    x0 = z - sigma * v
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * eta
    mean = z * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    if eta == 0:  # noise times a zero std: the scripts add 0 * randn; the log-prob is unused there
        return mean, x0, None
    std = std_dev_t * torch.sqrt(-dt)
    z_next = mean + std * eps.float() if prev_sample is None else prev_sample.float()
    lp = -((z_next - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
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
    branch_steps: list[int],
    merge_steps: list[int] | None = None,
    granularities: tuple[int, ...] = (1, 2),
    eta: float = 0.7,
    shift: float = 3.0,
    completion_start: str = "landing",
) -> ReferenceRollout:
    """`prompts` x G samples, each branching at every step of `branch_steps` (the scripts'
    eta_step_list) with jump lengths `merge_steps` (E-GRPO's eta_step_merge_list; None: 1 each, G²RPO)."""
    sigmas = sigma_grid(num_steps, shift)
    merge_steps = [1] * len(branch_steps) if merge_steps is None else list(merge_steps)
    out = ReferenceRollout(sigmas)
    for p, prompt in enumerate(prompts):
        embeds = model.encode_prompts([prompt])

        def velocity(z, sigma, embeds=embeds):
            return model.velocity(z, sigma.reshape(1).to(z), embeds)

        # the anchor: once per group (`index % num_generations == 0`), ODE from the shared x_1
        z = noise.eps("x1", p, 0).to(model.device).unsqueeze(0)
        anchor = [z]
        for i in range(max(branch_steps)):
            z, _, _ = flow_grpo_step(velocity(z, sigmas[i]), z, 0.0, sigmas, i)
            anchor.append(z)
        for g in range(group_size):  # every sample of the group (see the deviations)
            for k, merge in zip(branch_steps, merge_steps):
                xk = anchor[k]
                eps = noise.eps("step", p, g, k).to(xk.device)
                x_next, _, lp = flow_grpo_step(velocity(xk, sigmas[k]), xk, eta, sigmas, k, eps, merge_step=merge)
                out.transitions[(p, g, k)] = Transition(k + merge, xk[0], x_next[0], lp[0])
                for gran in granularities:
                    grid = torch.cat([sigmas[: k + merge + 1], sigmas[k + merge + 1 :: gran]])
                    # the ODE loop runs i = start .. len(grid) - 2: the latent is at grid[start]
                    start = k + merge if completion_start == "landing" else k + 1
                    x, x0 = x_next, None
                    for i in range(start, len(grid) - 1):
                        x, x0, _ = flow_grpo_step(velocity(x, grid[i]), x, 0.0, grid, i)
                    out.score(("branch", p, g, k, gran), model.decode(x0)[0], reward, prompt)
    return out
