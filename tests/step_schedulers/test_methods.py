"""The three seed methods' own math, worked by hand or against the papers' reference values:
E-GRPO entropy merging, G²RPO completions + MGAI, DenseGRPO step rewards + calibration."""

import json
import math

import pytest
import torch

from flowrl.contract import RewardScores
from flowrl.sampling.sigmas import flow_sigmas
from flowrl.step_schedulers.dense_reward import (
    DenseRewardStepScheduler,
    calibration_update,
    completion_schedule,
    step_rewards,
)
from flowrl.step_schedulers.entropy_merge import EntropyMergeStepScheduler, entropy_scale, jump_entropy
from flowrl.step_schedulers.singular_stochastic import SingularStochasticStepScheduler, coarse_completion

# ---- E-GRPO ---------------------------------------------------------------------------------


def test_jump_entropy_hand_worked():
    # sigma 0.5 -> 0.25, a 0.7: std_dev_t^2 = 0.49 * 0.5 / 0.5 = 0.49; var = 0.49 * 0.25 = 0.1225
    # 2 pi e = 17.079468 -> 2 pi e var = 2.092235; h/d = 0.5 * ln(2.092235) = 0.369116; scale = sqrt(2.092235) = 1.446456
    assert jump_entropy(0.5, 0.25, 0.7, sigma_max=0.9) == pytest.approx(0.369116, abs=1e-6)
    assert entropy_scale(0.5, 0.25, 0.7, sigma_max=0.9) == pytest.approx(1.446456, abs=1e-6)
    # at sigma = 1 the denominator is 1 - sigma_max: 0.49 * 1 / (1 - 0.9) * 0.1 = 0.49 -> scale sqrt(2 pi e 0.49)
    assert entropy_scale(1.0, 0.9, 0.7, sigma_max=0.9) == pytest.approx(math.sqrt(2 * math.pi * math.e * 0.49))
    assert jump_entropy(0.5, 0.25, 0.0, sigma_max=0.9) == -math.inf  # a = 0: deterministic, no entropy


@pytest.mark.parametrize(
    "tau, lengths",
    [
        (0.0, [1, 1, 1, 1, 1, 1, 1, 1]),
        (1.8, [1, 1, 1, 2, 2, 2, 2, 3]),  # the E-GRPO paper's ablation, T 16, shift 3, a 0.7
        (2.0, [1, 1, 1, 2, 2, 2, 3, 3]),
        (2.6, [1, 1, 2, 3, 3, 4, 4, 4]),
    ],
)
def test_merge_lengths_match_the_paper(tau, lengths):
    s = EntropyMergeStepScheduler(tau=tau)
    assert s.merge_lengths() == lengths
    assert [j.stop - j.start for j in s.plan(0).jumps] == lengths


@pytest.mark.parametrize("tau", [1.8, 2.0, 2.2, 2.6])
def test_merged_jump_reaches_tau_and_is_the_smallest_that_does(tau):
    sigmas = flow_sigmas(16, 3.0).tolist()
    for j in EntropyMergeStepScheduler(tau=tau).plan(0).jumps:
        assert entropy_scale(sigmas[j.start], sigmas[j.stop], 0.7, sigmas[1]) >= tau
        if j.stop - j.start > 1:  # one step shorter would not have reached tau
            assert entropy_scale(sigmas[j.start], sigmas[j.stop - 1], 0.7, sigmas[1]) < tau


def test_egrpo_completion_starts_where_the_merged_jump_lands():
    # tau 2.6: step 2 merges 2 steps (2 -> 4), so its ODE completion runs 4, 5, ..., 16 (12 NFE),
    # not 3, ...: NFE per generation = sum over branches of 1 + (16 - stop) = 8 + (15+14+12+10+9+7+6+5) = 86
    plan = EntropyMergeStepScheduler(tau=2.6, granularities=[1]).plan(0)
    assert plan.branches[2].jump.start == 2 and plan.branches[2].completions == (tuple(range(4, 17)),)
    stops = [j.stop for j in plan.jumps]  # [1, 2, 4, 6, 7, 9, 10, 11]
    assert stops == [1, 2, 4, 6, 7, 9, 10, 11]
    assert plan.nfe_per_generation() == sum(1 + 16 - s for s in stops) == 86


