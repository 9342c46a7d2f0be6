"""flowrl.contract.plan: the update schedule a plan lays out, the step plan's validation, and the
per-jump step settings (which SDE step a jump takes), worked by hand."""

import pytest
import torch

from flowrl.contract import Jump, StepPlan, StepSettings, UpdateSchedule


def test_update_schedule_per_jump_and_validation():
    # E-GRPO / G²RPO (grpo_trainer.py, train_g2rpo_hps.py): one optimizer step per trained jump
    jumps = tuple(Jump(i, i + 1) for i in range(4))
    plan = StepPlan("x", (1.0, 0.75, 0.5, 0.25, 0.0), 2, "sde", jumps, UpdateSchedule(trained=(0, 2), step_every="jump"), False)
    steps = plan.optimizer_steps(num_prompts=3)
    assert [[b.jump for b in s] for s in steps] == [[0], [2]] and steps[0][0].rows.tolist() == list(range(6))
    first = plan.first_step_rows(3)
    assert list(first) == [0] and torch.equal(first[0], steps[0][0].rows)
    with pytest.raises(ValueError, match="exactly one of"):
        UpdateSchedule()
    with pytest.raises(ValueError, match="step_every"):
        UpdateSchedule(trained=(0,), step_every="epoch")
    with pytest.raises(ValueError, match="samples_per_step"):
        UpdateSchedule(trained=(0,), step_every="samples")
    with pytest.raises(ValueError, match="index the plan"):
        StepPlan("x", (1.0, 0.5, 0.0), 2, "sde", jumps[:2], UpdateSchedule(trained=(3,)), False)


def test_step_settings_dispatch_and_validation():
    from flowrl.sampling import dance_sde_step, ode_step, sde_step

    x, v, noise = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(
        StepSettings("dance", 0.3)(x, v, 0.5, 0.4, noise=noise).mean, dance_sde_step(x, v, 0.5, 0.4, eta=0.3).mean
    )
    cps = StepSettings("cps", 0.7, log_prob="mse")(x, v, 0.5, 0.4, noise=noise)
    torch.testing.assert_close(cps.mean, sde_step(x, v, 0.5, 0.4, 0.7, sde_type="cps").mean)
    assert torch.equal(StepSettings("ode")(x, v, 0.5, 0.4).prev_sample, ode_step(x, v, 0.5, 0.4))
    with pytest.raises(ValueError, match="step kind"):
        StepSettings("euler")
    with pytest.raises(ValueError, match="std_dev_t goes with kind 'sde'"):
        StepSettings("dance", 0.3, std_dev_t=0.5)
