"""GRPO loss worked by hand (torchtune style): values and gradients."""

import math

import pytest
import torch

from flowrl.losses import clip_advantages, grpo_loss, mean_kl_to_reference


def test_ratio_exactly_one_before_first_update():
    # log_prob == old_log_prob -> ratio = exp(0) = 1 exactly, nothing clipped, approx_kl 0,
    # and the loss is -mean(A) = -(1 - 2 + 0.5) / 3 = 0.1667.
    lp = torch.tensor([-1.3, 0.2, 5.0], requires_grad=True)
    out = grpo_loss(lp, lp.detach().clone(), torch.tensor([1.0, -2.0, 0.5]), clip_eps=1e-4)
    assert out.ratio_mean.item() == 1.0 and out.clip_frac.item() == 0.0 and out.approx_kl.item() == 0.0
    assert out.loss.item() == pytest.approx(0.5 / 3)


def test_two_samples_inside_trust_region_value_and_gradient():
    # eps 0.2, A = [1, -1], ratios r = [1.1, 0.9] (inside [0.8, 1.2], so nothing clipped):
    # terms max(-A r, -A clip(r)) = [-1.1, 0.9] -> loss = (-1.1 + 0.9) / 2 = -0.1.
    # d loss / d logp_i = (1/N) * (-A_i) * r_i (since dr/dlogp = r) = [-0.55, 0.45].
    lp = torch.tensor([math.log(1.1), math.log(0.9)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.1, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([-0.55, 0.45]))
    assert out.clip_frac.item() == 0.0


def test_two_samples_outside_trust_region_are_clipped_with_zero_gradient():
    # eps 0.2, A = [1, -1], r = [1.5, 0.5]:
    # sample 0: -A r = -1.5, -A clip(r) = -1.2 -> max = -1.2 (clipped, constant in logp)
    # sample 1: -A r = 0.5, -A clip(r) = 0.8 -> max = 0.8 (clipped, constant)
    # loss = (-1.2 + 0.8) / 2 = -0.2, gradient 0, clip_frac 1.
    lp = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.2, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.zeros(2))
    assert out.clip_frac.item() == 1.0


def test_mixed_clipping_and_pessimism():
    # eps 0.2, A = [1, 1], r = [1.5, 0.5]:
    # sample 0 (r above 1 + eps, A > 0): max(-1.5, -1.2) = -1.2, clipped, grad 0
    # sample 1 (r below 1 - eps, A > 0): max(-0.5, -0.8) = -0.5, NOT clipped (the pessimistic
    # bound keeps the worse, unclipped term), grad = (1/2) * (-1) * 0.5 = -0.25
    lp = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, 1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([0.0, -0.25]))
    # approx_kl = 0.5 * mean(log(1.5)^2, log(0.5)^2) = 0.5 * (0.16440 + 0.48045) / 2 = 0.16121
    assert out.approx_kl.item() == pytest.approx(0.16121, abs=1e-4)


def test_advantages_clamped_and_constant():
    # A = [10, -7] acts as [5, -5]; at ratio 1 the loss is -mean(A) = 0 and d/dlogp = -A/N.
    lp = torch.zeros(2, requires_grad=True)
    adv = torch.tensor([10.0, -7.0], requires_grad=True)
    old = torch.zeros(2, requires_grad=True)
    out = grpo_loss(lp, old, adv, clip_eps=0.2)
    out.loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([-2.5, 2.5]))
    assert adv.grad is None and old.grad is None  # constants of the rollout
    torch.testing.assert_close(clip_advantages(torch.tensor([10.0, -7.0, 1.0])), torch.tensor([5.0, -5.0, 1.0]))


def test_kl_to_reference_value_and_gradient():
    # mean - ref = [[1, -1], [2, 0]], std 0.5 -> per sample mean sq = [1, 2] / (2 * 0.25) = [2, 4].
    # kl_beta 0.1, ratio 1, A = 0 -> loss = 0 + 0.1 * mean([2, 4]) = 0.3.
    # d loss / d mean = beta / N * 2 (mean - ref) / (2 std^2 D) = 0.1 / 2 * (mean - ref) / (0.25 * 2)
    #                 = 0.1 * (mean - ref).
    ref = torch.zeros(2, 2)
    mean = torch.tensor([[1.0, -1.0], [2.0, 0.0]], requires_grad=True)
    torch.testing.assert_close(mean_kl_to_reference(mean.detach(), ref, 0.5), torch.tensor([2.0, 4.0]))
    out = grpo_loss(
        torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.1, kl_beta=0.1, mean=mean, ref_mean=ref, std=torch.tensor(0.5)
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.3) and out.kl_loss.item() == pytest.approx(3.0)
    torch.testing.assert_close(mean.grad, 0.1 * torch.tensor([[1.0, -1.0], [2.0, 0.0]]))
    assert grpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), 0.1).kl_loss.item() == 0.0


def test_errors_and_metrics():
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(z, z, z, 0.0)
    with pytest.raises(ValueError, match=r"\[N\] tensors"):
        grpo_loss(z, torch.zeros(3), z, 0.1)
    with pytest.raises(ValueError, match="needs mean"):
        grpo_loss(z, z, z, 0.1, kl_beta=0.1)
    with pytest.raises(ValueError, match="adv_clip"):
        clip_advantages(z, 0)
    m = grpo_loss(z, z, torch.ones(2), 0.1).metrics()
    assert set(m) == {
        "train/loss",
        "train/policy_loss",
        "train/kl_loss",
        "train/ratio_mean",
        "train/clip_frac",
        "train/approx_kl",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_real_step_replay_ratio_and_gradient():
    # The training path on a real step: replaying prev_sample with the same velocity gives
    # ratio exactly 1; a perturbed velocity moves the ratio and gives a finite, nonzero gradient.
    from flowrl.sampling import sde_step

    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    old = sde_step(x, v, 0.8, 0.6, noise_level=0.7, generator=g)
    same = sde_step(x, v, 0.8, 0.6, noise_level=0.7, prev_sample=old.prev_sample)
    assert torch.equal(same.log_prob, old.log_prob)
    v2 = (v + 0.05).requires_grad_(True)
    new = sde_step(x, v2, 0.8, 0.6, noise_level=0.7, prev_sample=old.prev_sample)
    out = grpo_loss(new.log_prob, old.log_prob, torch.tensor([1.0, -1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.ratio_mean.item() != 1.0 and torch.isfinite(v2.grad).all() and v2.grad.abs().sum() > 0
