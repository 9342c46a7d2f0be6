"""Faults a days-long run meets, each tried for real: a kill and a resume (bit for bit), NaN, a
failing reward, a full disk while checkpointing, a failing job and a SIGTERM inside a sweep.
(Bad configs through the real CLI: tests/config/test_config_errors.py.)"""

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.runs import SMALL as RUN_SMALL

REPO = Path(__file__).resolve().parents[2]
# the reward classes of tests/fault_helpers.py, as a subprocess finds them (the repository on its path)
HELPERS = "tests.fault_helpers"
PY = sys.executable
TIMING = ("perf/rollout_s", "perf/iteration_s", "perf/wall_total")  # the only metrics a rerun may change

# tests/runs.py's sizes, longer: 4 iterations with an evaluation every 2 (a resume has one to cross)
# and no periodic checkpoint (each test sets the one it needs)
SMALL = [
    *(a for a in RUN_SMALL if not a.startswith(("train.iterations", "trainer.val_check_interval"))),
    "train.iterations=4",
    "trainer.val_check_interval=2",
    "train.checkpoint_every=0",
]


@pytest.fixture
def run_cfg(make_cfg, tmp_path):
    """make_cfg at the small sizes for a run called `name`: its outputs in tmp_path/name, its
    MLflow experiment `name` in the test's one store (tmp_path/mlflow.db)."""

    def make(name, *overrides):
        return make_cfg(f"logger.experiment_name={name}", *SMALL, *overrides, output_dir=tmp_path / name)

    return make


def _cli(tmp_path, experiment: str, iterations: int, *extra: str, multirun: bool = False) -> list[str]:
    """`python -m flowrl.train` at the small sizes with 2 branch steps, into tmp_path's store;
    `multirun` sweeps into tmp_path/multirun, otherwise extra names the run dir."""
    return [
        PY,
        "-m",
        "flowrl.train",
        *(["-m", f"hydra.sweep.dir={tmp_path / 'multirun'}"] if multirun else []),
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.experiment_name={experiment}",
        *[a for a in SMALL if not a.startswith("train.iterations")],
        f"train.iterations={iterations}",
        "method.num_branch_steps=2",
        *extra,
    ]


def _client(tmp_path):
    import mlflow

    return mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def _run(tmp_path, name):
    client = _client(tmp_path)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])[0]


def _histories(tmp_path, name) -> dict[str, list[tuple[int, float]]]:
    client, run = _client(tmp_path), _run(tmp_path, name)
    out = {}
    for key in run.data.metrics:
        if key not in TIMING:
            out[key] = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
    return out


