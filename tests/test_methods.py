"""The three seed methods' own math, worked by hand or against DESIGN.md's reference values:
E-GRPO entropy merging, G²RPO completions + MGAI, DenseGRPO step rewards + calibration."""

import json
import math

import pytest
import torch

from flowrl.sampling.sigmas import flow_sigmas
from flowrl.step_schedulers.base import RewardScores, branch_group_advantages
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
        (1.8, [1, 1, 1, 2, 2, 2, 2, 3]),  # DESIGN.md (the paper's ablation), T 16, shift 3, a 0.7
        (2.0, [1, 1, 1, 2, 2, 2, 3, 3]),
        (2.6, [1, 1, 2, 3, 3, 4, 4, 4]),
    ],
)
def test_merge_lengths_match_the_paper(tau, lengths):
    s = EntropyMergeStepScheduler(tau=tau)
    assert s.merge_lengths() == lengths
    assert [j.stop - j.start for j in s.plan().jumps] == lengths


@pytest.mark.parametrize("tau", [1.8, 2.0, 2.2, 2.6])
def test_merged_jump_reaches_tau_and_is_the_smallest_that_does(tau):
    sigmas = flow_sigmas(16, 3.0).tolist()
    for j in EntropyMergeStepScheduler(tau=tau).plan().jumps:
        assert entropy_scale(sigmas[j.start], sigmas[j.stop], 0.7, sigmas[1]) >= tau
        if j.stop - j.start > 1:  # one step shorter would not have reached tau
            assert entropy_scale(sigmas[j.start], sigmas[j.stop - 1], 0.7, sigmas[1]) < tau


def test_egrpo_completion_starts_where_the_merged_jump_lands():
    # tau 2.6: step 2 merges 2 steps (2 -> 4), so its ODE completion runs 4, 5, ..., 16 (12 NFE),
    # not 3, ...: NFE per generation = sum over branches of 1 + (16 - stop) = 8 + (15+14+12+10+9+7+6+5) = 86
    plan = EntropyMergeStepScheduler(tau=2.6).plan()
    assert plan.branches[2].jump.start == 2 and plan.branches[2].completions == [list(range(4, 17))]
    stops = [j.stop for j in plan.jumps]  # [1, 2, 4, 6, 7, 9, 10, 11]
    assert stops == [1, 2, 4, 6, 7, 9, 10, 11]
    assert plan.nfe_per_generation() == sum(1 + 16 - s for s in stops) == 86


def test_fixed_merge_strategy():
    s = EntropyMergeStepScheduler(merge="fixed", merge_length=3, num_steps=8, num_branch_steps=7)
    assert s.merge_lengths() == [3, 3, 3, 3, 3, 3, 2]  # capped where fewer steps remain


def test_tau_zero_is_g2rpo_without_mgai():
    egrpo = EntropyMergeStepScheduler(tau=0.0).plan()
    g2rpo = SingularStochasticStepScheduler(granularities=[1]).plan()
    assert egrpo.jumps == g2rpo.jumps and [b.completions for b in egrpo.branches] == [b.completions for b in g2rpo.branches]
    assert egrpo.budget() == g2rpo.budget()
    r = torch.randn(2, 12, 8, 1)
    torch.testing.assert_close(
        EntropyMergeStepScheduler(tau=0.0).advantages(r), SingularStochasticStepScheduler(granularities=[1]).advantages(r)
    )


# ---- G²RPO ----------------------------------------------------------------------------------


