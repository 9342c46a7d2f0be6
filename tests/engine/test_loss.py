"""GRPO loss, torchtune style: every expected value is worked by hand in a comment, gradients
are checked with autograd against the hand-worked derivative."""

import math

import pytest
import torch

from flowrl.engine.loss import (
    GRPOLossOutput,
    clip_advantages,
    clipped_surrogate,
    grpo_loss,
    mean_kl_to_reference,
    policy_ratio,
)
from flowrl.sampling import sde_step

# ---------------------------------------------------------------- 1. before the first update


def test_ratio_is_exactly_one_before_the_first_update():
    # log_prob == old_log_prob -> r = exp(0) = 1 bit for bit, nothing clipped, approx_kl 0.
    # A = [1, -2, 7] is clamped to [1, -2, 5], so loss = -mean(A) = -(1 - 2 + 5) / 3 = -4/3
    # (unclamped it would be -(1 - 2 + 7) / 3 = -2).
    # d loss / d logp_i = (1/N) * (-A_i) * r_i = [-1/3, 2/3, -5/3].
    lp = torch.tensor([-1.3, 0.2, 5.0], requires_grad=True)
    old = lp.detach().clone()
    assert torch.equal(policy_ratio(lp, old), torch.ones(3))
    out = grpo_loss(lp, old, torch.tensor([1.0, -2.0, 7.0]), clip_eps=1e-4)
    assert out.ratio_mean.item() == 1.0
    assert out.clip_frac.item() == 0.0
    assert out.approx_kl.item() == 0.0
    assert out.loss.item() == pytest.approx(-4 / 3, abs=1e-6)
    out.loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([-1 / 3, 2 / 3, -5 / 3]))


def test_policy_ratio_numerics():
    # Equal bf16 log-probs give r == 1 exactly, in fp32.
    lp = torch.tensor([-1.3, 0.2], dtype=torch.bfloat16)
    assert torch.equal(policy_ratio(lp, lp.clone()), torch.ones(2))
    assert policy_ratio(lp, lp).dtype == torch.float32
    # bf16 1.0 vs 1 - 2^-8 (both exact in bf16): log-ratio 2^-8, r = exp(0.00390625) = 1.0039139.
    # Exponentiating in bf16 (spacing 2^-7 near 1) would round this to 1.0 or 1.0078.
    r = policy_ratio(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([1 - 2**-8], dtype=torch.bfloat16))
    assert r.item() == pytest.approx(1.0039139, abs=1e-6)
    # Only the difference is exponentiated: large log-probs (exp(100) overflows fp32) are fine.
    big = torch.tensor([100.0, -120.0])
    assert torch.equal(policy_ratio(big, big.clone()), torch.ones(2))
    torch.testing.assert_close(policy_ratio(big + 1, big), torch.full((2,), math.e))


# ---------------------------------------------------------------- 2. the clipped surrogate


def test_clipped_surrogate_per_sample_values():
    # eps 0.2, trust region [0.8, 1.2]:
    #   r 1.5, A  1: max(-1.5, -1.2) = -1.2
    #   r 0.5, A -1: max( 0.5,  0.8) =  0.8
    #   r 1.1, A  1: max(-1.1, -1.1) = -1.1
    #   r 0.5, A  1: max(-0.5, -0.8) = -0.5
    got = clipped_surrogate(torch.tensor([1.5, 0.5, 1.1, 0.5]), torch.tensor([1.0, -1.0, 1.0, 1.0]), 0.2)
    torch.testing.assert_close(got, torch.tensor([-1.2, 0.8, -1.1, -0.5]))


