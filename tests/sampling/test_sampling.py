"""Tests of the core flow math: noise schedule, ODE / SDE steps and their log-probs.

Every expected value is worked out by hand (arithmetic in the comments) or computed with a
different algebraic form than the code under test, never by calling it with its own formula.
Conventions (the papers' shared math): x_t = (1 - sigma) x_0 + sigma eps, v = eps - x_0,
sigma goes from 1 (noise) down to 0 (data), dt = sigma_next - sigma < 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowrl.sampling import (
    SDEStepOutput,
    dance_sde_step,
    flow_sigmas,
    gaussian_log_prob,
    ode_step,
    predict_x0,
    sde_step,
)
from flowrl.sampling.ode import ode_sample

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def scalar(value: float) -> torch.Tensor:
    """A batch of one 1-element sample, shape [1, 1]."""
    return torch.tensor([[value]], dtype=torch.float32)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


class ConstantVelocity:
    """Fake model for ode_sample: v(x, sigma) = c everywhere."""

    def __init__(self, c: torch.Tensor):
        self.c = c
        self.calls = 0

    def velocity(self, x, sigma, embeds):
        # ode_sample passes one sigma per sample ([B]) and the embeds through untouched.
        assert sigma.shape == (x.shape[0],)
        assert embeds == "embeds"
        self.calls += 1
        return self.c.expand_as(x)


# --------------------------------------------------------------------------- flow_sigmas


def test_flow_sigmas_endpoints_length_and_monotone():
    # T = 16 steps need T + 1 = 17 sigmas, from pure noise (1) exactly down to data (0).
    sigmas = flow_sigmas(16, 3.0)
    assert sigmas.shape == (17,)
    assert sigmas.dtype == torch.float32
    assert sigmas[0].item() == 1.0
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), "sigmas must be strictly decreasing"


def test_flow_sigmas_matches_sd3_time_shift_in_another_form():
    # sd3_time_shift(shift, t) = shift*t / (1 + (shift-1)*t). Dividing numerator and
    # denominator by shift*t (t > 0): 1 / (1/(shift*t) + (shift-1)/shift) = 1 / (1 + (1/t - 1)/shift).
    # Evaluate that second form with plain Python floats on t = linspace(1, 0, T+1) = 1 - i/T.
    for num_steps, shift in [(16, 3.0), (10, 1.0), (7, 0.5), (5, 5.0)]:
        sigmas = flow_sigmas(num_steps, shift, dtype=torch.float64).tolist()
        for i, got in enumerate(sigmas):
            t = 1 - i / num_steps
            expected = 0.0 if t == 0 else 1 / (1 + (1 / t - 1) / shift)
            assert got == pytest.approx(expected, abs=1e-12), (num_steps, shift, i)


def test_flow_sigmas_hand_values_t4_shift3():
    # t = 1, 0.75, 0.5, 0.25, 0 and sigma = 3t / (1 + 2t):
    #   t=1    -> 3/3 = 1
    #   t=0.75 -> 2.25/2.5 = 0.9
    #   t=0.5  -> 1.5/2 = 0.75
    #   t=0.25 -> 0.75/1.5 = 0.5
    #   t=0    -> 0
    expected = torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0])
    torch.testing.assert_close(flow_sigmas(4, 3.0), expected, atol=1e-7, rtol=0)


def test_flow_sigmas_shift1_is_plain_linspace():
    # shift = 1: sigma = t / (1 + 0*t) = t, i.e. 1, 7/8, ..., 1/8, 0.
    expected = torch.tensor([1 - i / 8 for i in range(9)])
    torch.testing.assert_close(flow_sigmas(8, 1.0), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("num_steps, shift", [(0, 3.0), (-2, 3.0), (2.5, 3.0), (16, 0.0), (16, -1.0)])
def test_flow_sigmas_rejects_bad_input(num_steps, shift):
    # No step, a fractional step count or a non-positive shift has no meaning: ValueError.
    with pytest.raises(ValueError):
        flow_sigmas(num_steps, shift)


# --------------------------------------------------------------------------- x0 / log-density


# --------------------------------------------------------------------------- flow_match_euler grid


def test_flow_match_euler_grid_is_flow_grpos_t10():
    # Flow-GRPO samples on diffusers' FlowMatchEulerDiscreteScheduler (yifan123/flow_grpo
    # flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py@ac4c86e: retrieve_timesteps ->
    # set_timesteps(10), SD3.5's scheduler config: 1000 train timesteps, shift 3). Values read off
    # the scheduler of the pinned diffusers (requirements.lock) and quoted in issue 19. In closed form:
    # s = linspace(1, sigma_min, 10) with sigma_min = shift(1/1000) = 0.002994, then shifted again,
    # so the last sigma before 0 is shift(0.002994) = 3 * 0.002994 / (1 + 2 * 0.002994) = 0.008929.
    from flowrl.sampling.sigmas import noise_schedule

    expected = [1.0, 0.9601, 0.9133, 0.8577, 0.7904, 0.7073, 0.6022, 0.4649, 0.2780, 0.0089, 0.0]
    got = noise_schedule(10, 3.0, "flow_match_euler")
    torch.testing.assert_close(got, torch.tensor(expected), atol=5e-5, rtol=0)
    assert got[-2].item() == pytest.approx(3 * 0.002994 / (1 + 2 * 0.002994), abs=1e-5)
    # its last SDE step (a 0.7, sigma 0.0089 -> 0) is nearly noiseless; on shift(linspace) it is not:
    # std = a * sqrt(sigma / (1 - sigma)) * sqrt(sigma) -> 0.7 * 0.0949 * 0.0945 = 0.0063 vs 0.7 * 0.5164 * 0.5590 = 0.202
    for grid, std in (("flow_match_euler", 0.0063), ("shifted_linspace", 0.2021)):
        sig = noise_schedule(10, 3.0, grid).tolist()
        out = sde_step(scalar(0.0), scalar(0.0), sig[-2], sig[-1], 0.7, noise=scalar(0.0), sigma_max=sig[1])
        assert out.std.item() == pytest.approx(std, abs=1e-4), grid


def test_shifted_linspace_grid_is_flow_sigmas_and_names_are_checked():
    from flowrl.config.schema import SigmaGrid
    from flowrl.sampling.sigmas import SIGMA_GRIDS, noise_schedule

    assert noise_schedule(16, 3.0, "shifted_linspace").tolist() == flow_sigmas(16, 3.0).tolist()
    assert SigmaGrid.__args__ == SIGMA_GRIDS  # the schema's copy (it imports no torch)
    with pytest.raises(ValueError, match="sigma_grid must be one of"):
        noise_schedule(10, 3.0, "karras")


def test_predict_x0_hand_value():
    # x0_hat = x - sigma*v: 1 - 0.5*0.5 = 0.75 and -2 - 0.25*4 = -3.
    x = torch.tensor([[1.0], [-2.0]])
    v = torch.tensor([[0.5], [4.0]])
    torch.testing.assert_close(predict_x0(x, v, torch.tensor([0.5, 0.25])), torch.tensor([[0.75], [-3.0]]))


def test_gaussian_log_prob_hand_values():
    # Sample 0: both elements at the mean, std 1 -> -0 - log 1 - 0.5 log(2 pi) = -0.918939 each.
    # Sample 1: std 2, offsets 2 and 0 -> (-(4/8) - log 2 - c) and (-0 - log 2 - c), averaged:
    #   -0.25 - log 2 - c with c = 0.5 log(2 pi).
    sample = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    mean = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    std = torch.tensor([[1.0], [2.0]])
    c = 0.5 * math.log(2 * math.pi)
    expected = torch.tensor([-c, -0.25 - math.log(2) - c])
    torch.testing.assert_close(gaussian_log_prob(sample, mean, std), expected)


# --------------------------------------------------------------------------- a = 0 is the ODE


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_sde_step_with_zero_noise_is_euler_step(sde_type):
    # a = 0: "sde": std_dev_t = 0 so mean = x*(1+0) + v*(1+0)*dt = x + dt*v.
    #        "cps": std = 0 so mean = (x - s v)(1 - s') + (x + (1-s) v) s'
    #               = x + v(-s + s s' + s' - s s') = x + (s' - s) v.
    # Both are the Euler step; std is 0 so x_next = mean whatever noise is given.
    x, v = randn(3, 2, 4, seed=1), randn(3, 2, 4, seed=2)
    sigmas = flow_sigmas(16, 3.0)
    for i in [0, 5, 15]:  # includes the sigma = 1 start and the last step to sigma = 0
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        expected = x + (s_next - s) * v
        out = sde_step(x, v, s, s_next, noise_level=0.0, noise=randn(3, 2, 4, seed=3), sde_type=sde_type)
        torch.testing.assert_close(out.prev_sample, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.mean, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(ode_step(x, v, s, s_next), expected, atol=1e-6, rtol=0)


def test_dance_sde_step_with_zero_eta_is_euler_step():
    # eta = 0: the score correction -0.5*0^2*score*dt and std = 0*sqrt(-dt) both vanish.
    x, v = randn(3, 2, 4, seed=1), randn(3, 2, 4, seed=2)
    s, s_next = 0.6, 0.45
    expected = x + (s_next - s) * v
    out = dance_sde_step(x, v, s, s_next, eta=0.0, noise=randn(3, 2, 4, seed=3))
    torch.testing.assert_close(out.prev_sample, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- log-probs


def _expected_log_prob_from_eps(eps: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # x_next - mean = std*eps, so log N(x_next; mean, std^2) = -eps^2/2 - log std - 0.5 log(2 pi)
    # per element; the step averages it over every non-batch dim.
    per_elem = -(eps.double() ** 2) / 2 - torch.log(std.double().expand_as(eps)) - LOG_SQRT_2PI
    return per_elem.reshape(eps.shape[0], -1).mean(dim=1).float()


@pytest.mark.parametrize(
    "step",
    [
        lambda x, v, s, sn, **kw: sde_step(x, v, s, sn, noise_level=0.7, **kw),
        lambda x, v, s, sn, **kw: sde_step(x, v, s, sn, noise_level=0.7, sde_type="cps", log_prob="gaussian", **kw),
        lambda x, v, s, sn, **kw: dance_sde_step(x, v, s, sn, eta=0.3, **kw),
    ],
    ids=["sde", "cps", "dance"],
)
def test_log_prob_of_sampled_step_is_gaussian_density_and_replays(step):
    x, v, eps = randn(3, 2, 4, seed=1), randn(3, 2, 4, seed=2), randn(3, 2, 4, seed=3)
    sigma = torch.tensor([0.9, 0.5, 0.3])  # one sigma per sample -> one std per sample
    sigma_next = torch.tensor([0.8, 0.4, 0.1])
    out = step(x, v, sigma, sigma_next, noise=eps)
    assert isinstance(out, SDEStepOutput)
    assert out.log_prob.shape == (3,)
    assert out.log_prob.dtype == torch.float32
    # x_next = mean + std*eps by construction.
    torch.testing.assert_close(out.prev_sample, out.mean + out.std * eps)
    torch.testing.assert_close(out.log_prob, _expected_log_prob_from_eps(eps, out.std), atol=1e-5, rtol=0)
    # Training pass: evaluating the stored sample gives the very same log-prob (ratio exactly 1).
    replay = step(x, v, sigma, sigma_next, prev_sample=out.prev_sample)
    torch.testing.assert_close(replay.log_prob, out.log_prob, atol=0, rtol=0)
    torch.testing.assert_close(replay.prev_sample, out.prev_sample, atol=0, rtol=0)


def test_log_prob_of_other_sample_is_lower_than_of_mean():
    # The density peaks at the mean: a sample 1 std away in every element loses exactly 1/2 nat
    # per element relative to the mean (-(1^2)/2), and the average over dims keeps that 1/2.
    x, v = randn(2, 5, seed=1), randn(2, 5, seed=2)
    at_mean = sde_step(x, v, 0.5, 0.25, noise=torch.zeros(2, 5))
    one_std = sde_step(x, v, 0.5, 0.25, noise=torch.ones(2, 5))
    torch.testing.assert_close(at_mean.log_prob - one_std.log_prob, torch.full((2,), 0.5))


def test_bf16_log_prob_is_fp32_with_batch_shape():
    x, v = randn(3, 2, 4, seed=1, dtype=torch.bfloat16), randn(3, 2, 4, seed=2, dtype=torch.bfloat16)
    for out in [
        sde_step(x, v, 0.5, 0.4, generator=torch.Generator().manual_seed(0)),
        sde_step(x, v, 0.5, 0.4, sde_type="cps", generator=torch.Generator().manual_seed(0)),
        dance_sde_step(x, v, 0.5, 0.4, generator=torch.Generator().manual_seed(0)),
    ]:
        assert out.prev_sample.dtype == torch.bfloat16
        assert out.prev_sample.shape == x.shape
        assert out.mean.dtype == torch.float32
        assert out.std.dtype == torch.float32
        assert out.log_prob.dtype == torch.float32
        assert out.log_prob.shape == (3,)
    assert ode_step(x, v, 0.5, 0.4).dtype == torch.bfloat16


def test_bf16_replay_of_prev_sample_reproduces_log_prob():
    # A bf16 policy stores out.prev_sample (bf16) and re-evaluates it in the training pass.
    # Before any update the ratio exp(logp_new - logp_old) must be 1 (a known bug class in peers), far inside the
    # papers' clip range 1 +- 1e-4. Both log-probs must therefore describe the same sample.
    x, v = randn(4, 4, 8, 8, seed=1, dtype=torch.bfloat16), randn(4, 4, 8, 8, seed=2, dtype=torch.bfloat16)
    sigmas = flow_sigmas(16, 3.0)
    out = sde_step(x, v, sigmas[15], sigmas[16], generator=torch.Generator().manual_seed(0))
    replay = sde_step(x, v, sigmas[15], sigmas[16], prev_sample=out.prev_sample)
    ratio = torch.exp(replay.log_prob - out.log_prob)
    torch.testing.assert_close(ratio, torch.ones(4), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- hand-worked steps


def test_flow_grpo_sde_step_hand_values():
    # x = 1, v = 0.5, sigma = 0.5, sigma_next = 0.25, a = 0.7:
    #   std_dev_t = 0.7*sqrt(0.5/(1-0.5)) = 0.7, std_dev_t^2 = 0.49, dt = -0.25
    #   x coef = 1 + 0.49*(-0.25)/(2*0.5) = 1 - 0.1225 = 0.8775
    #   v coef = (1 + 0.49*(1-0.5)/(2*0.5))*(-0.25) = 1.245*(-0.25) = -0.31125
    #   mean = 1*0.8775 + 0.5*(-0.31125) = 0.8775 - 0.155625 = 0.721875
    #   std = 0.7*sqrt(0.25) = 0.35
    # With eps = 1: x_next = 0.721875 + 0.35 = 1.071875,
    #   log_prob = -1/2 - log(0.35) - 0.5 log(2 pi) = -0.5 + 1.0498221 - 0.9189385 = -0.3691164
    out = sde_step(scalar(1.0), scalar(0.5), 0.5, 0.25, noise_level=0.7, noise=scalar(1.0))
    assert out.mean.item() == pytest.approx(0.721875, abs=1e-6)
    assert out.std.item() == pytest.approx(0.35, abs=1e-6)
    assert out.prev_sample.item() == pytest.approx(1.071875, abs=1e-6)
    assert out.log_prob.item() == pytest.approx(-0.3691164, abs=1e-6)


def test_flow_grpo_sde_step_at_sigma_one_uses_sigma_max():
    # sigma = 1 would divide by 1 - 1 = 0; the denominator uses 1 - sigma_max instead, and
    # sigma_max defaults to sigma_next. x = 1, v = 0.5, sigma = 1, sigma_next = 0.75, a = 0.7:
    #   std_dev_t = 0.7*sqrt(1/(1-0.75)) = 0.7*2 = 1.4, std_dev_t^2 = 1.96, dt = -0.25
    #   mean = 1*(1 + 1.96*(-0.25)/2) + 0.5*(1 + 1.96*0/2)*(-0.25) = 0.755 - 0.125 = 0.63
    #   std = 1.4*sqrt(0.25) = 0.7
    out = sde_step(scalar(1.0), scalar(0.5), 1.0, 0.75, noise_level=0.7, noise=scalar(0.0))
    assert out.std.item() == pytest.approx(0.7, abs=1e-6)
    assert out.mean.item() == pytest.approx(0.63, abs=1e-6)
    # Explicit sigma_max = 0.5: std_dev_t = 0.7*sqrt(1/0.5) = 0.7*sqrt(2), std = 0.35*sqrt(2)
    #   = 0.4949747; mean = 1 + 0.98*(-0.25)/2 - 0.125 = 1 - 0.1225 - 0.125 = 0.7525.
    out = sde_step(scalar(1.0), scalar(0.5), 1.0, 0.75, noise_level=0.7, noise=scalar(0.0), sigma_max=0.5)
    assert out.std.item() == pytest.approx(0.35 * math.sqrt(2), abs=1e-6)
    assert out.mean.item() == pytest.approx(0.7525, abs=1e-6)


def test_flow_grpo_first_step_of_schedule_uses_second_sigma():
    # flow_sigmas(16, 3): sigmas[1] = 3*(15/16) / (1 + 2*(15/16)) = (45/16)/(46/16) = 45/46,
    # so 1 - sigmas[1] = 1/46 and std_dev_t = 0.7*sqrt(46) = 4.7476310; dt = -1/46 and
    # std = std_dev_t*sqrt(1/46) = 0.7 (the first step's std is exactly a).
    sigmas = flow_sigmas(16, 3.0)
    assert sigmas[1].item() == pytest.approx(45 / 46, abs=1e-7)
    out = sde_step(scalar(0.3), scalar(-0.2), sigmas[0], sigmas[1], noise_level=0.7, noise=scalar(0.0))
    std_dev_t = out.std.item() / math.sqrt(1 / 46)
    assert std_dev_t == pytest.approx(0.7 * math.sqrt(46), rel=1e-5)
    assert out.std.item() == pytest.approx(0.7, rel=1e-5)


def test_dance_sde_step_hand_values():
    # x = 1, v = 0.5, sigma = 0.5, sigma_next = 0.25, eta = 0.3:
    #   x0 = 1 - 0.5*0.5 = 0.75; Euler part = 1 + (-0.25)*0.5 = 0.875
    #   score = -(1 - (1-0.5)*0.75)/0.5^2 = -(0.625)/0.25 = -2.5
    #   correction = -0.5*0.09*(-2.5)*(-0.25) = -0.028125
    #   mean = 0.875 - 0.028125 = 0.846875; std = 0.3*sqrt(0.25) = 0.15
    # With eps = -2: x_next = 0.846875 - 0.3 = 0.546875,
    #   log_prob = -4/2 - log(0.15) - 0.5 log(2 pi) = -2 + 1.8971200 - 0.9189385 = -1.0218185
    out = dance_sde_step(scalar(1.0), scalar(0.5), 0.5, 0.25, eta=0.3, noise=scalar(-2.0))
    assert out.mean.item() == pytest.approx(0.846875, abs=1e-6)
    assert out.std.item() == pytest.approx(0.15, abs=1e-6)
    assert out.prev_sample.item() == pytest.approx(0.546875, abs=1e-6)
    assert out.log_prob.item() == pytest.approx(-1.0218185, abs=1e-6)


def test_cps_step_hand_values():
    # x = 1, v = 0.5, sigma = 0.5, sigma_next = 0.25:
    #   x0_hat = 1 - 0.5*0.5 = 0.75, x1_hat = 1 + (1-0.5)*0.5 = 1.25
    # a = 0.5: std = 0.25*sin(pi/4) = 0.25*sqrt(2)/2 = 0.1767767,
    #   sqrt(0.25^2 - std^2) = 0.25*sqrt(1 - 1/2) = 0.1767767 as well,
    #   mean = 0.75*(1-0.25) + 1.25*0.1767767 = 0.5625 + 0.2209709 = 0.7834709
    out = sde_step(scalar(1.0), scalar(0.5), 0.5, 0.25, noise_level=0.5, noise=scalar(0.0), sde_type="cps")
    assert out.std.item() == pytest.approx(0.1767767, abs=1e-6)
    assert out.mean.item() == pytest.approx(0.7834709, abs=1e-6)
    # a = 0.7, other form: sqrt(s'^2 - s'^2 sin^2) = s' cos(0.35 pi) (cos > 0 there).
    #   std = 0.25*sin(0.35 pi) = 0.25*0.8910065 = 0.2227516
    #   mean = 0.5625 + 1.25*0.25*0.4539905 = 0.5625 + 0.1418720 = 0.7043720
    out = sde_step(scalar(1.0), scalar(0.5), 0.5, 0.25, noise_level=0.7, noise=scalar(0.0), sde_type="cps")
    assert out.std.item() == pytest.approx(0.25 * math.sin(0.35 * math.pi), abs=1e-6)
    assert out.mean.item() == pytest.approx(0.5625 + 1.25 * 0.25 * math.cos(0.35 * math.pi), abs=1e-6)
    assert out.mean.item() == pytest.approx(0.7043720, abs=1e-6)


def test_cps_official_log_prob_is_minus_mean_squared_error():
    # flow_grpo sd3_sde_with_logprob.py (sde_type "cps"): log_prob = -mean((x_next - mean)^2), no
    # constants, no variance; the default for CPS. x = 1, v = 0.5, 0.5 -> 0.25, a 0.5:
    # mean = 0.7834709 (above). Taking x_next = [mean + 0.1, mean - 0.3] -> -(0.01 + 0.09) / 2 = -0.05.
    x, v = torch.ones(1, 2), torch.full((1, 2), 0.5)
    mean = 0.7834709
    prev = torch.tensor([[mean + 0.1, mean - 0.3]])
    out = sde_step(x, v, 0.5, 0.25, noise_level=0.5, prev_sample=prev, sde_type="cps")
    assert out.log_prob.item() == pytest.approx(-0.05, abs=1e-6)
    gauss = sde_step(x, v, 0.5, 0.25, noise_level=0.5, prev_sample=prev, sde_type="cps", log_prob="gaussian")
    assert gauss.log_prob.item() == pytest.approx(gaussian_log_prob(prev, gauss.mean, gauss.std).item())
    with pytest.raises(ValueError, match="log_prob"):
        sde_step(x, v, 0.5, 0.25, sde_type="cps", log_prob="exact")


def test_std_dev_t_is_returned_and_can_be_given():
    # Flow-GRPO's std_dev_t = a sqrt(sigma / (1 - sigma)) (what its KL divides by): a 0.7, sigma
    # 0.5 -> 0.7; given directly (DenseGRPO's psi) it replaces the formula.
    out = sde_step(scalar(1.0), scalar(0.0), 0.5, 0.25, noise_level=0.7, noise=scalar(0.0))
    assert out.std_dev_t.item() == pytest.approx(0.7, abs=1e-6) and out.std.item() == pytest.approx(0.35, abs=1e-6)
    given = sde_step(scalar(1.0), scalar(0.0), 0.5, 0.25, noise_level=0.7, noise=scalar(0.0), std_dev_t=1.4)
    assert given.std_dev_t.item() == pytest.approx(1.4) and given.std.item() == pytest.approx(0.7, abs=1e-6)
    with pytest.raises(ValueError, match="std_dev_t"):
        sde_step(scalar(1.0), scalar(0.0), 0.5, 0.25, std_dev_t=0.5, sde_type="cps")


# --------------------------------------------------------------------------- rollouts


@pytest.mark.parametrize("num_steps, shift", [(16, 3.0), (10, 1.0), (5, 0.4)])
def test_ode_rollout_with_constant_velocity_reaches_exact_endpoint(num_steps, shift):
    # v = c constant: x_T = x_1 + sum_i (sigma_{i+1} - sigma_i)*c = x_1 + (0 - 1)*c = x_1 - c,
    # the sum of dt telescoping to sigma_end - sigma_start = -1 for any schedule.
    x1 = randn(2, 3, 4, seed=1)
    c = randn(1, 3, 4, seed=2)
    model = ConstantVelocity(c)
    out = ode_sample(model, x1, flow_sigmas(num_steps, shift), "embeds")
    assert model.calls == num_steps  # one NFE per step
    torch.testing.assert_close(out, x1 - c, atol=1e-6, rtol=0)


def _gaussian_toy_velocity(x: torch.Tensor, sigma: torch.Tensor, mu: float, s0: float) -> torch.Tensor:
    # Exact rectified-flow velocity E[v | x_t = x] for data x_0 ~ N(mu, s0^2):
    # x_t = (1-s) x_0 + s eps, v = eps - x_0, so E[v] = -mu, E[x_t] = (1-s) mu,
    # var_t = (1-s)^2 s0^2 + s^2, cov(v, x_t) = s*1 - (1-s)*s0^2, and for jointly Gaussian
    # (v, x_t): E[v|x] = -mu + (cov/var_t)(x - (1-s) mu) = a x + b with b = -mu - a(1-s) mu.
    var_t = (1 - sigma) ** 2 * s0**2 + sigma**2
    a = (sigma - (1 - sigma) * s0**2) / var_t
    b = -mu - a * (1 - sigma) * mu
    return a * x + b


class GaussianToyModel:
    def __init__(self, mu: float, s0: float):
        self.mu, self.s0 = mu, s0

    def velocity(self, x, sigma, embeds):
        # sigma is [B]; view it as [B, 1, ..., 1] to broadcast against x.
        sigma = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return _gaussian_toy_velocity(x, sigma, self.mu, self.s0)


def test_sde_and_ode_marginals_match_data_mean_on_gaussian_toy():
    # Mean dynamics are exact for both samplers here: with m_i = (1-s) mu and E[v] = -mu,
    #   ODE:  m + dt*(-mu) = (1 - s - dt) mu = (1 - s') mu
    #   SDE:  m(1 + k dt/(2s)) - mu(1 + k(1-s)/(2s)) dt  (k = std_dev_t^2)
    #         = (1-s) mu + k dt (1-s) mu/(2s) - mu dt - k (1-s) mu dt/(2s) = (1 - s') mu,
    # so both final means are mu up to Monte-Carlo error only. The final spread is about
    # s0 = 0.5, so the standard error of a mean of N = 20000 samples is 0.5/sqrt(20000) =
    # 0.0035; tolerance 0.02 is > 5 standard errors (and the seed is fixed, so no flakiness).
    mu, s0, n = 2.0, 0.5, 20000
    model = GaussianToyModel(mu, s0)
    sigmas = flow_sigmas(16, 3.0)
    g = torch.Generator().manual_seed(1234)
    x1 = torch.randn(n, 1, generator=g)  # N samples of one element each

    x_ode = ode_sample(model, x1, sigmas, None)

    x = x1
    for i in range(len(sigmas) - 1):
        s = sigmas[i].expand(n).view(n, 1)
        v = model.velocity(x, s, None)
        x = sde_step(x, v, sigmas[i], sigmas[i + 1], noise_level=0.7, generator=g).prev_sample
    x_sde = x

    assert torch.isfinite(x_sde).all()
    assert x_ode.mean().item() == pytest.approx(mu, abs=0.02)
    assert x_sde.mean().item() == pytest.approx(mu, abs=0.02)
    # Both differ from mu by < 0.02, so from each other by < 0.04 at worst; ask for 0.03.
    assert x_ode.mean().item() == pytest.approx(x_sde.mean().item(), abs=0.03)
    # The ODE is deterministic given x1 and linear in x (x <- x(1 + dt a(s)) + dt b(s)), so its
    # final std is exactly std(x1) * prod_i (1 + dt_i a(sigma_i)); that product is computed
    # here with plain Python floats (0.4156 for T = 16, shift 3: Euler's first-order error
    # vs the exact flow's s0 = 0.5). fp32 rounding over 16 steps: rel 1e-4 is ample.
    gain = 1.0
    sig = [3 * t / (1 + 2 * t) for t in (1 - i / 16 for i in range(17))]
    for s_i, s_next in zip(sig[:-1], sig[1:]):
        a_i = (s_i - (1 - s_i) * s0**2) / ((1 - s_i) ** 2 * s0**2 + s_i**2)
        gain *= 1 + (s_next - s_i) * a_i
    assert gain == pytest.approx(0.41562, abs=1e-5)
    assert x_ode.std().item() == pytest.approx(x1.std().item() * gain, rel=1e-4)
    # The SDE spread is random and also discretised; it must stay in the right range.
    assert x_sde.std().item() == pytest.approx(s0, rel=0.25)


def test_ode_rollout_std_converges_to_data_std_on_gaussian_toy():
    # Same toy as above: the exact probability-flow map sends N(0, 1) at sigma = 1 onto
    # N(mu, s0^2) at sigma = 0. With 64 uniform steps (shift 1) the Euler gain
    # prod(1 + dt a) is 0.48856 (plain-Python product, 2.3% below s0 = 0.5) and std(x1) is 1
    # within ~1/sqrt(2N) = 0.7% for N = 10000, so the final std is s0 within 5%.
    mu, s0, n = -1.0, 0.5, 10000
    x1 = torch.randn(n, 1, generator=torch.Generator().manual_seed(99))
    x0 = ode_sample(GaussianToyModel(mu, s0), x1, flow_sigmas(64, 1.0), None)
    assert x0.std().item() == pytest.approx(s0, rel=0.05)
    # mean error: gain * |mean(x1)| ~ 0.5 * 0.01 = 0.005 (exact mean dynamics, see above).
    assert x0.mean().item() == pytest.approx(mu, abs=0.02)


# --------------------------------------------------------------------------- input forms


def test_sigma_input_forms_give_identical_results():
    # The same sigma as a float, a 0-d tensor, a [B] tensor (one per sample, all equal) or a
    # tensor broadcastable to x ([B, 1, 1] or [1, 1, 1]) is the same number, so the same step.
    x, v, eps = randn(3, 2, 4, seed=1), randn(3, 2, 4, seed=2), randn(3, 2, 4, seed=3)
    s, s_next = 0.6, 0.45
    forms = [
        (s, s_next),
        (torch.tensor(s), torch.tensor(s_next)),
        (torch.full((3,), s), torch.full((3,), s_next)),
        (torch.full((3, 1, 1), s), torch.full((3, 1, 1), s_next)),
        (torch.full((1, 1, 1), s), torch.full((1, 1, 1), s_next)),
    ]
    ref_ode = ode_step(x, v, s, s_next)
    ref = {t: sde_step(x, v, s, s_next, noise=eps, sde_type=t) for t in ["sde", "cps"]}
    ref_dance = dance_sde_step(x, v, s, s_next, noise=eps)
    for sig, sig_next in forms:
        torch.testing.assert_close(ode_step(x, v, sig, sig_next), ref_ode, atol=0, rtol=0)
        for t in ["sde", "cps"]:
            out = sde_step(x, v, sig, sig_next, noise=eps, sde_type=t)
            assert out.prev_sample.shape == x.shape
            torch.testing.assert_close(out.prev_sample, ref[t].prev_sample, atol=0, rtol=0)
            torch.testing.assert_close(out.log_prob, ref[t].log_prob, atol=0, rtol=0)
        out = dance_sde_step(x, v, sig, sig_next, noise=eps)
        torch.testing.assert_close(out.prev_sample, ref_dance.prev_sample, atol=0, rtol=0)
        torch.testing.assert_close(out.log_prob, ref_dance.log_prob, atol=0, rtol=0)


def test_per_sample_sigmas_equal_separate_steps():
    # A [B] sigma with different values per sample must act as B independent steps, each
    # with its own sigma (including a sigma = 1 start, whose sigma_max is its own sigma_next).
    x, v, eps = randn(3, 2, 4, seed=1), randn(3, 2, 4, seed=2), randn(3, 2, 4, seed=3)
    sig = [1.0, 0.6, 0.3]
    sig_next = [0.9, 0.45, 0.1]  # all stochastic (cps to sigma_next = 0 is deterministic)
    ode = ode_step(x, v, torch.tensor(sig), torch.tensor(sig_next))
    outs = {t: sde_step(x, v, torch.tensor(sig), torch.tensor(sig_next), noise=eps, sde_type=t) for t in ["sde", "cps"]}
    for b in range(3):
        xb, vb, eb = x[b : b + 1], v[b : b + 1], eps[b : b + 1]
        torch.testing.assert_close(ode[b : b + 1], xb + (sig_next[b] - sig[b]) * vb, atol=1e-6, rtol=0)
        for t, out in outs.items():
            one = sde_step(xb, vb, sig[b], sig_next[b], noise=eb, sde_type=t)
            torch.testing.assert_close(out.prev_sample[b : b + 1], one.prev_sample, atol=1e-6, rtol=0)
            torch.testing.assert_close(out.log_prob[b : b + 1], one.log_prob, atol=1e-6, rtol=0)


def test_same_generator_seed_gives_same_step_and_noise_is_standard_normal():
    # Drawing with a generator seeded alike twice gives the same sample; with a = 0.7 at
    # sigma 0.5 -> 0.25 the std is 0.35 (see the hand-worked test), so (x_next - mean)/0.35
    # is the standard normal draw: over 4000 elements its mean is 0 +- 4/sqrt(4000) = 0.063
    # and its std 1 +- 4/sqrt(2*4000) = 0.045 (4 standard errors, fixed seed).
    x, v = randn(4, 1000, seed=1), randn(4, 1000, seed=2)
    a = sde_step(x, v, 0.5, 0.25, generator=torch.Generator().manual_seed(7))
    b = sde_step(x, v, 0.5, 0.25, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.prev_sample, b.prev_sample, atol=0, rtol=0)
    eps = (a.prev_sample - a.mean) / 0.35
    assert eps.mean().item() == pytest.approx(0.0, abs=0.063)
    assert eps.std().item() == pytest.approx(1.0, abs=0.045)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_sde_step_rejects_negative_noise_level(sde_type):
    x = randn(2, 3)
    with pytest.raises(ValueError):
        sde_step(x, x, 0.5, 0.25, noise_level=-0.1, sde_type=sde_type)


def test_sde_step_rejects_unknown_sde_type():
    x = randn(2, 3)
    with pytest.raises(ValueError):
        sde_step(x, x, 0.5, 0.25, sde_type="ddim")


def test_sde_step_rejects_sigma_next_above_sigma():
    # Sampling goes from noise to data: a step to a larger sigma (dt > 0) is an error, also
    # when only one sample of a [B] sigma goes the wrong way.
    x = randn(2, 3)
    with pytest.raises(ValueError):
        sde_step(x, x, 0.25, 0.5)
    with pytest.raises(ValueError):
        sde_step(x, x, torch.tensor([0.5, 0.25]), torch.tensor([0.25, 0.5]))


def test_dance_sde_step_rejects_bad_input():
    x = randn(2, 3)
    with pytest.raises(ValueError):
        dance_sde_step(x, x, 0.25, 0.5)
    with pytest.raises(ValueError):
        dance_sde_step(x, x, 0.5, 0.25, eta=-0.3)


def test_cps_step_rejects_sigma_next_above_sigma():
    x = randn(2, 3)
    with pytest.raises(ValueError):
        sde_step(x, x, 0.25, 0.5, sde_type="cps")


def test_deterministic_sample_log_prob_does_not_depend_on_batch_mates():
    # cps to sigma_next = 0 has std = 0 * sin(...) = 0: a deterministic step whose log-prob is
    # defined as 0 (steps.py _finish docstring); alone it is 0, so it must be 0 in a batch too.
    x = randn(2, 3)
    alone = sde_step(x[1:], x[1:], 0.5, 0.0, sde_type="cps")
    assert alone.log_prob.item() == 0.0
    batch = sde_step(x, x, torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.0]), sde_type="cps")
    assert batch.log_prob[1].item() == 0.0


def test_sde_step_accepts_one_dimensional_batch():
    # x of shape [B] is "[B, ...]" with no trailing dims: the mean over no non-batch dims is
    # the per-element log-density itself. x = 1, v = 0.5, 0.5 -> 0.25, a = 0.7, eps = 0:
    # mean 0.721875, std 0.35 (hand-worked above), log_prob = -log(0.35) - 0.5 log(2 pi) = 0.1308836.
    out = sde_step(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5]), 0.5, 0.25, noise=torch.zeros(2))
    torch.testing.assert_close(out.log_prob, torch.full((2,), 0.1308836))