def test_coarse_completion_hand_worked():
    # e = 3, T 16: after the SDE step 3 -> 4, g = 1: 4, 5, ..., 16 (12 NFE).
    assert coarse_completion(3, 16, 1) == list(range(4, 17))
    # g = 2: [4] ++ 5, 7, 9, 11, 13, 15 -> last replaced by 16 (sigma 0): 6 NFE.
    assert coarse_completion(3, 16, 2) == [4, 5, 7, 9, 11, 13, 16]
    # g = 3: [4] ++ 5, 8, 11, 14 -> 14 replaced by 16: 4 NFE.
    assert coarse_completion(3, 16, 3) == [4, 5, 8, 11, 16]
    # e = 4, g = 2: [5] ++ 6, 8, ..., 16 lands on 16 already.
    assert coarse_completion(4, 16, 2) == [5, 6, 8, 10, 12, 14, 16]


@pytest.mark.parametrize("granularities, nfe", [([1], 100), ([1, 2], 148), ([1, 2, 3], 181)])
def test_g2rpo_nfe_per_generation_via_plan_cli(capsys, granularities, nfe):
    # The paper's counts (T 16, 8 SDE steps): 100 = sum_{e=0..7} (16 - e), and 148 / 181 with MGAI.
    from flowrl.plan import main

    main(["--json", "method=g2rpo", f"method.granularities=[{','.join(map(str, granularities))}]"])
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "g2rpo" and out["nfe_per_generation"] == nfe
    assert out["branches"] == [{"start": e, "stop": e + 1} for e in range(8)]
    assert out["reward_queries_per_prompt"] == 12 * 8 * len(granularities)


def test_mgai_sums_per_granularity_group_advantages():
    # One prompt, G = 2, one branch, two granularities:
    #   g=1 rewards [1, 3] -> z = [-1, 1];  g=2 rewards [5, 4] -> z = [1, -1]  -> sum [0, 0]
    # A sample that looks better at one granularity and worse at the other gets no credit.
    r = torch.tensor([[[[1.0, 5.0]], [[3.0, 4.0]]]])  # [P=1, G=2, B=1, C=2]
    torch.testing.assert_close(branch_group_advantages(r), torch.zeros(1, 2, 1))
    r2 = torch.tensor([[[[1.0, 4.0]], [[3.0, 5.0]]]])  # consistent: both granularities prefer sample 1
    torch.testing.assert_close(branch_group_advantages(r2), torch.tensor([[[-2.0], [2.0]]]))


def test_g2rpo_multi_reward_sums_weighted_per_reward_advantages():
    # hps [1, 3] -> [-1, 1]; clip [2, 0] -> [1, -1]; weights 0.7 / 0.3 -> [-0.4, 0.4]
    s = SingularStochasticStepScheduler(group_size=2, num_branch_steps=1, granularities=[1], num_steps=4)
    parts = {"hps": torch.tensor([1.0, 3.0]).view(1, 2, 1, 1), "clip": torch.tensor([2.0, 0.0]).view(1, 2, 1, 1)}
    scores = RewardScores(parts, total=torch.zeros(1, 2, 1, 1), weights={"hps": 0.7, "clip": 0.3})
    torch.testing.assert_close(s.advantages(scores), torch.tensor([[[-0.4], [0.4]]]))
    # 'combined' normalises the combined reward instead (here all zeros -> advantage 0)
    s.multi_reward = "combined"
    torch.testing.assert_close(s.advantages(scores), torch.zeros(1, 2, 1))


# ---- DenseGRPO ------------------------------------------------------------------------------


def test_step_rewards_and_per_timestep_normalisation():
    # T = 2, G = 2. Sample 0: R = [0.2, 0.5, 0.4] -> dR = [0.3, -0.1]; sample 1: R = [0.2, 0.3, 0.6] -> dR = [0.1, 0.3]
    # step 0: [0.3, 0.1] -> [1, -1]; step 1: [-0.1, 0.3] -> [-1, 1]. The final rewards alone
    # (0.4 < 0.6) would have blamed sample 0 for both steps.
    r = torch.tensor([[[0.2, 0.5, 0.4], [0.2, 0.3, 0.6]]])
    torch.testing.assert_close(step_rewards(r), torch.tensor([[[0.3, -0.1], [0.1, 0.3]]]))
    s = DenseRewardStepScheduler(num_steps=2, group_size=2)
    torch.testing.assert_close(s.advantages(r), torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]]), atol=1e-5, rtol=0)


