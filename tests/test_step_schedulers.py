import json

import pytest
import torch

from flowrl.step_schedulers.base import group_normalize, make_sde_step
from flowrl.step_schedulers.uniform import UniformStepScheduler


def test_group_normalize_hand_worked():
    # r = [1, 2, 3, 6]: mean 3, population var = (4 + 1 + 0 + 9) / 4 = 3.5, std = 1.8708
    # -> (r - 3) / 1.8708 = [-1.0690, -0.5345, 0, 1.6036]
    adv = group_normalize(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-1.0690, -0.5345, 0.0, 1.6036]]), atol=1e-4, rtol=0)


def test_identical_rewards_give_zero_advantage_not_nan():
    # Peers' known failure: a group with identical rewards (e.g. identical noise) -> 0/0.
    adv = group_normalize(torch.full((2, 5), 0.7))
    assert torch.equal(adv, torch.zeros(2, 5))


def test_uniform_advantages_clamped():
    # One outlier in a group of 40: rewards [0]*39 + [1]: mean 0.025, population std
    # sqrt(0.025 * 0.975) = 0.156125 -> the outlier's z = 0.975 / 0.156125 = 6.245 > 5.
    s = UniformStepScheduler(group_size=40)
    r = torch.zeros(1, 40)
    r[0, -1] = 1.0
    adv = s.advantages(r)  # [P, G, T]: the final image's advantage on every step of its trajectory
    assert adv.shape == (1, 40, 16) and torch.equal(adv[..., 0], adv[..., 15])
    assert adv[0, -1, 0].item() == pytest.approx(5.0)  # clamped from 6.245
    assert adv[0, 0, 0].item() == pytest.approx(-0.025 / 0.156125, rel=1e-4)


def test_uniform_per_prompt_stats_pool_repeated_prompts():
    # Two groups share prompt "a": stats over all 4 samples [0, 2, 4, 6]: mean 3, pop std sqrt(5)
    # -> [-1.3416, -0.4472, 0.4472, 1.3416]; group "b" alone: [1, 3] -> [-1, 1].
    s = UniformStepScheduler(group_size=2, group_by="prompt")
    r = torch.tensor([[0.0, 2.0], [1.0, 3.0], [4.0, 6.0]])
    adv = s.advantages(r, ["a", "b", "a"])[..., 0]
    expected = torch.tensor([[-1.3416, -0.4472], [-1.0, 1.0], [0.4472, 1.3416]])
    torch.testing.assert_close(adv, expected, atol=1e-4, rtol=0)
    # per-group statistics instead: each row normalised alone
    s2 = UniformStepScheduler(group_size=2, group_by="group")
    torch.testing.assert_close(s2.advantages(r)[..., 0], torch.tensor([[-1.0, 1.0]] * 3))


def test_uniform_plan_budget_dancegrpo_defaults():
    # T 16, G 12, fraction 0.6 -> int(9.6) = 9 trained steps per trajectory.
    # NFE/prompt = 12 * 16 = 192; rewards = 12; backward passes = 12 * 9 = 108.
    plan = UniformStepScheduler(num_steps=16, group_size=12, timestep_fraction=0.6).plan()
    assert plan.budget() == {
        "nfe_per_generation": 16,
        "nfe_per_prompt": 192,
        "reward_queries_per_prompt": 12,
        "trained_steps_per_prompt": 108,
    }
    assert [(j.start, j.stop) for j in plan.jumps] == [(i, i + 1) for i in range(16)]
    json.dumps(plan.to_json())


def test_sample_trained_steps():
    s = UniformStepScheduler(num_steps=16, timestep_fraction=0.6)
    g = torch.Generator().manual_seed(0)
    steps = s.sample_trained_steps(g)
    assert len(steps) == 9 == len(set(steps)) and steps == sorted(steps) and all(0 <= i < 16 for i in steps)
    assert s.sample_trained_steps(torch.Generator().manual_seed(0)) == steps


def test_sde_step_kinds_dispatch():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    noise = torch.randn(2, 3)
    from flowrl.sampling import dance_sde_step, sde_step

    torch.testing.assert_close(
        make_sde_step("dance", 0.3)(x, v, 0.5, 0.4, noise=noise).mean, dance_sde_step(x, v, 0.5, 0.4, eta=0.3).mean
    )
    torch.testing.assert_close(
        make_sde_step("cps", 0.7)(x, v, 0.5, 0.4, noise=noise).mean, sde_step(x, v, 0.5, 0.4, 0.7, sde_type="cps").mean
    )
    with pytest.raises(ValueError, match="sde must be"):
        make_sde_step("ode", 0.3)


def test_validation():
    with pytest.raises(ValueError, match="group_size"):
        UniformStepScheduler(group_size=1)
    with pytest.raises(ValueError, match="timestep_fraction"):
        UniformStepScheduler(timestep_fraction=0)
    with pytest.raises(ValueError, match="group_by"):
        UniformStepScheduler(group_by="batch")
    with pytest.raises(ValueError, match=r"rewards \[P, 12\]"):
        UniformStepScheduler().advantages(torch.zeros(12))