def test_inside_trust_region_value_and_gradient():
    # eps 0.2, A = [1, -1], old = [0, 0], r = [1.1, 0.9] (inside [0.8, 1.2], nothing clipped):
    # terms max(-A r, -A clip(r)) = [-1.1, 0.9] -> loss = (-1.1 + 0.9) / 2 = -0.1.
    # d loss / d logp_i = (1/N) * (-A_i) * r_i   (dr/dlogp = r) = [-0.55, 0.45].
    lp = torch.tensor([math.log(1.1), math.log(0.9)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.1, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([-0.55, 0.45]))
    assert out.clip_frac.item() == 0.0
    assert out.ratio_mean.item() == pytest.approx(1.0, abs=1e-6)  # (1.1 + 0.9) / 2


def test_outside_trust_region_is_clipped_with_zero_gradient():
    # eps 0.2, A = [1, -1], r = [1.5, 0.5]:
    #   sample 0: -A r = -1.5, -A clip(r) = -1.2 -> max = -1.2 (clipped: constant in logp)
    #   sample 1: -A r =  0.5, -A clip(r) =  0.8 -> max =  0.8 (clipped: constant in logp)
    # loss = (-1.2 + 0.8) / 2 = -0.2, gradient [0, 0], clip_frac 2/2 = 1.
    lp = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.2, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.zeros(2))
    assert out.clip_frac.item() == 1.0


def test_one_clipped_one_not():
    # eps 0.2, A = [1, -1], r = [1.5, 0.9]:
    #   sample 0: max(-1.5, -1.2) = -1.2 (clipped, grad 0)
    #   sample 1: max( 0.9,  0.9) =  0.9 (inside, grad (1/2) * 1 * 0.9 = 0.45)
    # loss = (-1.2 + 0.9) / 2 = -0.15, clip_frac 1/2, ratio_mean (1.5 + 0.9) / 2 = 1.2.
    lp = torch.tensor([math.log(1.5), math.log(0.9)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.15, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([0.0, 0.45]))
    assert out.clip_frac.item() == 0.5
    assert out.ratio_mean.item() == pytest.approx(1.2, abs=1e-6)


def test_pessimistic_bound_keeps_the_wrong_way_gradient():
    # eps 0.2, A = [1, 1], r = [1.5, 0.5]:
    #   sample 0 (r > 1 + eps, A > 0): max(-1.5, -1.2) = -1.2, clipped, grad 0
    #   sample 1 (r < 1 - eps, A > 0): max(-0.5, -0.8) = -0.5: the unclipped term wins, so the
    #   step that moved the wrong way keeps its gradient (1/2) * (-1) * 0.5 = -0.25.
    # loss = (-1.2 - 0.5) / 2 = -0.85. clip_frac counts |r - 1| > eps, so it is 2/2 = 1 here.
    # approx_kl = 0.5 * (ln(1.5)^2 + ln(0.5)^2) / 2 = 0.5 * (0.164402 + 0.480453) / 2 = 0.161214.
    lp = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, 1.0]), clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.85, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([0.0, -0.25]))
    assert out.clip_frac.item() == 1.0
    assert out.approx_kl.item() == pytest.approx(0.161214, abs=1e-5)


# ---------------------------------------------------------------- 3. advantages


def test_advantages_are_clamped_and_get_no_gradient():
    # A = [10, -7] acts as [5, -5]. eps 0.2, r = [1.1, 0.9] (inside the trust region):
    # terms [-5 * 1.1, 5 * 0.9] = [-5.5, 4.5] -> loss = -0.5 (unclamped: (-11 + 6.3) / 2 = -2.35).
    # d loss / d logp = (1/2) * [-5 * 1.1, 5 * 0.9] = [-2.75, 2.25].
    torch.testing.assert_close(clip_advantages(torch.tensor([10.0, -7.0, 1.0])), torch.tensor([5.0, -5.0, 1.0]))
    torch.testing.assert_close(clip_advantages(torch.tensor([3.0, -3.0]), adv_clip=2.0), torch.tensor([2.0, -2.0]))
    lp = torch.tensor([math.log(1.1), math.log(0.9)], requires_grad=True)
    adv = torch.tensor([10.0, -7.0], requires_grad=True)
    old = torch.zeros(2, requires_grad=True)
    out = grpo_loss(lp, old, adv, clip_eps=0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.5, abs=1e-6)
    torch.testing.assert_close(lp.grad, torch.tensor([-2.75, 2.25]))
    # constants of the rollout: had they been left in the graph, both would hold a gradient
    assert adv.grad is None and old.grad is None


