"""Preemption under DDP (2 CPU processes, gloo), through the real command line: a SIGTERM to the
process group (what SLURM, `timeout` and `kill -TERM -PGID` send) or to one rank stops every rank
after the same iteration, rank 0 writes the checkpoint, the MLflow run ends KILLED, every process
exits, and one line is printed, no traceback; the resumed run finishes in the same MLflow run with
the final weights of an uninterrupted DDP run, bit for bit; a second SIGTERM while the checkpoint is
written stops at once and leaves the earlier checkpoints as they were."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.test_faults import _client, _final_weights, _run, _wait_for_an_iteration

HELPER = Path(__file__).resolve().parents[1] / "ddp_preempt.py"  # the CLI with signal hooks
REPO = Path(__file__).resolve().parents[2]
DDP = [
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "train.prompts_per_step=1",
    "method=egrpo",
    "method.group_size=3",
    "method.num_steps=4",
    "method.num_branch_steps=2",
    "val.samples_per_prompt=1",
    "val.num_steps=2",
    "trainer.val_check_interval=100",
]


def _start(tmp_path, name: str, iterations: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """The DDP run `name` (run dir tmp_path/name, MLflow experiment `name`) in a process group of
    its own, as a batch system starts a job."""
    args = [
        sys.executable,
        str(HELPER),
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logger.experiment_name={name}",
        f"hydra.run.dir={tmp_path / name}",
        *DDP,
        f"train.iterations={iterations}",
        *extra,
    ]
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        args, cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    text, _ = proc.communicate(timeout=timeout)
    return text


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _assert_one_line_no_traceback(text: str, expected: str) -> None:
    # flowrl's lines, but the run's header (flowrl.training.console: "flowrl: method=... | ...")
    lines = [ln for ln in text.splitlines() if ln.startswith("flowrl:") and not ln.startswith("flowrl: method=")]
    assert len(lines) == 1 and expected in lines[0], text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_every_rank_after_one_iteration(tmp_path):
    proc = _start(tmp_path, "group", 400)
    _wait_for_an_iteration(tmp_path, _client(tmp_path), "group", timeout=400)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    text = _finish(proc, timeout=240)
    took = time.monotonic() - sent
    deadline = time.monotonic() + 30
    while not _group_gone(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _group_gone(proc.pid), "a rank is still running"
    print(f"SIGTERM to exit under DDP (2 gloo ranks): {took:.1f} s")
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    _assert_one_line_no_traceback(text, "checkpointed, run KILLED")
    assert _run(tmp_path, "group").info.status == "KILLED"
    ckpts = _checkpoints(tmp_path / "group")
    assert (
        len(ckpts) == 1
        and not ckpts[0].endswith(".tmp")
        and (tmp_path / "group" / "checkpoints" / ckpts[0] / "state.json").is_file()
    )
    # one iteration (about a second here), the checkpoint write and the processes' exit
    assert took < 120, f"{took:.0f} s from SIGTERM to exit"


@pytest.mark.slow
def test_resume_after_a_group_sigterm_equals_an_uninterrupted_ddp_run(tmp_path):
    whole = _start(tmp_path, "whole", 4)
    text = _finish(whole)
    assert whole.returncode == 0, text[-3000:]
    cut = _start(tmp_path, "cut", 4, env={"FLOWRL_TEST_SIGTERM": "group", "FLOWRL_TEST_SIGTERM_AT": "2"})
    text = _finish(cut)
    assert cut.returncode == 128 + signal.SIGTERM, text[-3000:]
    _assert_one_line_no_traceback(text, "SIGTERM after iteration 2: checkpointed, run KILLED")
    killed = _run(tmp_path, "cut")
    assert killed.info.status == "KILLED" and _checkpoints(tmp_path / "cut") == ["iter_000002"]

    resume = subprocess.run(
        [sys.executable, str(HELPER), f"resume={tmp_path / 'cut'}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    run = _run(tmp_path, "cut")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in _client(tmp_path).get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # once each
    a, b = _final_weights(tmp_path, "whole"), _final_weights(tmp_path, "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "final weights differ"


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_them_all(tmp_path):
    proc = _start(tmp_path, "one", 4, env={"FLOWRL_TEST_SIGTERM": "rank1", "FLOWRL_TEST_SIGTERM_AT": "2"})
    text = _finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    _assert_one_line_no_traceback(text, "a signal to another rank after iteration 2: checkpointed, run KILLED")
    assert _run(tmp_path, "one").info.status == "KILLED"
    assert _checkpoints(tmp_path / "one") == ["iter_000002"]
    assert _group_gone(proc.pid)


@pytest.mark.slow
def test_a_second_sigterm_while_writing_stops_at_once_and_keeps_the_earlier_checkpoints(tmp_path):
    env = {"FLOWRL_TEST_SIGTERM": "group", "FLOWRL_TEST_SIGTERM_AT": "3", "FLOWRL_TEST_SECOND_SIGTERM": "1"}
    started = time.monotonic()
    proc = _start(tmp_path, "twice", 6, "train.checkpoint_every=1", env=env)
    text = _finish(proc)
    assert time.monotonic() - started < 400  # not the 60 s sleep the second signal cut short, nor a hang
    assert proc.returncode != 0, text[-3000:]
    _assert_one_line_no_traceback(text, "a second SIGTERM: stopped at once, run KILLED")
    assert _run(tmp_path, "twice").info.status == "KILLED"
    # the checkpoint of iteration 3 was abandoned (its .tmp folder removed); 1 and 2 stand
    assert _checkpoints(tmp_path / "twice") == ["iter_000001", "iter_000002"]
    assert _group_gone(proc.pid)
