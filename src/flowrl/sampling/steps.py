"""One denoising step of a flow model, deterministic (ODE) or stochastic (SDE), with its log-prob.

Velocity convention (rectified flow, FLUX/SD3): v = d x_t / d sigma = noise - x_0, so
x0_hat = x - sigma * v and an Euler step is x_next = x + (sigma_next - sigma) * v.
sigma decreases along sampling, so dt = sigma_next - sigma < 0.

All math runs in fp32 whatever the input dtype (bf16 models still get fp32 log-probs);
`prev_sample` is returned in the input dtype. Shapes: x, v [B, ...]; sigma, sigma_next are
floats, 0-d tensors, [B] tensors (one sigma per sample) or tensors broadcastable to x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SDEStepOutput:
    """What one stochastic step produced. All but prev_sample are fp32."""

    prev_sample: torch.Tensor  # [B, ...] x at sigma_next (input dtype)
    mean: torch.Tensor  # [B, ...] mean of the Gaussian transition
    std: torch.Tensor  # broadcastable to x: std of the transition (std_dev_t * sqrt(-dt))
    log_prob: torch.Tensor  # [B] log-density of prev_sample, averaged over non-batch dims
    # broadcastable to x: the SDE's diffusion coefficient before the sqrt(-dt) of the step
    # (Flow-GRPO's `std_dev_t`; eta for DanceGRPO; std itself for CPS). Flow-GRPO's KL divides by it.
    std_dev_t: torch.Tensor | None = None


def _as_f32(s, x: torch.Tensor) -> torch.Tensor:
    """A sigma as an fp32 tensor broadcastable to x; a [B] tensor becomes [B, 1, ..., 1]."""
    t = torch.as_tensor(s, dtype=torch.float32, device=x.device)
    if t.ndim == 1 and x.ndim > 1 and t.shape[0] == x.shape[0] and t.shape[0] != 1:
        t = t.view(-1, *([1] * (x.ndim - 1)))
    return t


def ode_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x_next = x + (sigma_next - sigma) * v."""
    s, s_next = _as_f32(sigma, x), _as_f32(sigma_next, x)
    return (x.float() + (s_next - s) * v.float()).to(x.dtype)