# ---------------------------------------------------------------- 4. KL to the reference


def test_mean_kl_to_reference_values_and_std_broadcasting():
    # mean - ref = [[1, -1], [2, 0]]: per-sample mean of squares = [(1 + 1) / 2, (4 + 0) / 2] = [1, 2].
    # std 0.5 -> / (2 * 0.25) = [2, 4].
    # std per sample [0.5, 1.0] -> [1 / 0.5, 2 / 2] = [2, 1] (as [N], [N, 1] or full shape).
    diff = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    ref = torch.zeros(2, 2)
    torch.testing.assert_close(mean_kl_to_reference(diff, ref, 0.5), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(mean_kl_to_reference(diff, ref, torch.tensor(0.5)), torch.tensor([2.0, 4.0]))
    per_sample = torch.tensor([0.5, 1.0])
    for std in (per_sample, per_sample.view(2, 1), per_sample.view(2, 1).expand(2, 2)):
        torch.testing.assert_close(mean_kl_to_reference(diff, ref, std), torch.tensor([2.0, 1.0]))
    # shifting both means by the same amount changes nothing: only the gap counts
    torch.testing.assert_close(mean_kl_to_reference(diff + 3, ref + 3, 0.5), torch.tensor([2.0, 4.0]))


def test_kl_term_in_the_loss_value_and_gradient():
    # ratio 1, A = [1, 1] -> policy_loss = -mean(A) = -1.
    # kl per sample [2, 4] (above) -> kl_loss = 3; kl_beta 0.1 -> loss = -1 + 0.1 * 3 = -0.7.
    # d loss / d mean = kl_beta / N * 2 (mean - ref) / (2 std^2 D) = (mean - ref) / (std^2 D) * kl_beta / N
    #                 = (mean - ref) / (0.25 * 2) * 0.1 / 2 = 0.1 * (mean - ref) = [[0.1, -0.1], [0.2, 0]].
    # d loss / d logp is the policy part alone: -A / N = [-0.5, -0.5].
    lp = torch.zeros(2, requires_grad=True)
    ref = torch.zeros(2, 2, requires_grad=True)
    mean = torch.tensor([[1.0, -1.0], [2.0, 0.0]], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.ones(2), 0.1, kl_beta=0.1, mean=mean, ref_mean=ref, std=torch.tensor(0.5))
    out.loss.backward()
    assert out.policy_loss.item() == pytest.approx(-1.0)
    assert out.kl_loss.item() == pytest.approx(3.0)
    assert out.loss.item() == pytest.approx(-0.7)
    torch.testing.assert_close(mean.grad, torch.tensor([[0.1, -0.1], [0.2, 0.0]]))
    torch.testing.assert_close(lp.grad, torch.tensor([-0.5, -0.5]))
    assert ref.grad is None  # the reference policy is frozen


def test_kl_beta_zero_needs_no_reference():
    # kl_beta 0: kl_loss is exactly 0 and loss == policy_loss = -mean([1, 1]) = -1.
    out = grpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), 0.1)
    assert out.kl_loss.item() == 0.0
    assert out.loss.item() == out.policy_loss.item() == -1.0


# ---------------------------------------------------------------- 5. errors


def test_invalid_arguments_raise():
    z = torch.zeros(2)
    for eps in (0.0, -0.1):
        with pytest.raises(ValueError, match="clip_eps"):
            grpo_loss(z, z, z, eps)
    with pytest.raises(ValueError, match=r"\[N\]"):
        grpo_loss(z, torch.zeros(3), z, 0.1)
    with pytest.raises(ValueError, match=r"\[N\]"):
        grpo_loss(z, z, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match=r"\[N\]"):
        grpo_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), 0.1)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="adv_clip"):
            clip_advantages(z, bad)
        with pytest.raises(ValueError, match="adv_clip"):
            grpo_loss(z, z, z, 0.1, adv_clip=bad)


