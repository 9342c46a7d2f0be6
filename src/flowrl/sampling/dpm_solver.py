"""Deterministic DPM-Solver++(2M) for flow models, as DiffusionNFT's rollout sampler.

Follows NVlabs/DiffusionNFT flow_grpo/diffusers_patch/solver.py@24af555 (`run_sampling` with
solver "dpm2", determistic=True: `dpm_step`, `ddim_update`, `multistep_dpm_solver_second_order_update`);
deviations: none in the math (coefficients in fp64, the sample in fp32, as there).

With alpha = 1 - sigma and lambda = log(alpha / sigma), the model output is converted to the x0
prediction m_i = x_i - sigma_i v_i, then
  step 0 and the last step: DDIM with eta 0, x_{i+1} = (1 - s') m_i + s' (x_i - (1 - s) m_i) / s
    (s = sigma_i, s' = sigma_{i+1}; the last step, s' = 0, lands on m_i);
  steps 1 .. T-2: the multistep second-order update with h = lambda_{i+1} - lambda_i,
    r = (lambda_i - lambda_{i-1}) / h, D0 = m_i, D1 = (m_i - m_{i-1}) / r:
    x_{i+1} = (s'/s) x_i - alpha' (e^{-h} - 1) (D0 + D1 / 2).
At step 1 lambda_0 = -inf (sigma 1), so r = inf and D1 = 0: a first-order step, as there.
One model evaluation per step.
"""

from __future__ import annotations

import torch

from flowrl.sampling.steps import predict_x0


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    return torch.log(1 - sigma) - torch.log(sigma)


class DPMSolver2:
    """The solver's state over one trajectory: feed it every step's velocity in order."""

    def __init__(self, sigmas: torch.Tensor):
        self.sigmas = sigmas.detach().to("cpu", torch.float64)  # [T+1]
        self.prev_x0: torch.Tensor | None = None

    def step(self, x: torch.Tensor, v: torch.Tensor, i: int) -> torch.Tensor:
        """x [B, *latent] at sigmas[i], v its velocity -> x at sigmas[i+1] (x's dtype)."""
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        x32 = x.float()
        m = predict_x0(x32, v, float(s))  # [B, *latent] fp32
        last = i == len(self.sigmas) - 2
        if i == 0 or last or self.prev_x0 is None:
            noise_pred = (x32 - float(1 - s) * m) / float(s)
            out = float(1 - s_next) * m + float(s_next) * noise_pred
        else:
            s_prev = self.sigmas[i - 1]
            h = _lam(s_next) - _lam(s)
            r = (_lam(s) - _lam(s_prev)) / h
            coef = -(1 - s_next) * (torch.exp(-h) - 1)  # alpha' (1 - e^{-h})
            d1 = (m - self.prev_x0) * float(1 / r)
            out = float(s_next / s) * x32 + float(coef) * (m + 0.5 * d1)
        self.prev_x0 = m
        return out.to(x.dtype)
