"""The `uniform` step scheduler (DanceGRPO / Flow-GRPO), worked by hand: its advantages, trained
steps, update schedule and budget; the shared strided completions. Where a behaviour comes from an
official script, the test names it. (The plan contract itself: tests/contract/.)"""

import json

import pytest
import torch

from flowrl.contract import StepSettings
from flowrl.step_schedulers._common import strided_completion
from flowrl.step_schedulers.uniform import UniformStepScheduler


def _flowgrpo(**kw):
    base = dict(
        num_steps=10,
        group_size=24,
        noise_level=0.7,
        sde="sde",
        timestep_fraction=0.99,
        timestep_selection="first",
        exclude_last_step=False,
        same_initial_noise=False,
        group_by="prompt",
        global_std=True,
        std_unbiased=False,
        std_eps=1e-4,
        score="final",
        update={"step_every": "rollout", "steps_per_rollout": 2, "shuffle": True},
        method="flowgrpo",
    )
    return UniformStepScheduler(**{**base, **kw})


def _dancegrpo(**kw):
    base = dict(update={"step_every": "samples", "samples_per_step": 4})
    return UniformStepScheduler(**{**base, **kw})


# ---- group statistics (issue item 2c) ---------------------------------------------------------


def test_flowgrpo_per_prompt_mean_global_std():
    # flow_grpo/stat_tracking.py with global_std (every SD3 config): mean per prompt, std over
    # every reward of the update (population) + 1e-4. Rewards, prompts a, b, a (G 2):
    #   all rewards [0, 2, 1, 3, 4, 6]: mean 8/3, population var (64+4+25+1+16+100)/9/6*... -> std 1.97203
    #   prompt a pools [0, 2, 4, 6] (mean 3); prompt b [1, 3] (mean 2).
    s = _flowgrpo(num_steps=4, group_size=2)
    r = torch.tensor([[0.0, 2.0], [1.0, 3.0], [4.0, 6.0]])
    std = torch.tensor([0.0, 2.0, 1.0, 3.0, 4.0, 6.0]).std(unbiased=False).item()
    assert std == pytest.approx(1.972027, abs=1e-6)
    expected = torch.tensor([[-3.0, -1.0], [-1.0, 1.0], [1.0, 3.0]]) / (std + 1e-4)
    plan = s.plan(0)
    adv = s.advantages(r, plan, ["a", "b", "a"])
    torch.testing.assert_close(adv[0].view(3, 2), expected, atol=1e-5, rtol=0)
    # every trained jump of a trajectory shares its final advantage
    assert all(torch.equal(a, adv[0]) for a in adv)
    # per-prompt std instead of the global one: prompt a's pooled population std sqrt(5)
    s2 = _flowgrpo(num_steps=4, group_size=2, global_std=False)
    adv2 = s2.advantages(r, s2.plan(0), ["a", "b", "a"])[0].view(3, 2)
    torch.testing.assert_close(adv2[0], torch.tensor([-3.0, -1.0]) / (5**0.5 + 1e-4), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv2[1], torch.tensor([-1.0, 1.0]) / (1.0 + 1e-4), atol=1e-5, rtol=0)


def test_advantages_clamped_and_in_the_jump_set_layout():
    # One outlier in a group of 40 (DanceGRPO, unbiased): rewards [0]*39 + [1]: mean 0.025,
    # sample std sqrt(40 * 0.025 * 0.975 / 39) = 0.158114 -> the outlier's z = 6.166 > 5: clamped.
    s = _dancegrpo(group_size=40, update={"step_every": "samples", "samples_per_step": 40})
    r = torch.zeros(1, 40)
    r[0, -1] = 1.0
    plan = s.plan(0)
    adv = s.advantages(r, plan)
    # one tensor per jump, [M = P*G, K = 1] as the engine's full-trajectory jump sets
    assert len(adv) == 16 and all(a.shape == (40, 1) for a in adv)
    assert adv[0][-1, 0].item() == pytest.approx(5.0)
    assert adv[0][0, 0].item() == pytest.approx(-0.025 / 0.158114, rel=1e-4)


# ---- trained steps (2h) and the update schedule (2b) --------------------------------------------


def test_dancegrpo_trains_per_sample_random_steps_from_the_first_t_minus_1():
    # train_grpo_flux.py: each sample its own torch.randperm(T - 1), the first int((T-1) * 0.6)
    # = 9 of them trained; the last step (15 -> 16) never.
    s = _dancegrpo()
    plan = s.plan(0, torch.Generator().manual_seed(0))
    assert plan.trained_step_indices() is None and plan.update.per_sample == (9, 15)
    mask = plan.trained_mask(num_prompts=2)  # [24 samples, 16 jumps]
    assert mask.shape == (24, 16) and mask.sum(1).tolist() == [9] * 24
    assert not mask[:, 15].any()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # drawn per sample, not shared
    # the draw is frozen in the plan: the engine and the update derive the same mask
    assert torch.equal(mask, plan.trained_mask(num_prompts=2))
    # and drawn anew each iteration from the run's generator
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(s.plan(0, g).trained_mask(2), s.plan(1, g).trained_mask(2))