def _final_weights(tmp_path, name) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(glob.glob(str(tmp_path / name / "final_model" / "**" / "*.safetensors"), recursive=True)):
        out.update({f"{Path(f).name}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no final model under {tmp_path / name}"
    return out


def _wait_for_an_iteration(tmp_path, client, experiment: str, timeout: float = 240) -> None:
    """Until a run of `experiment` (written by another process) has logged its first iteration."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        exp = client.get_experiment_by_name(experiment) if (tmp_path / "mlflow.db").exists() else None
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "perf/iteration_s"):
            return
    raise AssertionError(f"no iteration of {experiment} logged in {timeout} s")


def _sigterm_at(monkeypatch, iteration: int):
    """A real SIGTERM to this process right after `iteration` (in the module's training step)."""
    from flowrl.training.module import GRPOModule

    step = GRPOModule.training_step

    def step_then_signal(self, batch, batch_idx):
        out = step(self, batch, batch_idx)
        if self.iteration == iteration:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(GRPOModule, "training_step", step_then_signal)


# ---- 1. kill and resume ----------------------------------------------------------------------

RESUME_CASES = {
    # E-GRPO, full fine-tune (the make train default, shrunk)
    "full": ["method=egrpo", "method.num_branch_steps=2"],
    # Flow-GRPO with a LoRA adapter, its KL to the disabled adapter and its EMA (0.5, every 2 steps);
    # trained on the continuous proxy: at G 3 the binary verifier often gives a group one value, and
    # Flow-GRPO's filter then drops every sample (no update, no train/loss to compare)
    "lora": [
        "method=flowgrpo",
        "reward=geneval_clip",
        "+model.lora.rank=4",
        "+model.lora.alpha=8",
        "+model.lora.target_modules=[to_q,to_k,to_v,to_out.0]",
        "method.ema.decay=0.5",
        "method.ema.every=2",
    ],
    # DenseGRPO after its calibration (psi is scheduler state), checkpoints every iteration
    "dense_calibrated": [
        "method=densegrpo",
        "reward=geneval_clip",  # continuous, as for lora: every iteration has a loss to compare
        "method.calibration.iterations=2",
        "method.calibration.num_samples=3",
        "train.checkpoint_every=1",
    ],
    # MixGRPO: the window (scheduler state) moves every iteration; DanceGRPO-style accumulation
    "mixgrpo": [
        "method=mixgrpo",
        "method.num_steps=6",
        "method.window_size=2",
        "method.iters_per_group=1",
        "method.gradient_accumulation_steps=1",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_sigterm_then_resume_equals_an_uninterrupted_run(run_cfg, tmp_path, monkeypatch, case):
    from flowrl.training.loop import train
    from flowrl.training.run_control import Preempted

    extra = RESUME_CASES[case]
    train(run_cfg("whole", *extra))
    _sigterm_at(monkeypatch, 2)
    with pytest.raises(Preempted, match="SIGTERM after iteration 2"):
        train(run_cfg("cut", *extra))
    monkeypatch.undo()
    assert _run(tmp_path, "cut").info.status == "KILLED"
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts[-1] == "iter_000002" and not any(p.endswith(".tmp") for p in ckpts)
    train(run_cfg("cut", *extra, f"resume={tmp_path / 'cut'}"))

    run = _run(tmp_path, "cut")
    assert run.info.status == "FINISHED"  # the same MLflow run, RUNNING again, then FINISHED
    whole, cut = _final_weights(tmp_path, "whole"), _final_weights(tmp_path, "cut")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole), "final weights differ"
    hw, hc = _histories(tmp_path, "whole"), _histories(tmp_path, "cut")
    assert hw.keys() == hc.keys()
    for key in hw:  # every metric, step for step and bit for bit (NaN == NaN)
        assert [(s, v if v == v else "nan") for s, v in hw[key]] == [(s, v if v == v else "nan") for s, v in hc[key]], key
    steps = [s for s, _ in hc["train/loss"]]
    assert steps == [1, 2, 3, 4]  # no duplicated metric steps


@pytest.mark.slow
def test_cli_sigterm_marks_killed_and_resume_continues_the_same_run(tmp_path):
    # The real CLI: SIGTERM while training -> the iteration finishes, a checkpoint is written, the
    # MLflow run reads KILLED; `resume=<run dir>` continues the same run to FINISHED.
    out = tmp_path / "run"
    args = _cli(tmp_path, "cli", 30, f"hydra.run.dir={out}")
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = _client(tmp_path)
    _wait_for_an_iteration(tmp_path, client, "cli")
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0, text
    assert "checkpointed, run KILLED" in text and f"resume={out}" in text, text[-2000:]
    run = _run(tmp_path, "cli")
    assert run.info.status == "KILLED"
    done = int(client.get_run(run.info.run_id).data.tags["last_checkpoint"].rsplit("_", 1)[1])
    assert 1 <= done < 30
    proc = subprocess.run(
        [PY, "-m", "flowrl.train", f"resume={out}", "train.iterations=" + str(done + 1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, done + 2))  # once each, the resumed one included


# ---- 2. numerical guards ------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_reward_skips_the_update_and_never_touches_the_weights(run_cfg, tmp_path, monkeypatch):
    from flowrl.training.loop import train
    from flowrl.training.module import GRPOModule

    # NaN in the rewards of iteration 2 only (the reward's 2nd call is that iteration's rollout:
    # the held-out evaluations use the eval rewards): its 8 optimizer steps are skipped.
    weights = {}
    step = GRPOModule.training_step

    def record(self, batch, batch_idx):
        out = step(self, batch, batch_idx)
        weights[self.iteration] = torch.nn.utils.parameters_to_vector(self.model.transformer.parameters()).detach().clone()
        return out

    monkeypatch.setattr(GRPOModule, "training_step", record)
    cfg = run_cfg(
        "nanreward",
        "method.num_branch_steps=2",
        "reward=geneval",
        f"reward._target_={HELPERS}.NaNReward",
        "+reward.nan_at=2",
        "+reward.until=3",
    )
    train(cfg)
    assert torch.equal(weights[2], weights[1])  # the NaN iteration changed nothing
    assert not torch.equal(weights[3], weights[2])  # training went on
    h = _histories(tmp_path, "nanreward")
    assert dict(h["train/skipped_updates"])[2] == 2 and dict(h["train/skipped/reward"])[2] == 2
    assert dict(h["train/skipped_updates"])[4] == 2  # no more after it
    run = _run(tmp_path, "nanreward")
    assert run.info.status == "FINISHED" and run.data.tags["last_skip_cause"] == "reward (iteration 2)"


@pytest.mark.slow
def test_nan_gradients_skip_and_too_many_end_the_run_failed(run_cfg, tmp_path, monkeypatch):
    from flowrl.config.errors import TrainingDiverged

    # A model whose training forward returns NaN (rollouts stay finite): every update is skipped,
    # cause log_prob; after train.max_consecutive_skips (3) iterations in a row with skipped updates
    # the run stops FAILED, its last checkpoint kept.
    from flowrl.models.tiny_flux import TinyFluxModel
    from flowrl.training.loop import train

    velocity = TinyFluxModel.velocity

    def nan_when_training(self, x, sigma, embeds):
        v = velocity(self, x, sigma, embeds)
        return v * float("nan") if torch.is_grad_enabled() else v

    monkeypatch.setattr(TinyFluxModel, "velocity", nan_when_training)
    cfg = run_cfg("diverge", "method.num_branch_steps=2", "train.max_consecutive_skips=3", "train.checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match=r"3 consecutive iterations with updates skipped .*last: log_prob in iteration 3"):
        train(cfg)
    run = _run(tmp_path, "diverge")
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert (tmp_path / "diverge" / "checkpoints" / "iter_000002").is_dir()  # kept
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "diverge" / "checkpoints" / "iter_000002" / "trainable.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())


@pytest.mark.slow
def test_failing_reward_ends_failed_with_one_line_and_keeps_the_checkpoint(tmp_path):
    # The reward's 3rd call (iteration 3's rollout) raises: the CLI prints one line, exits 2, the
    # run is FAILED with the error as a tag, and the checkpoint of iteration 2 is there.
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = _cli(
        tmp_path,
        "reward",
        4,
        f"hydra.run.dir={out}",
        "train.checkpoint_every=1",
        "reward=geneval",
        f"reward._target_={HELPERS}.FailingReward",
        "+reward.fail_at=3",
    )
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "flowrl: reward 'geneval' failed in iteration 3: ConnectionError: reward server unreachable", proc.stderr[
        -2000:
    ]
    assert "Traceback" not in proc.stderr
    run = _run(tmp_path, "reward")
    assert run.info.status == "FAILED" and "reward server unreachable" in run.data.tags["error"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_000001", "iter_000002"]


@pytest.mark.slow
def test_full_disk_while_checkpointing_keeps_the_last_good_one(run_cfg, tmp_path, monkeypatch):
    import flowrl.training.checkpoint as ck
    from flowrl.training.loop import train

    # The 2nd checkpoint write hits ENOSPC: the run goes on, reports it (stderr and a tag), the
    # 1st checkpoint is intact, no half-written one is left, and the 3rd and 4th are written.
    real, calls = ck.torch.save, []

    def save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(ck.torch, "save", save)
    train(run_cfg("disk", "method.num_branch_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=5"))
    names = sorted(p.name for p in (tmp_path / "disk" / "checkpoints").iterdir())
    assert names == ["iter_000001", "iter_000003", "iter_000004"]
    run = _run(tmp_path, "disk")
    assert run.info.status == "FINISHED"
    assert "after iteration 2 failed" in run.data.tags["checkpoint_error"] and "iter_000001" in run.data.tags["checkpoint_error"]


# ---- 3. sweeps that survive -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_failing_job_is_failed_and_the_others_finish(tmp_path, launcher):
    # Two jobs of one multirun; the second's reward raises in its 2nd iteration (fault_helpers). The
    # job is FAILED in MLflow with its error, the other one FINISHED, the sweep's exit status non-zero.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = _cli(
        tmp_path,
        "sweep",
        2,
        "reward=geneval",
        f"reward._target_={HELPERS}.FailingReward",
        "+reward.fail_at=1000000,2",  # job 0 never fails, job 1 in its 2nd iteration
        multirun=True,
    )
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    status = sorted(r.info.status for r in runs)
    assert status == ["FAILED", "FINISHED"], (status, proc.stderr[-3000:])
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "reward server unreachable" in failed.data.tags["error"]
    assert proc.returncode != 0  # the sweep reports that a job failed


@pytest.mark.slow
def test_sigterm_during_a_sweep_checkpoints_and_kills_the_running_job(tmp_path):
    args = _cli(tmp_path, "sweep", 40, "seed=0,1", multirun=True)
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = _client(tmp_path)
    _wait_for_an_iteration(tmp_path, client, "sweep")
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=240)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"], text[-2000:]  # the second job never started
    assert list((tmp_path / "multirun" / "0" / "checkpoints").iterdir()), text[-2000:]
