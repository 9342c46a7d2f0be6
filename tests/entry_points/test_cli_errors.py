"""What a user with missing checkpoints sees: one line naming the file and where to get it, exit
status 2, no traceback, in seconds (before any model or heavy library is loaded)."""

import os
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (
            ["method=egrpo", "reward=hps", "model=flux_dev"],
            "FLUX.1-dev",
        ),  # the model's files are checked first (flowrl.config.schema)
        (["method=egrpo", "model=flux_dev"], "FLUX.1-dev"),
        (["method=egrpo", "model=sd35_medium"], "stable-diffusion-3.5-medium"),
        (["method=egrpo", "reward=hps"], "HPS"),
    ],
)
def test_missing_checkpoint_is_one_clear_line(tmp_path, overrides, expect):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLOWRL_MODELS": str(tmp_path / "models")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flowrl.train", *overrides, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowrl: ") and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "huggingface.co" in lines[0]
    assert elapsed < 60, elapsed  # ~4 s on an idle 2-core machine; generous for a loaded CI box