def test_dense_completion_schedules_and_budget():
    assert completion_schedule(3, 10, None) == list(range(3, 11))
    assert completion_schedule(0, 10, 2) == [0, 5, 10]  # 2 evenly spaced ODE steps
    assert completion_schedule(8, 10, 5) == [8, 9, 10]  # horizon longer than what remains
    # T 10, G 24: 10 SDE steps + completions of x_0..x_9 (10 + 9 + ... + 1 = 55) = 65 NFE per
    # generation; reward queries 24 * (10 intermediate + 1 final) = 264.
    b = DenseRewardStepScheduler().plan().budget()
    assert b["nfe_per_generation"] == 65 and b["reward_queries_per_prompt"] == 264
    assert DenseRewardStepScheduler(dense_horizon=1).plan().budget()["nfe_per_generation"] == 20


def test_calibration_update_follows_alg1():
    # P = 1, G = 4, T = 2. Step 0: dR signs [+, +, +, -] -> |3 - 1| = 2, not < eps1 = 2 -> lower psi;
    # step 1: [+, -, +, -] -> 0 < 2 -> raise psi.
    dr = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]])
    new, imbalance = calibration_update([0.7, 0.7], dr, eps1=2.0, eps2=0.01, lo=0.05, hi=1.5)
    assert imbalance.tolist() == [2.0, 0.0]
    assert new == pytest.approx([0.69, 0.71])
    assert calibration_update([0.05], dr[..., :1], 2.0, 0.01, 0.05, 1.5)[0] == [0.05]  # clamped


def test_noise_level_table_drives_each_step(tmp_path):
    s = DenseRewardStepScheduler(num_steps=3, group_size=2, noise_levels=[0.9, 0.5, 0.1])
    assert [s.noise_level_at(i) for i in range(3)] == [0.9, 0.5, 0.1]
    x, v = torch.ones(1, 4), torch.zeros(1, 4)
    sig = flow_sigmas(3, 3.0)
    std = [s.sde_jump(x, v, sig, i, i + 1, noise=torch.zeros(1, 4)).std.flatten()[0].item() for i in (1, 2)]
    # std = a * sqrt(sigma / (1 - sigma)) * sqrt(-dsigma): the ratio of the two steps' a is 5
    ratio_a = (
        std[0]
        / std[1]
        / (math.sqrt(sig[1] / (1 - sig[1]) * (sig[1] - sig[2])) / math.sqrt(sig[2] / (1 - sig[2]) * (sig[2] - sig[3])))
    )
    assert ratio_a == pytest.approx(5.0, rel=1e-5)
    path = tmp_path / "psi.json"
    path.write_text(json.dumps({"noise_levels": [0.3, 0.2, 0.1]}))
    assert DenseRewardStepScheduler(num_steps=3, group_size=2, noise_levels_file=str(path)).noise_levels == [0.3, 0.2, 0.1]
    with pytest.raises(ValueError, match="one per step"):
        DenseRewardStepScheduler(num_steps=4, group_size=2, noise_levels=[0.1])
    with pytest.raises(FileNotFoundError, match="flowrl.calibrate"):
        DenseRewardStepScheduler(noise_levels_file=str(tmp_path / "missing.json"))


