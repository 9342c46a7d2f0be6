"""The flow-matching noise schedule (noise_scheduler side): sigmas of FLUX / SD3 / DanceGRPO.

x_t = (1 - sigma) * x_0 + sigma * noise, so sigma = 1 is pure noise and sigma = 0 the image.
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
