"""`python -m flowrl.calibrate`: DenseGRPO's calibration as its own step, and training reusing its table."""

import json

import pytest

SMALL = [
    "method=densegrpo",
    "method.num_steps=3",
    "method.group_size=3",
    "method.calibration.iterations=1",
    "method.calibration.num_samples=2",
]


def test_calibrate_writes_a_table_training_can_use(make_cfg, capsys):
    from flowrl.calibrate import calibrate
    from flowrl.training.build import build_module

    path = calibrate(make_cfg(*SMALL))
    record = json.loads(path.read_text())
    assert len(record["noise_levels"]) == 3 and len(record["history"]) == 1
    # one round from psi_0 (Flow-GRPO's std_dev_t at a 0.7): every step moved by exactly eps2 = 0.01
    psi0 = record["history"][0]["noise_levels"]
    assert all(abs(abs(x - x0) - 0.01) < 1e-9 for x, x0 in zip(record["noise_levels"], psi0, strict=True))
    assert "noise levels per step" in capsys.readouterr().out
    module, _ = build_module(make_cfg(*SMALL, f"method.noise_levels_file={path}"))
    assert module.step_scheduler.noise_levels == record["noise_levels"]
    assert module.calibrate(["a red circle on a blue background"]) is None  # table given: nothing to do


def test_calibrate_refuses_methods_without_calibration(make_cfg):
    from flowrl.calibrate import calibrate
    from flowrl.config.errors import UserFacingError

    with pytest.raises(UserFacingError, match="nothing to calibrate"):
        calibrate(make_cfg("method=egrpo"))