def test_egrpo_official_completion_quirk_is_a_switch():
    # VisualGRPO flux_sampler.py `_run_ode_sample` restarts the ODE at k+1 on a latent already at
    # sigma_{k+l}: with k 2, l 2 it steps 3 -> 4 -> 5 ... instead of 4 -> 5 ... (one extra NFE and a
    # sigma grid that is off by one step). completion_start=next reproduces it; landing is ours.
    s = EntropyMergeStepScheduler(tau=2.6, granularities=[1, 2], completion_start="next")
    b = s.plan(0).branches[2]
    assert (b.jump.start, b.jump.stop) == (2, 4)
    assert b.completions == (tuple(range(3, 17)), (3, 4, 5, 7, 9, 11, 13, 16))
    # with merge length 1 the two agree (every released config: merge lengths [1, 1, 1])
    assert s.plan(0).branches[0].completions == EntropyMergeStepScheduler(tau=2.6).plan(0).branches[0].completions


def test_egrpo_official_granularities_sum_advantages():
    # fastvideo/config/config.yaml: granularities [1, 2]; rollout_buffer.py z-scores each
    # (prompt, branch, granularity) column over G and sums them, as G²RPO's MGAI.
    s = EntropyMergeStepScheduler(tau=2.2, group_size=2)
    plan = s.plan(0)
    assert s.granularities == [1, 2] and all(len(b.completions) == 2 for b in plan.branches)
    # k=0 lands on 1: g=2 completion 1, 2, 4, 6, ..., 16 (the stride runs from k+l+1)
    assert plan.branches[0].completions[1] == (1, 2, 4, 6, 8, 10, 12, 14, 16)
    r = torch.tensor([[[[1.0, 2.0]] * 8, [[3.0, 2.0]] * 8]])  # [P=1, G=2, B=8, C=2]: g=2 ties
    adv = s.advantages(r, plan)
    # g=1 [1, 3] -> unbiased z [-0.7071, 0.7071]; g=2 identical -> 0; summed
    torch.testing.assert_close(adv[0], torch.tensor([[-0.70711, 0.70711]]), atol=1e-5, rtol=0)


def test_egrpo_update_switch_paper_algorithm_1():
    # grpo_trainer.py: an optimizer step per branch point (8); the paper's Algorithm 1 updates once
    # over all active steps (its objective averages over them): update.step_every=rollout.
    assert len(EntropyMergeStepScheduler().plan(0).optimizer_steps(2)) == 8
    paper = EntropyMergeStepScheduler(update={"step_every": "rollout"}).plan(0).optimizer_steps(2)
    assert len(paper) == 1 and [b.jump for b in paper[0]] == list(range(8))


def test_fixed_merge_strategy():
    s = EntropyMergeStepScheduler(merge="fixed", merge_length=3, num_steps=8, num_branch_steps=7)
    assert s.merge_lengths() == [3, 3, 3, 3, 3, 3, 2]  # capped where fewer steps remain


def test_tau_zero_is_g2rpo():
    # with the same granularities, tau 0 (no merging) is exactly G²RPO's plan and advantages
    for lam in ([1], [1, 2]):
        e, g = EntropyMergeStepScheduler(tau=0.0, granularities=lam), SingularStochasticStepScheduler(granularities=lam)
        egrpo, g2rpo = e.plan(0), g.plan(0)
        assert egrpo.jumps == g2rpo.jumps and egrpo.branches == g2rpo.branches and egrpo.update == g2rpo.update
        assert egrpo.budget() == g2rpo.budget()
        r = torch.randn(2, 12, 8, len(lam))
        for a, b in zip(e.advantages(r, egrpo), g.advantages(r, g2rpo), strict=True):
            torch.testing.assert_close(a, b)


# ---- G²RPO ----------------------------------------------------------------------------------


