"""A resume whose latest checkpoint is damaged (cut short after it was written): it falls back to
the newest intact one, says so in one line, and finishes the same MLflow run; with none intact it
stops in one line, and the run's FINISHED status is left as it was."""

import subprocess
import sys

import pytest

from tests.e2e.test_faults import _cli, _client, _run

PY = sys.executable


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = subprocess.run(
        _cli(tmp_path, "damaged", 3, f"hydra.run.dir={out}", "train.checkpoint_every=1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    run_id = _run(tmp_path, "damaged").info.run_id
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_000002", "iter_000003"]
    (ckpts / "iter_000003" / "trainable.safetensors").write_bytes(b"0123456789")  # cut to 10 bytes

    resume = [PY, "-m", "flowrl.train", f"resume={out}", "train.iterations=4"]
    proc = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "flowrl: iter_000003 is damaged (trainable.safetensors: 10 bytes, written as" in text, text[-3000:]
    assert "falling back to iter_000002, the newest intact checkpoint" in text
    assert f"flowrl: resuming from iteration 2 (checkpoint {ckpts / 'iter_000002'})" in text
    assert "Traceback" not in text
    run = _client(tmp_path).get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in _client(tmp_path).get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # iteration 3 was logged by the first run and not again

    # nothing intact: one line, exit 2, and the FINISHED run stays FINISHED
    for path in ckpts.iterdir():
        (path / "trainable.safetensors").write_bytes(b"0123456789")
    proc = subprocess.run(
        [PY, "-m", "flowrl.train", f"resume={out}", "train.iterations=6"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no intact checkpoint under" in lines[0] and "10 bytes" in lines[0], proc.stderr
    assert _client(tmp_path).get_run(run_id).info.status == "FINISHED"


def test_a_failed_resume_never_rewrites_a_finished_run():
    from omegaconf import OmegaConf

    from flowrl.training.loop import _end_failed_run

    class Client:
        def __init__(self):
            self.tags, self.status = {}, None

        def set_tag(self, run_id, key, value):
            self.tags[key] = value

        def set_terminated(self, run_id, status):
            self.status = status

    class Logger:
        run_id = "r"

        def __init__(self, before):
            self.experiment, self.ended = Client(), None
            if before is not None:
                self.status_before_resume = before

        def end_run(self, status):
            self.ended = status

    cfg = OmegaConf.create({"resume": "/some/run", "paths": {"output_dir": "/nonexistent/flowrl-test"}})
    finished = Logger("FINISHED")  # reopened, then the continuation failed
    _end_failed_run(finished, cfg, RuntimeError("boom"), None, killed=False)
    assert finished.experiment.status == "FINISHED" and finished.ended is None
    assert finished.experiment.tags == {"resume_error": "RuntimeError: boom"}
    early = Logger(None)  # failed before its run was reopened: the status is not touched
    _end_failed_run(early, cfg, RuntimeError("boom"), None, killed=False)
    assert early.experiment.status is None and early.ended is None and "resume_error" in early.experiment.tags
