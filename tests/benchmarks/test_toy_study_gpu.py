"""The toy study's one-call GPU version (benchmarks/toy_study_gpu.sh), dry-run on the CPU so that it
works the first time a device is lent: the sweep, the deadline watchdog, compare's paired table;
and the wheels the device image lacks are all pinned by the lock."""

import csv
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "toy_study_gpu.sh"


def _run(tmp_path, **env):
    full = os.environ | {"DRY_RUN": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")} | env
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dry_run_writes_the_paired_table(tmp_path):
    start = time.monotonic()
    done = _run(tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # the call returns when the sweep and compare end, not at the watchdog's 300 s deadline (its
    # sleep once held the script's stdout open, and this test took the full 300 s every time)
    assert time.monotonic() - start < 290
    out = tmp_path / "out"
    with open(out / "paired.csv") as f:
        rows = list(csv.DictReader(f))
    # E-GRPO against the DanceGRPO baseline, paired by seed (one seed in the dry run)
    assert [(r["group"], r["baseline"], r["n_pairs"]) for r in rows] == [("egrpo", "dancegrpo", "1")]
    assert rows[0]["metric"] == "val/category/geneval/overall"
    assert {"table.md", "mlflow.db", "sweep.log", "final.png"} <= {p.name for p in out.iterdir()}
    # everything else a run writes (Hydra's folders, MLflow's artifacts) stays out of the results
    assert not (out / "multirun").exists() and not (out / "mlruns").exists()
    assert "2 runs finished" in done.stdout


def test_the_deadline_stops_the_sweep(tmp_path):
    # a deadline shorter than one run: the watchdog's SIGTERM reaches the whole sweep, nothing
    # finishes, and compare says so in one line (the script fails, its log says why)
    done = _run(tmp_path, DEADLINE_S="2")
    assert done.returncode != 0
    assert "deadline 2s: sweep stopped" in (tmp_path / "out" / "sweep.log").read_text()
    assert "0 runs finished" in done.stdout


def test_every_gpu_wheel_is_pinned_by_the_lock():
    lock = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    names = [
        re.sub(r"[-_.]+", "-", line.strip()).lower()
        for line in (ROOT / "benchmarks" / "gpu_wheels.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert names and not [n for n in names if n not in lock]
    assert len(names) == len(set(names))