def test_calibration_on_the_tiny_model_moves_psi_as_alg1_prescribes(tiny_model):
    # Two real calibration rounds on the tiny model with the shapes reward: after each round every
    # step's psi moved by exactly eps2, up where the recorded sign imbalance was < eps1, else down.
    from flowrl.rewards.shapes import ShapesReward
    from flowrl.sampling.rollout import rollout

    reward = ShapesReward()
    sched = DenseRewardStepScheduler(
        num_steps=4, group_size=6, calibration={"iterations": 2, "num_prompts": 2, "eps1": 2.0, "eps2": 0.05}
    )
    gen = torch.Generator().manual_seed(0)

    def rollout_fn(prompts):
        ro = rollout(tiny_model, sched, prompts, flow_sigmas(4, 3.0), lambda im, p: {"shapes": reward(im, p)}, gen)
        return ro, RewardScores.single("shapes", ro.parts["shapes"])

    record = sched.calibrate(rollout_fn, ["a red circle on a blue background", "a white square on a green background"])
    assert len(record["history"]) == 2
    levels = [h["noise_levels"] for h in record["history"]] + [record["noise_levels"]]
    for before, after, h in zip(levels, levels[1:], record["history"], strict=False):
        for t, (b, a, imb) in enumerate(zip(before, after, h["imbalance"], strict=True)):
            assert a == pytest.approx(b + (0.05 if imb < 2.0 else -0.05)), (t, imb)
    assert sched.noise_levels == record["noise_levels"] and sched.calibrated
    assert sched.calibrate(rollout_fn, ["x"]) is None  # calibrated once; training reuses the table


# ---- the engine on anchor plans --------------------------------------------------------------


def test_anchor_rollout_layout_nfe_and_shared_start(tiny_model):
    from flowrl.rewards.shapes import ShapesReward
    from flowrl.sampling.rollout import rollout

    reward = ShapesReward()
    sched = SingularStochasticStepScheduler(num_steps=6, group_size=3, num_branch_steps=2, granularities=[1, 2])
    prompts = ["a red circle on a blue background", "a white square on a green background"]
    ro = rollout(
        tiny_model,
        sched,
        prompts,
        flow_sigmas(6, 3.0),
        lambda im, p: {"shapes": reward(im, p)},
        torch.Generator().manual_seed(0),
        4,
    )
    assert ro.parts["shapes"].shape == (2, 3, 2, 2)  # [P, G, branches, granularities]
    js = ro.jump_sets[1]
    assert js.x.shape[0] == 2 and js.x_next.shape[:2] == (2, 3) and js.log_prob.shape == (2, 3)
    # completions: e=0: g1 1..6 (5 NFE), g2 [1, 2, 4, 6] (3); e=1: g1 2..6 (4), g2 [2, 3, 5 -> 6] (2)
    # rows P*G = 6 -> 6 * (5+3+4+2) = 84, plus the anchor's velocities at steps 0 and 1 (2 x 2 prompts);
    # the jumps themselves reuse the anchor velocity.
    assert ro.nfe == 84 + 4
    # the papers' count charges each sample its jump: anchor 1 + G * (2 jumps + 14) per prompt
    assert sched.plan().budget()["nfe_per_prompt"] == 1 + 3 * (2 + 5 + 3 + 4 + 2)


def test_wavefront_batching_does_not_change_results(tiny_model):
    from flowrl.rewards.shapes import ShapesReward
    from flowrl.sampling.rollout import rollout

    reward = ShapesReward()
    sched = EntropyMergeStepScheduler(num_steps=8, group_size=3, num_branch_steps=3, tau=1.2)
    prompts = ["a red circle on a blue background", "a blue square on a white background"]
    runs = [
        rollout(
            tiny_model,
            sched,
            prompts,
            flow_sigmas(8, 3.0),
            lambda im, p: {"shapes": reward(im, p)},
            torch.Generator().manual_seed(1),
            mb,
        )
        for mb in (64, 5)
    ]
    for a, b in zip(runs[0].jump_sets, runs[1].jump_sets, strict=True):
        torch.testing.assert_close(a.x_next, b.x_next, atol=1e-5, rtol=0)
    assert runs[0].forwards < runs[1].forwards and runs[0].nfe == runs[1].nfe
    torch.testing.assert_close(runs[0].images, runs[1].images, atol=1e-4, rtol=0)
