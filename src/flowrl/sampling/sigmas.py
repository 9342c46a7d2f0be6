"""The flow-matching noise schedule (noise_scheduler side): the sigma grids of the official scripts.

x_t = (1 - sigma) * x_0 + sigma * noise, so sigma = 1 is pure noise and sigma = 0 the image.

Two grids, named by where they come from (a method's yaml picks one: `method.sigma_grid`):
- "shifted_linspace": shift(linspace(1, 0, T+1)), what the FLUX scripts compute by hand
  (DanceGRPO's `sd3_time_shift`, and MixGRPO, E-GRPO, G²RPO, which build on its code);
- "flow_match_euler": the grid of diffusers' FlowMatchEulerDiscreteScheduler after
  `set_timesteps(T)` (SD3.5's scheduler config: 1000 train timesteps, shift 3, no dynamic shift),
  which is what flow_grpo's SD3 pipeline samples on (`retrieve_timesteps`). Taken from the
  scheduler object itself, not re-derived: it runs from sigma 1 to the train schedule's smallest
  sigma, shifted a second time (0.0089 at shift 3), then 0, so its last step is nearly noiseless.
  diffusers (~3 s to import) is imported only when this grid is built.
"""

from __future__ import annotations

import torch


def time_shift(s: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3/FLUX resolution shift: sigma = shift*s / (1 + (shift-1)*s). shift > 1 spends more
    steps at high noise. Maps 0 -> 0 and 1 -> 1 for every shift > 0."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * s / (1 + (shift - 1) * s)


def flow_sigmas(num_steps: int = 16, shift: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sigmas [T+1] from 1 down to 0 for T = num_steps Euler/SDE steps.

    s = linspace(1, 0, T+1); sigma = shift*s / (1 + (shift-1)*s)  (DanceGRPO's FLUX scripts).
    Computed in fp64 and cast, so the endpoints are exactly 1 and 0.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    s = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64)
    return time_shift(s, float(shift)).to(dtype)


SIGMA_GRIDS = ("shifted_linspace", "flow_match_euler")


def flow_match_euler_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Sigmas [T+1] of diffusers' FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift) after
    set_timesteps(T), as flow_grpo's SD3 pipeline gets them (fp32, as the scheduler keeps them)."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=float(shift))
    scheduler.set_timesteps(int(num_steps))
    return scheduler.sigmas.detach().cpu().float()


def noise_schedule(num_steps: int, shift: float = 3.0, grid: str = "shifted_linspace") -> torch.Tensor:
    """Sigmas [T+1], 1 -> 0, of the named grid (SIGMA_GRIDS)."""
    if grid == "shifted_linspace":
        return flow_sigmas(num_steps, shift)
    if grid == "flow_match_euler":
        return flow_match_euler_sigmas(num_steps, shift)
    raise ValueError(f"sigma_grid must be one of {SIGMA_GRIDS}, got {grid!r}")