def predict_x0(x: torch.Tensor, v: torch.Tensor, sigma) -> torch.Tensor:
    """x0_hat = x - sigma * v (fp32)."""
    return x.float() - _as_f32(sigma, x) * v.float()


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(sample; mean, std^2) per element, averaged over all non-batch dims -> [B] (fp32).

    Averaging (not summing) over dims is what Flow-GRPO and DanceGRPO do; it keeps the
    ratio exp(logp_new - logp_old) in a sane range for 10^5-dim latents. Elements with
    std == 0 (a deterministic step) contribute 0.
    """
    sample, mean = sample.float(), mean.float()
    std = std.float().expand_as(mean)
    deterministic = std == 0
    safe_std = torch.where(deterministic, torch.ones_like(std), std)
    lp = -((sample - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    lp = torch.where(deterministic, torch.zeros_like(lp), lp)
    return lp.reshape(lp.shape[0], -1).mean(dim=1)


def mse_log_prob(sample: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """-mean((sample - mean)^2) over all non-batch dims -> [B] (fp32): the official CPS log-prob
    (flow_grpo `sde_step_with_logprob`, sde_type "cps"), which drops the Gaussian's constants and
    its variance. Only differences of it enter the ratio, so the dropped terms cancel between
    policies only where the std is the same; the variance factor does not."""
    d = sample.float() - mean.float()
    return -(d**2).reshape(d.shape[0], -1).mean(dim=1)


LOG_PROBS = ("gaussian", "mse")


def _finish(x, mean, std, noise, prev_sample, generator, log_prob: str = "gaussian", std_dev_t=None) -> SDEStepOutput:
    """Draw (or take) x_next ~ N(mean, std^2) and evaluate its log-prob.

    The log-prob is evaluated on x_next *as returned* (cast to x's dtype), so replaying the
    returned sample in training gives the same log-prob: the ratio is exactly 1 before the
    first update even for bf16 latents. std == 0 (noise level 0) is a deterministic step:
    x_next = mean and its log-prob is defined as 0. `log_prob`: "gaussian" (the density,
    averaged over dims) or "mse" (the official CPS form, see mse_log_prob).
    """
    if log_prob not in LOG_PROBS:
        raise ValueError(f"log_prob must be one of {LOG_PROBS}, got {log_prob!r}")
    std = std.expand_as(mean)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        prev_sample = (mean + std * noise.float()).to(x.dtype)
    lp = gaussian_log_prob(prev_sample, mean, std) if log_prob == "gaussian" else mse_log_prob(prev_sample, mean)
    return SDEStepOutput(
        prev_sample=prev_sample.to(x.dtype), mean=mean, std=std, log_prob=lp, std_dev_t=std if std_dev_t is None else std_dev_t
    )


def _check_decreasing(s: torch.Tensor, s_next: torch.Tensor, name: str) -> None:
    if bool((s_next > s).any()):
        raise ValueError(f"{name} goes from high to low noise: sigma_next must be <= sigma")


def flow_grpo_std_dev_t(sigma, noise_level: float, sigma_max):
    """Flow-GRPO's diffusion coefficient std_dev_t = a * sqrt(sigma / (1 - sigma)); where sigma == 1
    the denominator uses sigma_max instead (Flow-GRPO passes the schedule's second sigma,
    sigmas[1]). The one definition: on tensors (the SDE step, fp32) and on floats (float64: E-GRPO's
    entropy merge, DenseGRPO's initial psi)."""
    if isinstance(sigma, torch.Tensor):
        denom_sigma = torch.where(sigma >= 1, torch.as_tensor(sigma_max, dtype=torch.float32, device=sigma.device), sigma)
        return noise_level * torch.sqrt(sigma / (1 - denom_sigma))
    return noise_level * math.sqrt(sigma / (1 - (sigma_max if sigma >= 1 else sigma)))


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    noise_level: float = 0.7,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_max=None,
    sde_type: str = "sde",
    std_dev_t: float | None = None,
    log_prob: str | None = None,
) -> SDEStepOutput:
    """Flow-GRPO stochastic step from sigma to sigma_next with noise level a (`noise_level`).

    sde_type="sde" (Flow-GRPO, flow_grpo/diffusers_patch/sd3_sde_with_logprob.py):
      std_dev_t = a * sqrt(sigma / (1 - sigma))          (sigma == 1: 1 - sigma_max below)
      mean = x * (1 + std_dev_t^2 * dt / (2 sigma)) + v * (1 + std_dev_t^2 (1 - sigma) / (2 sigma)) * dt
      std  = std_dev_t * sqrt(-dt)
    sde_type="cps" (coefficients-preserving sampling):
      std  = sigma_next * sin(a * pi / 2)
      mean = x0_hat * (1 - sigma_next) + x1_hat * sqrt(sigma_next^2 - std^2), x1_hat = x + (1 - sigma) v
    x_next = mean + std * eps. `noise` given -> eps = noise (deterministic); `prev_sample`
    given -> x_next = prev_sample and only its log-prob is evaluated (the training pass).
    `sigma_max`: the sigma used in the std_dev_t denominator where sigma == 1; default
    sigma_next, which is the schedule's sigmas[1] when stepping from sigmas[0] = 1.
    `std_dev_t` given (sde_type "sde" only): use it as the diffusion coefficient instead of
    a * sqrt(sigma / (1 - sigma)), in the mean and the std alike (DenseGRPO's calibrated psi(t),
    its Eq. 11: sigma_t = psi(t)).
    `log_prob`: "gaussian" (default for "sde") or "mse" (default for "cps": the official CPS
    log-prob, -mean((x_next - mean)^2); see mse_log_prob).
    With a = 0 both types reduce exactly to the Euler ODE step.
    """
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if std_dev_t is not None and (sde_type != "sde" or std_dev_t < 0):
        raise ValueError(f"std_dev_t must be >= 0 and only goes with sde_type 'sde', got {std_dev_t} ({sde_type})")
    xf, vf = x.float(), v.float()
    s, s_next = _as_f32(sigma, x), _as_f32(sigma_next, x)
    _check_decreasing(s, s_next, "sde_step")
    if sde_type == "sde":
        dt = s_next - s  # < 0
        s_safe = s.clamp_min(1e-12)  # sigma = 0 never starts a step; guards 0/0 in the mean
        if std_dev_t is None:
            coef = flow_grpo_std_dev_t(s_safe, noise_level, s_next if sigma_max is None else sigma_max)
        else:
            coef = torch.as_tensor(float(std_dev_t), dtype=torch.float32, device=x.device)
        mean = xf * (1 + coef**2 * dt / (2 * s_safe)) + vf * (1 + coef**2 * (1 - s) / (2 * s_safe)) * dt
        std = coef * torch.sqrt(-dt)
        return _finish(x, mean, std, noise, prev_sample, generator, log_prob or "gaussian", std_dev_t=coef)
    if sde_type == "cps":
        std = s_next * math.sin(noise_level * math.pi / 2)
        x0_hat = xf - s * vf
        x1_hat = xf + (1 - s) * vf
        mean = x0_hat * (1 - s_next) + x1_hat * torch.sqrt((s_next**2 - std**2).clamp_min(0))
        return _finish(x, mean, std, noise, prev_sample, generator, log_prob or "mse")
    raise ValueError(f"sde_type must be 'sde' or 'cps', got {sde_type!r}")


def dance_sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    sigma_next,
    eta: float = 0.3,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SDEStepOutput:
    """DanceGRPO stochastic step (eta = 0.3 in the paper):
      x0 = x - sigma v;  mean = x + (sigma_next - sigma) v
      score = -(x - (1 - sigma) x0) / sigma^2;  mean += -0.5 eta^2 score (sigma_next - sigma)
      std = eta * sqrt(sigma - sigma_next)
    eta = 0 is the Euler ODE step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    xf, vf = x.float(), v.float()
    s, s_next = _as_f32(sigma, x), _as_f32(sigma_next, x)
    _check_decreasing(s, s_next, "dance_sde_step")
    dt = s_next - s
    x0 = xf - s * vf
    mean = xf + dt * vf
    score = -(xf - (1 - s) * x0) / s.clamp_min(1e-12) ** 2
    mean = mean - 0.5 * eta**2 * score * dt
    std = eta * torch.sqrt(-dt)
    return _finish(x, mean, std, noise, prev_sample, generator, std_dev_t=torch.as_tensor(float(eta)))