def test_coarse_completion_hand_worked():
    # e = 3, T 16: after the SDE step 3 -> 4, g = 1: 4, 5, ..., 16 (12 NFE).
    assert coarse_completion(3, 16, 1) == tuple(range(4, 17))
    # g = 2: [4] ++ 5, 7, 9, 11, 13, 15 -> last replaced by 16 (sigma 0): 6 NFE. The official
    # sampler decodes the x0 prediction at 13 instead, which is that Euler step 13 -> 0.
    assert coarse_completion(3, 16, 2) == (4, 5, 7, 9, 11, 13, 16)
    # g = 3: [4] ++ 5, 8, 11, 14 -> 14 replaced by 16: 4 NFE.
    assert coarse_completion(3, 16, 3) == (4, 5, 8, 11, 16)
    # e = 4, g = 2: [5] ++ 6, 8, ..., 16 lands on 16 already.
    assert coarse_completion(4, 16, 2) == (5, 6, 8, 10, 12, 14, 16)


@pytest.mark.parametrize("granularities, nfe", [([1], 100), ([1, 2], 148), ([1, 2, 3], 181)])
def test_g2rpo_nfe_per_generation_via_plan_cli(capsys, granularities, nfe):
    # The paper's counts (T 16, 8 SDE steps): 100 = sum_{e=0..7} (16 - e), and 148 / 181 with MGAI.
    from flowrl.plan import main

    main(["--json", "method=g2rpo", f"method.granularities=[{','.join(map(str, granularities))}]"])
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "g2rpo" and out["nfe_per_generation"] == nfe
    assert [(b["start"], b["stop"], b["sde"], b["noise_level"]) for b in out["branches"]] == [
        (e, e + 1, "sde", 0.7) for e in range(8)
    ]
    assert out["reward_queries_per_prompt"] == 12 * 8 * len(granularities)
    # train_g2rpo_hps.py: one optimizer step per SDE step e, every e trained every iteration
    assert out["optimizer_steps_per_iteration"] == 8 and out["trained_step_indices"] == list(range(8))


