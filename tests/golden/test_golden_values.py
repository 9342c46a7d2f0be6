"""Golden values (torchtune's recipe tests): one iteration of every method at a fixed seed on the
shipped tiny model, its rewards, advantages, loss and first-step ratio pinned in golden_values.json.

What they catch: any change to what a method computes (sampler, noise order, reward, advantage
normalisation, loss, optimizer-step layout), intended or not. The independent reference loops
(tests/reference, tests/engine/test_parity.py) say whether the engine is right; these say that it
did not move. An intended change regenerates the file in the same commit, and the message says why:

    .venv/bin/python -m tests.golden.test_golden_values     # rewrites golden_values.json
    .venv/bin/python -m tests.golden.test_golden_values awm  # rewrites one method's entry (a new variant)

Sizes: each method's `smoke=true` shrink (its step scheduler's small_overrides: fewer steps, a
smaller group; structure kept), 2 prompts, one iteration, 1 thread (the sums' order is fixed);
the evaluations before / after training at one prompt and one step (not pinned, not the point).
Tolerance: relative 1e-4 (float32 on one CPU type; a BLAS or thread-count change moves the last
digits, not the fourth).

Recorded with the tiny model's attention in fp32 (`model.attention`, the default since 2026-12-06's
seventh session). The values before it are those of `model.attention=autocast`: when the file was
regenerated for that change, all 11 methods still matched the old file under autocast."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("golden_values.json")
METHODS = (
    "awm",
    "branchgrpo",
    "dancegrpo",
    "densegrpo",
    "diffusionnft",
    "egrpo",
    "flowgrpo",
    "g2rpo",
    "grpo_guard",
    "mixgrpo",
    "tempflow_grpo",
)
# what is pinned: the iteration's metrics (flowrl.training.metrics / flowrl.engine.loss)
KEYS = (
    "train/reward/geneval_clip",
    "train/reward_std",
    "train/adv_std",
    "train/adv_abs_mean",
    "train/loss",
    "train/policy_loss",
    "train/ratio_mean",
    "train/first_step_ratio_mean",
    "perf/nfe",
    "perf/optimizer_steps",
)
OVERRIDES = [
    "smoke=true",
    "seed=7",
    "reward=geneval_clip",  # continuous: a binary verifier at G 3 often gives a group one value (zero advantages)
    "train.iterations=1",
    "train.prompts_per_step=2",
    # the lr the values were recorded at (method lr x 5), pinned: make train's default lr_scale is
    # a measured choice that may move, the methods' computation is what these values pin
    "train.lr_scale=5",
    "val.max_prompts=1",
    "val.num_steps=1",
    "val.samples_per_prompt=1",
    "val.grid_prompts=0",
    "logger.experiment_name=golden",
]


def one_iteration(method: str, workdir: Path) -> dict[str, float]:
    """The pinned metrics of one iteration of `method` (a run in its own store under workdir)."""
    import os

    import torch
    from mlflow.tracking import MlflowClient

    from flowrl.config.compose import compose
    from flowrl.training.loop import train

    torch.set_num_threads(1)
    os.chdir(workdir)  # MLflow's ./mlruns
    uri = f"sqlite:///{workdir}/mlflow.db"
    train(compose([f"method={method}", f"paths.output_dir={workdir}", f"logger.tracking_uri={uri}", *OVERRIDES]))
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("golden").experiment_id])
    return {k: run.data.metrics[k] for k in KEYS if k in run.data.metrics}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_one_iteration_matches_its_golden_values(method, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    golden = json.loads(GOLDEN.read_text())[method]
    got = one_iteration(method, tmp_path)
    assert set(got) == set(golden), "the pinned keys changed: regenerate (see the module docstring)"
    for key, want in golden.items():
        if math.isnan(want):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want, rel=1e-4, abs=1e-7), f"{method} {key}: {got[key]!r} != golden {want!r}"


def test_golden_file_covers_every_method():
    from flowrl.config.compose import config_options

    assert sorted(json.loads(GOLDEN.read_text())) == sorted(config_options("method")) == sorted(METHODS)


if __name__ == "__main__":  # regenerate (all, or the methods named on the command line)
    import sys
    import tempfile

    values = json.loads(GOLDEN.read_text()) if sys.argv[1:] else {}
    for m in sys.argv[1:] or METHODS:
        with tempfile.TemporaryDirectory() as d:
            values[m] = one_iteration(m, Path(d))
            print(m, values[m])
    GOLDEN.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
