"""The forward-process objectives (DiffusionNFT: NegativeAware, AWM: AdvantageWeightedMatching) on
the hand-worked examples of experiments/contenders/README.md (sections 2 and 3), their noise-level
schedules, the policy copies the trainer soft-updates, and the per-prompt budget of both methods.

The hand-worked numbers were computed in the README from the official scripts' formulas
(NVlabs/DiffusionNFT scripts/train_nft_sd3.py@24af555, scxue/advantage_weighted_matching
train_sd3_awm.py@be51372); the arithmetic is repeated in the comments so a reader can check it.
"""

from __future__ import annotations

import pytest
import torch

from flowrl.contract.objectives import AdvantageWeightedMatching, NegativeAware, PolicyCopy
from flowrl.contract.plan import LevelSchedule
from flowrl.engine.objectives import advantage_weighted_terms, negative_aware_terms

# ---- the shared example: 2 samples, D = 2 -------------------------------------------------------
# x0 and eps per sample; rewards (1, 0) in one group. Per-prompt mean 0.5, global population std 0.5
# (+ 1e-4): A = +-0.5 / 0.5001 = +-0.99980004.
X0 = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
EPS = torch.tensor([[0.5, 0.5], [-1.0, 0.0]])
A = torch.tensor([0.5, -0.5]) / 0.5001


def test_the_example_advantages_are_the_flowrl_normalisation():
    # the step schedulers' normalisation (per-prompt mean, global population std + 1e-4) gives the
    # README's A for rewards (1, 0)
    from flowrl.step_schedulers._common import final_advantages

    adv = final_advantages(torch.tensor([[1.0, 0.0]]), ["p"], "prompt", True, False, 1e-4)
    torch.testing.assert_close(adv.flatten(), A, rtol=0, atol=1e-7)
    assert float(A[0]) == pytest.approx(0.99980004, abs=1e-7)


# ---- DiffusionNFT (README section 2) ------------------------------------------------------------
# t = 0.5 for both samples: x_t = (1 - t) x0 + t eps = (0.75, -0.25) and (-0.5, 1).
T_NFT = torch.tensor([0.5, 0.5])
X_T = (1 - T_NFT[:, None]) * X0 + T_NFT[:, None] * EPS
V_OLD = torch.tensor([[-0.4, 1.2], [-0.8, -1.5]])
V_THETA = torch.tensor([[-0.45, 1.3], [-0.9, -1.7]])


def _nft(v_theta: torch.Tensor, beta: float, **kw):
    """negative_aware_terms on the example; returns (per-sample terms, d mean / d v_theta)."""
    v = v_theta.clone().requires_grad_(True)
    out = negative_aware_terms(v, V_OLD, X_T, X0, T_NFT, A, beta, **kw)
    out.loss.mean().backward()
    return out, v.grad