@pytest.mark.parametrize("missing", ["mean", "ref_mean", "std"])
def test_kl_without_reference_inputs_raises(missing):
    kw = {"mean": torch.zeros(2, 3), "ref_mean": torch.zeros(2, 3), "std": 0.5}
    kw[missing] = None
    z = torch.zeros(2)
    with pytest.raises(ValueError, match=f"kl_beta > 0 needs.*missing: {missing}"):
        grpo_loss(z, z, z, 0.1, kl_beta=0.04, **kw)


# ---------------------------------------------------------------- 6. metrics


def test_metrics_keys_and_python_floats():
    # The one-clipped-one-not case: loss = policy_loss = -0.15, kl 0, ratio_mean 1.2, clip_frac 0.5,
    # approx_kl = 0.5 * (ln(1.5)^2 + ln(0.9)^2) / 2 = 0.5 * (0.164402 + 0.011101) / 2 = 0.043876.
    lp = torch.tensor([math.log(1.5), math.log(0.9)], requires_grad=True)
    out = grpo_loss(lp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_eps=0.2)
    assert isinstance(out, GRPOLossOutput)
    m = out.metrics()
    assert set(m) == {
        "train/loss",
        "train/policy_loss",
        "train/kl_loss",
        "train/ratio_mean",
        "train/clip_frac",
        "train/approx_kl",
    }
    assert all(type(v) is float for v in m.values())
    expected = {
        "train/loss": -0.15,
        "train/policy_loss": -0.15,
        "train/kl_loss": 0.0,
        "train/ratio_mean": 1.2,
        "train/clip_frac": 0.5,
        "train/approx_kl": 0.043876,
    }
    assert m == pytest.approx(expected, abs=1e-5)
    assert not (out.ratio_mean.requires_grad or out.clip_frac.requires_grad or out.approx_kl.requires_grad)


# ---------------------------------------------------------------- 7. with the real SDE step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_sde_step_replay(dtype):
    # The training path: the rollout draws x_next with sde_step; training re-evaluates the
    # log-prob of that x_next (prev_sample=) with the model's velocity. Same velocity ->
    # ratio exactly 1 and loss = -mean(A) = -(1 - 1) / 2 = 0, yet a nonzero gradient (that is
    # the first update). Perturbed velocity -> ratio != 1, finite nonzero gradient.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, generator=g).to(dtype)
    v = torch.randn(2, 4, 3, generator=g).to(dtype)
    adv = torch.tensor([1.0, -1.0])
    with torch.no_grad():
        old = sde_step(x, v, 0.8, 0.6, noise_level=0.7, generator=g)

    v_same = v.clone().requires_grad_(True)
    same = sde_step(x, v_same, 0.8, 0.6, noise_level=0.7, prev_sample=old.prev_sample)
    assert torch.equal(policy_ratio(same.log_prob, old.log_prob), torch.ones(2))
    out = grpo_loss(same.log_prob, old.log_prob, adv, clip_eps=1e-4)
    assert out.ratio_mean.item() == 1.0 and out.clip_frac.item() == 0.0 and out.approx_kl.item() == 0.0
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(v_same.grad).all() and v_same.grad.abs().sum() > 0

    v_new = (v.float() + 0.05).to(dtype).requires_grad_(True)
    new = sde_step(x, v_new, 0.8, 0.6, noise_level=0.7, prev_sample=old.prev_sample)
    out = grpo_loss(new.log_prob, old.log_prob, adv, clip_eps=0.2)
    assert out.ratio_mean.item() != 1.0 and out.approx_kl.item() > 0
    out.loss.backward()
    assert torch.isfinite(v_new.grad).all() and v_new.grad.abs().sum() > 0
