"""`python -m flowrl.calibrate`: DenseGRPO's calibration as its own step, and training reusing its table."""

import json

import pytest
from hydra import compose, initialize_config_dir

from flowrl.config.compose import CONF_DIR

SMALL = [
    "method=densegrpo",
    "method.num_steps=3",
    "method.group_size=3",
    "method.calibration.iterations=1",
    "method.calibration.num_samples=2",
]


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_calibrate_writes_a_table_training_can_use(tmp_path, capsys):
    from flowrl.calibrate import calibrate
    from flowrl.training.build import build_module

    path = calibrate(_cfg(tmp_path, *SMALL))
    record = json.loads(path.read_text())
    assert len(record["noise_levels"]) == 3 and len(record["history"]) == 1
    # one round from psi_0 (Flow-GRPO's std_dev_t at a 0.7): every step moved by exactly eps2 = 0.01
    psi0 = record["history"][0]["noise_levels"]
    assert all(abs(abs(x - x0) - 0.01) < 1e-9 for x, x0 in zip(record["noise_levels"], psi0, strict=True))
    assert "noise levels per step" in capsys.readouterr().out
    module, _ = build_module(_cfg(tmp_path, *SMALL, f"method.noise_levels_file={path}"))
    assert module.step_scheduler.noise_levels == record["noise_levels"]
    assert module.calibrate(["a red circle on a blue background"]) is None  # table given: nothing to do


def test_calibrate_refuses_methods_without_calibration(tmp_path):
    from flowrl.calibrate import calibrate
    from flowrl.config.errors import UserFacingError

    with pytest.raises(UserFacingError, match="nothing to calibrate"):
        calibrate(_cfg(tmp_path, "method=egrpo"))