def test_dancegrpo_optimizer_step_every_gradient_accumulation_samples():
    # finetune_flux_grpo.sh: 1 prompt x G 12 per GPU, gradient_accumulation_steps 4: each GPU steps
    # after its samples 0-3, 4-7, 8-11, the gradients averaged over the GPUs: 3 optimizer steps per
    # iteration, step o over the o-th 4 samples of every prompt, 4 x 9 terms per prompt (the loss /
    # (4 x 9) of the script, averaged over GPUs = the mean over the step's terms).
    plan = _dancegrpo().plan(0, torch.Generator().manual_seed(0))
    for p in (1, 2):
        steps = plan.optimizer_steps(num_prompts=p)
        assert len(steps) == 3 and plan.to_json(p)["optimizer_steps_per_iteration"] == 3
        for o, step in enumerate(steps):
            rows = sorted({r for b in step for r in b.rows.tolist()})
            assert rows == [12 * q + 4 * o + k for q in range(p) for k in range(4)]
            assert sum(b.rows.numel() for b in step) == p * 4 * 9
    # the 8-GPU LoRA script: 2 prompts per GPU, a step every 12 samples -> 2 steps, one per prompt of each GPU
    two = _dancegrpo(update={"step_every": "samples", "samples_per_step": 12, "prompts_per_rank": 2}).plan(0)
    steps = two.optimizer_steps(num_prompts=4)
    assert [sorted({r for b in st for r in b.rows.tolist()}) for st in steps] == [
        [*range(0, 12), *range(24, 36)],
        [*range(12, 24), *range(36, 48)],
    ]
    with pytest.raises(ValueError, match="not whole ranks"):
        two.optimizer_steps(num_prompts=3)
    # 5 does not divide 12: steps over 5, 5 and the remaining 2 samples (the official script would
    # zero the remainder's gradient at the next iteration; flowrl steps on it)
    odd = _dancegrpo(update={"step_every": "samples", "samples_per_step": 5}).plan(0).optimizer_steps(1)
    assert [len({r for b in step for r in b.rows.tolist()}) for step in odd] == [5, 5, 2]


def test_flowgrpo_trains_the_first_9_of_10_in_order_in_two_optimizer_steps():
    # config/grpo.py: timestep_fraction 0.99 -> int(10 * 0.99) = 9, indices 0..8 in order
    # (train_sd3.py); gradient_accumulation_steps = num_batches_per_epoch // 2 -> 2 optimizer
    # steps per epoch, each over half the (shuffled) samples and all 9 timesteps.
    s = _flowgrpo()
    plan = s.plan(0, torch.Generator().manual_seed(3))
    assert plan.trained_step_indices() == list(range(9))
    steps = plan.optimizer_steps(num_prompts=2)  # 48 samples
    assert len(steps) == 2
    halves = [sorted({r for b in step for r in b.rows.tolist()}) for step in steps]
    assert [len(h) for h in halves] == [24, 24] and sorted(halves[0] + halves[1]) == list(range(48))
    assert halves[0] != list(range(24))  # shuffled before the split
    assert all([b.jump for b in step] == list(range(9)) for step in steps)


def test_plan_is_frozen_and_carries_each_jumps_step_settings():
    plan = _flowgrpo(num_steps=4).plan(0)
    with pytest.raises(AttributeError):
        plan.group_size = 3  # frozen dataclass
    assert plan.jumps[0].step == StepSettings("sde", 0.7, sigma_max=plan.sigmas[1])
    assert plan.step_at(2) is plan.jumps[2].step
    d = _dancegrpo().plan(0)
    assert d.jumps[0].step.kind == "dance" and d.jumps[0].step.noise_level == 0.3 and d.score == "last_x0"
    json.dumps(d.to_json(2))


def test_uniform_plan_budget_dancegrpo_defaults():
    # T 16, G 12, 9 trained per sample -> NFE/prompt 12 * 16 = 192; rewards 12; backward 108.
    plan = _dancegrpo().plan(0)
    assert plan.budget() == {
        "nfe_per_generation": 16,
        "nfe_per_prompt": 192,
        "reward_queries_per_prompt": 12,
        "trained_steps_per_prompt": 108,
        "training_forwards_per_prompt": 108,  # one with grad per term, no views (the KL forward is a run setting)
    }
    assert [(j.start, j.stop) for j in plan.jumps] == [(i, i + 1) for i in range(16)]


def test_strided_completion_hand_worked():
    # G²RPO / E-GRPO coarse completions: one fine step, then stride g; last point -> T where missed.
    assert strided_completion(4, 16, 1) == tuple(range(4, 17))
    assert strided_completion(4, 16, 2) == (4, 5, 7, 9, 11, 13, 16)
    assert strided_completion(5, 16, 2) == (5, 6, 8, 10, 12, 14, 16)
    assert strided_completion(16, 16, 2) == (16,)  # landed on sigma 0: nothing to complete


def test_validation():
    with pytest.raises(ValueError, match="group_size"):
        UniformStepScheduler(group_size=1)
    with pytest.raises(ValueError, match="timestep_fraction"):
        UniformStepScheduler(timestep_fraction=0)
    with pytest.raises(ValueError, match="group_by"):
        UniformStepScheduler(group_by="batch")
    with pytest.raises(ValueError, match="timestep_selection"):
        UniformStepScheduler(timestep_selection="last")
    with pytest.raises(ValueError, match="unknown update keys"):
        UniformStepScheduler(update={"every": 3})
    s = UniformStepScheduler()
    with pytest.raises(ValueError, match=r"rewards \[P, 12\]"):
        s.advantages(torch.zeros(12), s.plan(0))
