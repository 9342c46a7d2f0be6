"""Core flow math: noise schedule, ODE/SDE steps and their log-probs."""

from flowrl.sampling.sigmas import flow_sigmas, time_shift
from flowrl.sampling.steps import (
    SDEStepOutput,
    dance_sde_step,
    gaussian_log_prob,
    mse_log_prob,
    ode_step,
    predict_x0,
    sde_step,
)

__all__ = [
    "SDEStepOutput",
    "dance_sde_step",
    "flow_sigmas",
    "gaussian_log_prob",
    "mse_log_prob",
    "ode_step",
    "predict_x0",
    "sde_step",
    "time_shift",
]