def test_g2rpo_multi_reward_adds_unweighted_per_reward_advantages():
    # train_g2rpo_hps_clip.py: hps_adv + clip_adv, each z-scored on its own, no weights.
    # hps [1, 3] -> [-0.70711, 0.70711]; clip [2, 0] -> [0.70711, -0.70711] -> sum [0, 0];
    # clip [0, 4] -> [-0.70711, 0.70711] -> sum [-1.41421, 1.41421] whatever the 0.7 / 0.3 weights.
    s = SingularStochasticStepScheduler(group_size=2, num_branch_steps=1, granularities=[1], num_steps=4)
    plan = s.plan(0)
    hps = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    scores = RewardScores(
        {"hps": hps, "clip": torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)}, torch.zeros(1, 2, 1, 1), {"hps": 0.7, "clip": 0.3}
    )
    torch.testing.assert_close(s.advantages(scores, plan)[0], torch.zeros(1, 2), atol=1e-6, rtol=0)
    scores.parts["clip"] = torch.tensor([0.0, 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(s.advantages(scores, plan)[0], torch.tensor([[-1.41421, 1.41421]]), atol=1e-5, rtol=0)
    # weighted_sum_advantages (MixGRPO's rule) applies the reward weights: 0.7 z_hps + 0.3 z_clip
    s.multi_reward = "weighted_sum_advantages"
    torch.testing.assert_close(s.advantages(scores, plan)[0], torch.tensor([[-0.70711, 0.70711]]), atol=1e-5, rtol=0)
    # 'combined' normalises the combined reward instead (here all zeros -> advantage 0)
    s.multi_reward = "combined"
    torch.testing.assert_close(s.advantages(scores, plan)[0], torch.zeros(1, 2))


# ---- DenseGRPO ------------------------------------------------------------------------------


def test_step_rewards_and_per_timestep_normalisation():
    # T = 2, G = 2. Sample 0: R = [0.2, 0.5, 0.4] -> dR = [0.3, -0.1]; sample 1: R = [0.2, 0.3, 0.6] -> dR = [0.1, 0.3]
    # step 0: [0.3, 0.1] -> mean 0.2, population std 0.1 (+ 1e-4, flow_grpo's stat tracker) ->
    # [0.999, -0.999]; step 1: [-0.1, 0.3] -> [-0.9995, 0.9995]. The final rewards alone (0.4 < 0.6)
    # would have blamed sample 0 for both steps.
    r = torch.tensor([[[0.2, 0.5, 0.4], [0.2, 0.3, 0.6]]])
    torch.testing.assert_close(step_rewards(r), torch.tensor([[[0.3, -0.1], [0.1, 0.3]]]))
    s = DenseRewardStepScheduler(num_steps=2, group_size=2, timestep_fraction=1.0)
    adv = s.advantages(r, s.plan(0))  # one [P*G, 1] tensor per jump
    z0, z1 = 0.1 / (0.1 + 1e-4), 0.2 / (0.2 + 1e-4)
    torch.testing.assert_close(adv[0].flatten(), torch.tensor([z0, -z0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[1].flatten(), torch.tensor([-z1, z1]), atol=1e-5, rtol=0)


def test_dense_completion_schedules_and_budget():
    assert completion_schedule(3, 10, None) == tuple(range(3, 11))
    assert completion_schedule(0, 10, 2) == (0, 5, 10)  # 2 evenly spaced ODE steps
    assert completion_schedule(8, 10, 5) == (8, 9, 10)  # horizon longer than what remains
    # T 10, G 24: 10 SDE steps + completions of x_0..x_9 (10 + 9 + ... + 1 = 55) = 65 NFE per
    # generation; reward queries 24 * (10 intermediate + 1 final) = 264.
    b = DenseRewardStepScheduler().plan(0).budget()
    assert b["nfe_per_generation"] == 65 and b["reward_queries_per_prompt"] == 264
    assert DenseRewardStepScheduler(dense_horizon=1).plan(0).budget()["nfe_per_generation"] == 20


def test_calibration_update_pools_the_signs_of_all_samples():
    # Alg. 1: per timestep, the signs of dR over all N samples (one prompt each) are pooled.
    # N = 4, T = 2. Step 0: signs [+, +, +, -] -> |3 - 1| = 2, not < eps1 = 2 -> lower psi;
    # step 1: [+, -, +, -] -> 0 < 2 -> raise psi.
    dr = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    new, imbalance = calibration_update([0.7, 0.7], dr, eps1=2.0, eps2=0.01)
    assert imbalance.tolist() == [2.0, 0.0]
    assert new == pytest.approx([0.69, 0.71])
    assert calibration_update([0.005], dr[..., :1], 2.0, 0.01)[0] == [0.0]  # psi stays >= min_std (0)


def test_pooled_counts_and_per_group_averages_can_disagree():
    # Why pooling matters: 2 groups of 4 at one timestep, signs [+,+,+,+] and [-,-,-,-]. Pooled
    # (the paper): |4 - 4| = 0 < 2 -> raise psi. The old per-group average: (|4| + |-4|) / 2 = 4 >= 2
    # -> lower psi. The two rules move psi in opposite directions.
    dr = torch.tensor([[1.0]] * 4 + [[-1.0]] * 4)
    assert calibration_update([0.5], dr, 2.0, 0.01)[0] == pytest.approx([0.51])
    per_group = ((dr.view(2, 4) > 0).sum(1) - (dr.view(2, 4) < 0).sum(1)).abs().float().mean()
    assert per_group.item() == 4.0


def test_psi_is_the_steps_std_dev_t():
    # DenseGRPO Eq. 11: sigma_t = psi(t), so psi replaces Flow-GRPO's std_dev_t in the std AND the
    # mean. Hand-worked: x = 1, v = 0, sigma 0.5 -> 0.25 (dt = -0.25), psi 0.4:
    #   std = 0.4 * sqrt(0.25) = 0.2; mean = x * (1 + psi^2 dt / (2 sigma)) = 1 - 0.16 * 0.25 = 0.96
    s = DenseRewardStepScheduler(num_steps=3, group_size=2, noise_levels=[0.9, 0.4, 0.1])
    plan = s.plan(0)
    assert [j.step.std_dev_t for j in plan.jumps] == [0.9, 0.4, 0.1]
    out = plan.jumps[1].step(torch.ones(1, 4), torch.zeros(1, 4), 0.5, 0.25, noise=torch.zeros(1, 4))
    assert out.std.flatten()[0].item() == pytest.approx(0.2, abs=1e-7)
    torch.testing.assert_close(out.mean, torch.full((1, 4), 0.96))
    assert out.std_dev_t.item() == pytest.approx(0.4)  # what the official KL divides by


def test_initial_psi_is_flow_grpo_std_dev_t(tmp_path):
    # Our choice (the paper gives no psi_0): psi_0(t) = a * sqrt(sigma / (1 - sigma)), with sigmas[1]
    # in the denominator at sigma = 1: calibration starts from Flow-GRPO's own step.
    s = DenseRewardStepScheduler(num_steps=10, group_size=2, noise_level=0.7)
    sig = flow_sigmas(10, 3.0).tolist()
    assert s.noise_levels[0] == pytest.approx(0.7 * math.sqrt(1 / (1 - sig[1])), rel=1e-6)
    assert s.noise_levels[5] == pytest.approx(0.7 * math.sqrt(sig[5] / (1 - sig[5])), rel=1e-6)
    plan = s.plan(0)
    x, v, n = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    from flowrl.sampling import sde_step

    for i in (0, 5):  # the same step as Flow-GRPO's SDE with a 0.7
        out = plan.jumps[i].step(x, v, sig[i], sig[i + 1], noise=n)
        ref = sde_step(x, v, sig[i], sig[i + 1], 0.7, noise=n, sigma_max=sig[1])
        torch.testing.assert_close(out.prev_sample, ref.prev_sample)
    path = tmp_path / "psi.json"
    path.write_text(json.dumps({"noise_levels": [0.3, 0.2, 0.1]}))
    assert DenseRewardStepScheduler(num_steps=3, group_size=2, noise_levels_file=str(path)).noise_levels == [0.3, 0.2, 0.1]
    with pytest.raises(ValueError, match="one per step"):
        DenseRewardStepScheduler(num_steps=4, group_size=2, noise_levels=[0.1])
    with pytest.raises(FileNotFoundError, match="flowrl.calibrate"):
        DenseRewardStepScheduler(noise_levels_file=str(tmp_path / "missing.json"))
    # the table is the scheduler's state (resume)
    s2 = DenseRewardStepScheduler(num_steps=10, group_size=2)
    s2.load_state_dict({"noise_levels": [0.5] * 10, "calibrated": True})
    assert s2.state_dict() == {"noise_levels": [0.5] * 10, "calibrated": True}


def test_calibration_on_the_tiny_model_moves_psi_as_alg1_prescribes(tiny_model):
    # Two real calibration rounds on the tiny model with the shapes reward, N = 6 samples of 6
    # prompts: after each round every step's psi moved by exactly eps2, up where the pooled sign
    # imbalance was < eps1, else down.
    from flowrl.data.shapes import split_specs
    from flowrl.engine.rollout import rollout
    from flowrl.rewards.shapes import ShapesReward

    reward = ShapesReward()
    sched = DenseRewardStepScheduler(
        num_steps=4, group_size=6, calibration={"iterations": 2, "num_samples": 6, "eps1": 2.0, "eps2": 0.05}
    )
    gen = torch.Generator().manual_seed(0)
    seen = []

    def rollout_fn(prompts, plan):
        seen.append((list(prompts), plan.group_size))
        ro = rollout(tiny_model, plan, prompts, lambda im, p: {"shapes": reward(im, p)}, gen)
        return ro, RewardScores.single("shapes", ro.parts["shapes"])

    record = sched.calibrate(rollout_fn, [spec.prompt for spec in split_specs("train")[:12]])
    assert [len(p) for p, _ in seen] == [6, 6] and {g for _, g in seen} == {1}  # one sample per prompt
    assert seen[0][0] != seen[1][0]
    assert len(record["history"]) == 2
    levels = [h["noise_levels"] for h in record["history"]] + [record["noise_levels"]]
    for before, after, h in zip(levels, levels[1:], record["history"], strict=False):
        for t, (b, a, imb) in enumerate(zip(before, after, h["imbalance"], strict=True)):
            assert a == pytest.approx(b + (0.05 if imb < 2.0 else -0.05)), (t, imb)
    assert sched.noise_levels == record["noise_levels"] and sched.calibrated
    assert sched.calibrate(rollout_fn, ["x"]) is None  # calibrated once; training reuses the table