def test_nft_example_x_t_and_r():
    torch.testing.assert_close(X_T, torch.tensor([[0.75, -0.25], [-0.5, 1.0]]))
    # r = clamp(A / 5 / 2 + 1/2, 0, 1) = 0.5 +- 0.099980004
    r = (A / 5 / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(r, torch.tensor([0.59998, 0.40002]), rtol=0, atol=1e-7)


def test_nft_beta_1_terms_and_gradient():
    # beta = 1: v+ = v_theta, v- = 2 v_old - v_theta.
    # Sample 1: x0+ = x_t - 0.5 v+ = (0.975, -0.9), error (-0.025, 0.1): w+ = mean|err| = 0.0625,
    #   mean err^2 = 0.0053125, L+ = 0.085.
    #   v- = (-0.35, 1.1), x0- = (0.925, -0.8), error (-0.075, 0.2): w- = 0.1375, mean err^2 = 0.0228125,
    #   L- = 0.16590909. Term = 5 (0.59998 * 0.085 + 0.40002 * 0.16590909) = 0.58682627.
    # Sample 2: L+ = 0.125, L- = 0.29 -> term 5 (0.40002 * 0.125 + 0.59998 * 0.29) = 1.1199835.
    # Policy loss (mean) 0.85340489.
    # Gradient of sample 1's term: dL+/dv_theta = (2 err+ / D) (-t beta) / w+ = (0.2, -0.8),
    #   dL-/dv_theta = (2 err- / D) (+t beta) / w- = (-0.27272727, 0.72727273); 5 (r dL+ + (1-r) dL-) =
    #   (0.05449819, -0.94530185); the loss is the mean over 2 samples, so its gradient row is half of it.
    out, grad = _nft(V_THETA, 1.0)
    torch.testing.assert_close(out.policy, torch.tensor([0.58682627, 1.1199835]), rtol=0, atol=2e-7)
    assert float(out.loss.mean()) == pytest.approx(0.85340489, abs=2e-7)
    torch.testing.assert_close(2 * grad[0], torch.tensor([0.05449819, -0.94530185]), rtol=0, atol=1e-6)  # fp32
    assert torch.equal(out.kl, torch.zeros(2))  # kl_beta 0 here: the KL is added separately


def test_nft_beta_0_1_terms():
    # beta = 0.1: v+ = 0.1 v_theta + 0.9 v_old, v- = 1.1 v_old - 0.1 v_theta; each term x 5 / 0.1:
    # per-sample 6.20958018 and 10.43992418, mean 8.32475218.
    out, _ = _nft(V_THETA, 0.1)
    torch.testing.assert_close(out.policy, torch.tensor([6.20958018, 10.43992418]), rtol=0, atol=2e-6)
    assert float(out.loss.mean()) == pytest.approx(8.32475218, abs=2e-6)


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_nft_at_theta_old_value_scales_with_1_over_beta_and_gradient_does_not(beta):
    # At theta = theta_old, v+ = v- = v_old: the term is 5 L(v_old) / beta (0.625 and 1.03571429 at
    # beta 1), whatever r. Sample 1: x0_hat = x_t - 0.5 v_old = (0.95, -0.85), error (-0.05, 0.15),
    # w = 0.1, mean err^2 = 0.0125, L = 0.125 -> 5 L = 0.625.
    # Its gradient is 5 (2r - 1) dL/dv = clip(A) dL/dv for any beta (the 1/beta cancels the beta of
    # dv+/dv_theta): sample 1: dL/dv = (2 err / D)(-t)/w = (-0.05, 0.15)(-0.5)/0.1 = (0.25, -0.75) ->
    # 0.99980004 (0.25, -0.75) = (0.24995001, -0.74985003) per term (the mean over 2 samples halves it).
    out, grad = _nft(V_OLD, beta)
    torch.testing.assert_close(out.policy, torch.tensor([0.625, 1.03571429]) / beta, rtol=2e-7, atol=1e-6)
    want = torch.tensor([[0.24995001, -0.74985003], [-0.28565715, -0.71414289]])
    torch.testing.assert_close(2 * grad, want, rtol=0, atol=1e-6)


def test_nft_kl_term_and_adv_clip():
    # kl_beta mean_d((v_theta - v_ref)^2) is added per term: with v_ref = v_old, sample 1's
    # (0.05^2 + 0.1^2) / 2 = 0.00625, sample 2's (0.1^2 + 0.2^2) / 2 = 0.025.
    out, _ = _nft(V_THETA, 1.0, kl_beta=1e-4, v_ref=V_OLD)
    torch.testing.assert_close(out.kl, torch.tensor([0.00625, 0.025]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss, out.policy + 1e-4 * out.kl)
    # r saturates: an advantage beyond +-adv_clip gives r = 1 (only L+) or 0 (only L-)
    big = negative_aware_terms(V_THETA, V_OLD, X_T, X0, T_NFT, torch.tensor([7.0, -7.0]), 1.0)
    torch.testing.assert_close(big.policy, torch.tensor([5 * 0.085, 5 * 0.29]), rtol=1e-6, atol=0)


def test_nft_weight_is_detached():
    # The adaptive weight w = max(mean_d|x0_hat - x0|, 1e-5) is a constant in the backward (no_grad
    # in the script): the gradient of L+ = mean err^2 / w is 2 err / (D w) (dx0/dv), not the
    # quotient rule's. Checked with r = 1 (A = 5, L+ only), beta 1: sample 1 -> 5 * (0.2, -0.8).
    v = V_THETA.clone().requires_grad_(True)
    out = negative_aware_terms(v, V_OLD, X_T, X0, T_NFT, torch.tensor([5.0, 5.0]), 1.0)
    out.loss[0].backward()
    torch.testing.assert_close(v.grad[0], torch.tensor([1.0, -4.0]), rtol=1e-6, atol=1e-7)


# ---- AWM (README section 3) ---------------------------------------------------------------------
# 2 samples x 2 levels, sigma in {0.75, 0.25} shared by both samples; v_theta the same at both levels.
# Terms in the order (sample 1, 0.75), (sample 2, 0.75), (sample 1, 0.25), (sample 2, 0.25).
SIG_AWM = torch.tensor([0.75, 0.75, 0.25, 0.25])
V_TH_AWM = torch.tensor([[-0.45, 1.3], [-0.9, -1.7]]).repeat(2, 1)
V_REF_AWM = torch.tensor([[-0.5, 1.0], [-1.0, -2.0]]).repeat(2, 1)
V_EMA_AWM = torch.tensor([[-0.4, 1.25], [-0.85, -1.75]]).repeat(2, 1)


def _awm(**kw):
    v = V_TH_AWM.clone().requires_grad_(True)
    out = advantage_weighted_terms(v, EPS.repeat(2, 1), X0.repeat(2, 1), SIG_AWM, A.repeat(2), **kw)
    out.loss.mean().backward()
    return out, v.grad


def test_awm_advantage_and_surrogate_log_likelihood():
    # A_awm = clamp(A, +-5) / 5 = +-0.19996001.
    assert float(A[0] / 5) == pytest.approx(0.19996001, abs=1e-8)
    # m = mean_d((v_theta - (eps - x0))^2): sample 1 target (-0.5, 1.5), error (0.05, -0.2) ->
    # m = 0.02125; sample 2 target (-1, -2), error (0.1, 0.3) -> m = 0.05.
    # l = -((m + 1e-10)^0.25 - 1e-10^0.25) sigma / 0.25: sample 1 at 0.75: -(0.38180... - 0.0031623)
    # x 3 = -1.13592322. The README's table, from that formula:
    m = torch.tensor([0.02125, 0.05, 0.02125, 0.05], dtype=torch.float64)
    ell = -((m + 1e-10) ** 0.25 - 1e-10**0.25) * SIG_AWM.double() / 0.25
    torch.testing.assert_close(
        ell, torch.tensor([-1.13592322, -1.40912558, -0.37864107, -0.46970853], dtype=torch.float64), rtol=0, atol=1e-8
    )


def test_awm_policy_value_and_per_term_gradients():
    # The ratio exp(l - sg(l)) is 1: each policy term's value is -A', the mean is 0 for a symmetric
    # group. Its gradient is A' sigma m^(p-1) dm/dv, dm/dv = 2 (v - target) / D = (v - target):
    # sample 1 at 0.75: 0.19996001 * 0.75 * 0.02125^-0.75 * (0.05, -0.2) = (0.13472718, -0.53890872),
    # / 4 terms in the mean = (0.03368179, -0.13472718).
    out, grad = _awm(adv_scale=0.2, power=0.25)
    torch.testing.assert_close(out.policy, -0.2 * A.repeat(2), rtol=0, atol=1e-7)
    assert abs(float(out.loss.mean())) < 1e-7
    want = torch.tensor(
        [
            [0.03368179, -0.13472718],  # sample 1, sigma 0.75
            [-0.03545822, -0.10637466],  # sample 2, sigma 0.75
            [0.01122726, -0.04490906],  # sample 1, sigma 0.25
            [-0.01181941, -0.03545822],  # sample 2, sigma 0.25
        ]
    )
    torch.testing.assert_close(grad, want, rtol=0, atol=2e-8)


def test_awm_total_loss_with_both_kl_terms():
    # KL to the reference: sample 1 (0.05, 0.3) -> 0.04625, sample 2 (0.1, 0.3) -> 0.05, mean 0.048125.
    # KL to the EMA: (-0.05, 0.05) -> 0.0025 for both. Total (beta 1e-3, ema_beta 1):
    # 0 + 1e-3 * 0.048125 + 1 * 0.0025 = 0.002548125.
    out, _ = _awm(kl_ref_beta=1e-3, v_ref=V_REF_AWM, kl_ema_beta=1.0, v_ema=V_EMA_AWM)
    assert float(out.loss.mean()) == pytest.approx(0.00254813, abs=1e-8)
    torch.testing.assert_close(out.kl, 1e-3 * torch.tensor([0.04625, 0.05]).repeat(2) + 0.0025, rtol=1e-5, atol=0)


def test_awm_sigma_weight_and_power_matter():
    # sigma only scales the gradient (the value is -A' either way): at sigma 0.25 the rows are a third
    # of those at 0.75; power 1 gives A' sigma dm/dv (no m^(p-1) factor).
    _, grad = _awm()
    torch.testing.assert_close(grad[2:] * 3, grad[:2], rtol=1e-6, atol=0)
    _, g1 = _awm(power=1.0)
    target_err = V_TH_AWM - (EPS - X0).repeat(2, 1)
    want = (0.2 * A.repeat(2) * SIG_AWM)[:, None] * target_err / 4
    torch.testing.assert_close(g1, want, rtol=1e-6, atol=1e-9)


def test_objective_records_name_their_views():
    assert NegativeAware(beta=1.0).views == ("old", "reference")
    assert NegativeAware(beta=1.0, kl_beta=0).views == ("old",)
    assert AdvantageWeightedMatching().views == ("reference", "ema_kl")
    assert AdvantageWeightedMatching(kl_ref_beta=0, kl_ema_beta=0).views == ()
    for bad in (dict(beta=0), dict(beta=1, adv_clip=0), dict(beta=1, kl_beta=-1)):
        with pytest.raises(ValueError):
            NegativeAware(**bad)


# ---- LevelSchedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 7, 123])
def test_permutation_levels_are_distinct_indices_per_row(seed):
    # DiffusionNFT: per sample, the first 9 of a random permutation of the T = 10 sampler steps
    table = LevelSchedule("permutation", 9, seed=seed).table(64, 10)
    assert table.shape == (64, 9) and table.dtype == torch.long
    assert int(table.min()) >= 0 and int(table.max()) <= 9
    assert all(len(set(row.tolist())) == 9 for row in table)  # distinct within a row
    assert len({tuple(row.tolist()) for row in table}) > 32  # each row its own draw
    assert (table == 0).any()  # sigma = 1 (index 0) is trained too
    # seeded: the same table again, another with another seed
    assert torch.equal(table, LevelSchedule("permutation", 9, seed=seed).table(64, 10))
    assert not torch.equal(table, LevelSchedule("permutation", 9, seed=seed + 1).table(64, 10))
    with pytest.raises(ValueError):
        LevelSchedule("permutation", 11).table(2, 10)


@pytest.mark.parametrize("share_rows,num_rows", [(3, 300), (2, 301), (1, 50)])
def test_stratified_levels_lie_in_their_strata_and_are_shared_per_block(share_rows, num_rows):
    # AWM "discrete_wo_init" at T 14: one index per stratum [1,2), [2,4), [4,6), ..., [10,12),
    # one draw per block of share_rows consecutive samples (the last block may be short)
    bounds = (1, 2, 4, 6, 8, 10, 12)
    table = LevelSchedule("stratified", 6, bounds, share_rows, seed=3).table(num_rows, 14)
    assert table.shape == (num_rows, 6)
    for k in range(6):
        assert int(table[:, k].min()) >= bounds[k] and int(table[:, k].max()) < bounds[k + 1]
        assert set(table[:, k].tolist()) == set(range(bounds[k], bounds[k + 1]))  # every index drawn
    blocks = table.split(share_rows)
    assert all(torch.equal(b, b[:1].expand_as(b)) for b in blocks)
    assert len({tuple(b[0].tolist()) for b in blocks}) > 1
    assert not (table == 0).any() and not (table >= 12).any()  # sigma = 1 and the last steps never


def test_stratified_levels_reject_bad_strata():
    with pytest.raises(ValueError):
        LevelSchedule("stratified", 2, (1, 2))  # count + 1 bounds needed
    with pytest.raises(ValueError):
        LevelSchedule("stratified", 2, (1, 3, 3))  # not rising
    with pytest.raises(ValueError):
        LevelSchedule("stratified", 2, (1, 3, 16)).table(4, 14)  # beyond the sigma indices


def test_method_level_schedules_at_the_official_sizes(make_cfg):
    from hydra.utils import instantiate

    awm = instantiate(make_cfg("method=awm").method.step_scheduler)
    lv = awm.plan(0, torch.Generator().manual_seed(0)).levels
    # int(linspace(1, int(14 * 0.9) = 12, 7)) = [1, 2, 4, 6, 8, 10, 12], shared per micro-batch of 3
    assert (lv.kind, lv.count, lv.bounds, lv.share_rows) == ("stratified", 6, (1, 2, 4, 6, 8, 10, 12), 3)
    nft = instantiate(make_cfg("method=diffusionnft").method.step_scheduler)
    plan = nft.plan(0, torch.Generator().manual_seed(0))
    assert (plan.levels.kind, plan.levels.count) == ("permutation", 9)  # int(10 * 0.99)
    table = plan.level_table(2)
    assert table.shape == (48, 9) and all(len(set(r.tolist())) == 9 for r in table)
    # the plan trains every level column of every sample, once per rollout
    steps = plan.optimizer_steps(2)
    assert len(steps) == 1 and [b.jump for b in steps[0]] == list(range(9))
    assert all(b.rows.tolist() == list(range(48)) for b in steps[0])


# ---- PolicyCopy / PolicyCopies --------------------------------------------------------------------
def _official_nft_decay(step: int, decay_type: int) -> float:
    """DiffusionNFT's return_decay: (flat, uprate, uphold) per decay type, 0 before `flat` steps."""
    flat, rate, hold = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[decay_type]
    return 0.0 if step < flat else min((step - flat) * rate, hold)


@pytest.mark.parametrize("k", [0, 1, 2, 10, 74, 75, 76, 100, 208, 300, 499, 500, 501, 5000])
def test_policy_copy_decay_rules(k):
    nft1 = PolicyCopy("old", 1e-3, 0.5, samples=True)
    nft2 = PolicyCopy("old", 7.5e-3, 0.999, delay=75, samples=True)
    awm = PolicyCopy("ema_kl", 1e-3, 0.3)
    assert nft1.decay(k) == pytest.approx(_official_nft_decay(k, 1), abs=1e-12)
    assert nft2.decay(k) == pytest.approx(_official_nft_decay(k, 2), abs=1e-12)
    assert awm.decay(k) == pytest.approx(min(0.3, 0.001 * k), abs=1e-12)  # kl_ema_decay_type "linear"


def test_policy_copy_decay_landmarks():
    awm = PolicyCopy("ema_kl", 1e-3, 0.3)
    assert (awm.decay(0), awm.decay(1), awm.decay(100), awm.decay(300), awm.decay(10**6)) == pytest.approx(
        (0, 0.001, 0.1, 0.3, 0.3)
    )
    nft2 = PolicyCopy("old", 7.5e-3, 0.999, delay=75)
    assert nft2.decay(74) == 0 and nft2.decay(75) == 0 and nft2.decay(76) == pytest.approx(0.0075)
    for bad in (dict(name="reference", rate=0, cap=0), dict(name="x", rate=-1, cap=0), dict(name="x", rate=0, cap=1)):
        with pytest.raises(ValueError):
            PolicyCopy(**bad)


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


class _Plan:
    def __init__(self, *policies):
        self.policies = policies


def test_policy_copies_soft_update_and_sampling():
    from flowrl.training.ema import PolicyCopies

    params = _params()
    theta0 = [p.detach().clone() for p in params]
    plan = _Plan(PolicyCopy("old", 0.25, 0.5, samples=True), PolicyCopy("ema_kl", 0.1, 0.3))
    copies = PolicyCopies(params)
    with copies.sampling(plan):  # ensure(): both copies start at theta_0; "old" samples
        assert all(torch.equal(p, t) for p, t in zip(params, theta0))
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # theta_1 = theta_0 + 1
    copies.after_iteration(plan, 1)  # d_old = 0.25, d_ema = 0.1
    for name, d in (("old", 0.25), ("ema_kl", 0.1)):
        for s, t0, p in zip(copies.shadow[name], theta0, params):
            torch.testing.assert_close(s, d * t0 + (1 - d) * p.detach())  # = theta_1 - d
    copies.after_iteration(plan, 3)  # d_old = min(0.75, 0.5), d_ema = min(0.3, 0.3): caps
    for name, d_prev, d in (("old", 0.25, 0.5), ("ema_kl", 0.1, 0.3)):
        for s, p in zip(copies.shadow[name], params):
            torch.testing.assert_close(s, p.detach() - d * d_prev)
    # sampling swaps the sampling copy in and restores theta after
    live = [p.detach().clone() for p in params]
    with copies.sampling(plan):
        assert all(torch.equal(p, s) for p, s in zip(params, copies.shadow["old"]))
    assert all(torch.equal(p, t) for p, t in zip(params, live))
    with copies.sampling(_Plan(PolicyCopy("ema_kl", 0.1, 0.3))):  # no sampling copy: theta as is
        assert all(torch.equal(p, t) for p, t in zip(params, live))
    with pytest.raises(KeyError):
        copies.swapped_in("nope")


def test_policy_copies_state_dict_round_trip():
    from flowrl.training.ema import PolicyCopies

    params = _params()
    plan = _Plan(PolicyCopy("old", 0.25, 0.5, samples=True), PolicyCopy("ema_kl", 0.1, 0.3))
    copies = PolicyCopies(params)
    copies.ensure(plan)
    with torch.no_grad():
        for p in params:
            p.mul_(2.0)
    copies.after_iteration(plan, 1)
    state = copies.state_dict()
    assert sorted(state) == ["ema_kl.0", "ema_kl.1", "old.0", "old.1"]
    fresh = PolicyCopies(params)
    fresh.load_state_dict({k: v.clone() for k, v in state.items()})
    assert sorted(fresh.shadow) == ["ema_kl", "old"]
    for name in fresh.shadow:
        assert all(torch.equal(a, b) for a, b in zip(fresh.shadow[name], copies.shadow[name]))
    # and through safetensors, as a checkpoint stores it (training/checkpoint.py)
    from safetensors.torch import load, save

    again = PolicyCopies(params)
    again.load_state_dict(load(save(state)))
    assert all(torch.equal(a, b) for a, b in zip(again.shadow["old"], copies.shadow["old"]))
    # the loaded copy keeps soft-updating from where it was
    fresh.after_iteration(plan, 2)
    copies.after_iteration(plan, 2)
    assert all(torch.equal(a, b) for a, b in zip(fresh.shadow["old"], copies.shadow["old"]))


# ---- the per-prompt budget (README cost sections) -------------------------------------------------
@pytest.mark.parametrize(
    "method,want",
    [
        # NFE 24 x 10; 24 x 9 backward terms; 3 forwards each (theta with grad, old and reference without)
        ("diffusionnft", dict(nfe_per_prompt=240, reward_queries_per_prompt=24, trained_steps_per_prompt=216,
                              training_forwards_per_prompt=648)),
        # NFE 24 x 14; 24 x 6 backward terms; 3 forwards each (theta, reference, KL EMA)
        ("awm", dict(nfe_per_prompt=336, reward_queries_per_prompt=24, trained_steps_per_prompt=144,
                     training_forwards_per_prompt=432)),
    ],
)  # fmt: skip
def test_plan_budget_of_the_forward_process_methods(method, want):
    # what `python -m flowrl.plan --json method=<m>` prints (compose_plan + StepPlan.to_json), in-process
    from flowrl.plan import compose_plan

    plan, prompts, _ = compose_plan([f"method={method}"])
    info = plan.to_json(prompts)
    assert {k: info[k] for k in want} == want
    assert info["trajectory"] == "final" and info["cfg_scale"] == 1.0
    assert info["optimizer_steps_per_iteration"] == 1
