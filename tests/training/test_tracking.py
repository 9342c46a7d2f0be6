"""flowrl.training.tracking: config -> MLflow params/tags/artifacts, on a real sqlite store in tmp_path."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from flowrl.config.compose import CONF_DIR
from flowrl.training.tracking import flatten_config, git_commit, git_dirty, resolve_tracking_uri, run_name

REPO = Path(__file__).resolve().parents[2]


def test_tracking_uri_precedence(monkeypatch):
    # explicit uri > env > default; why the explicit uri beats the env: test_logger_end_to_end.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    assert resolve_tracking_uri("sqlite:///arg.db") == "sqlite:///arg.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None) == "sqlite:///env.db"
    assert resolve_tracking_uri("sqlite:///arg.db") == "sqlite:///arg.db"


def test_flatten_config():
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "method": {"name": "dancegrpo", "group_size": 12, "step_scheduler": {"method": "${..name}", "sde": None}},
            "reward": {"weights": {"tiny_clip": 0.7, "jpeg": 0.3}},
            "model": {"_target_": "flowrl.models.tiny_flux.TinyFluxModel.from_pretrained"},
            "list": [1, "two", {"three": 3.0}],
            "empty": {},
            "hydra": {"run": {"dir": "outputs/${now:%Y}"}},  # unresolvable outside Hydra: must be dropped first
        }
    )
    assert flatten_config(cfg) == {
        "seed": "0",
        "method.name": "dancegrpo",
        "method.group_size": "12",
        "method.step_scheduler.method": "dancegrpo",
        "method.step_scheduler.sde": "None",
        "reward.weights.tiny_clip": "0.7",
        "reward.weights.jpeg": "0.3",
        "model._target_": "flowrl.models.tiny_flux.TinyFluxModel.from_pretrained",
        "list.0": "1",
        "list.1": "two",
        "list.2.three": "3.0",
        "empty": "{}",
    }
    assert flatten_config({"a": {"b": 1}}, prefix="cfg.") == {"cfg.a.b": "1"}  # plain dicts too

    flat = flatten_config({"long": "x" * 7000, "short": "y" * 6000})
    assert len(flat["long"]) == 6000 and flat["long"] == "x" * 5997 + "..."
    assert flat["short"] == "y" * 6000  # exactly at the limit: untouched


def test_run_name():
    method = {"name": "dancegrpo", "group_size": 12, "clip_eps": 1e-4, "noise_level": 0.3, "lr": 1e-5}
    assert run_name(OmegaConf.create({"method": method, "seed": 0})) == "dancegrpo G12 clip1e-04 a0.3 lr1e-05 s0"
    assert run_name({"method": {**method, "lr": 2.5e-5}, "seed": 3}) == "dancegrpo G12 clip1e-04 a0.3 lr2.5e-05 s3"
    assert run_name({"method": {"name": "flowgrpo", "noise_level": 0.7}}) == "flowgrpo a0.7"
    assert run_name({"seed": 1}) == "s1"
    assert run_name({}) == "flowrl"
    # A method's own knobs appear as its step scheduler declares them (run_name_knobs), so a
    # sweep's runs read apart: E-GRPO's tau, a fixed merge's length and its granularities,
    # G²RPO's granularities, a dense horizon; and a KL.
    # (the scheduler is found from the method config's own step_scheduler._target_)
    sched = lambda module, cls: {"_target_": f"flowrl.step_schedulers.{module}.{cls}"}  # noqa: E731
    egrpo = {
        "name": "egrpo",
        "group_size": 12,
        "tau": 2.2,
        "merge": "adaptive",
        "merge_length": 2,
        "kl_beta": 0.0,
        "step_scheduler": sched("entropy_merge", "EntropyMergeStepScheduler"),
    }
    assert run_name({"method": egrpo}) == "egrpo G12 tau2.2"
    assert run_name({"method": {**egrpo, "granularities": [1, 2]}}) == "egrpo G12 tau2.2 L1,2"
    assert run_name({"method": {**egrpo, "tau": 1.8, "merge": "fixed", "merge_length": 3}}) == "egrpo G12 tau1.8 fixed3"
    g2rpo = {"name": "g2rpo", "granularities": [1, 2], "lr": 2e-6}
    assert run_name({"method": {**g2rpo, "step_scheduler": sched("singular_stochastic", "SingularStochasticStepScheduler")}}) == (
        "g2rpo L1,2 lr2e-06"
    )
    assert run_name({"method": g2rpo}) == "g2rpo lr2e-06"  # no scheduler, no knobs: nothing keyed by method name
    dense = {
        "name": "densegrpo",
        "dense_horizon": None,
        "kl_beta": 0.04,
        "step_scheduler": sched("dense_reward", "DenseRewardStepScheduler"),
    }
    assert run_name({"method": dense}) == "densegrpo kl0.04"
    assert run_name({"method": {**dense, "dense_horizon": 3}}) == "densegrpo n3 kl0.04"
    # The lr in the name is the optimizer's: method.lr 2e-6 x train.lr_scale 5 (the tiny model's) = 1e-5.
    assert run_name({"method": {"name": "egrpo", "lr": 2e-6}, "train": {"lr_scale": 5.0}}) == "egrpo lr1e-05"


def test_git_commit_and_dirty(tmp_path):
    commit = git_commit(REPO)
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit)
    assert isinstance(git_dirty(REPO), bool)
    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None


def test_logger_end_to_end(tmp_path, monkeypatch):
    from hydra.utils import instantiate
    from mlflow.tracking import MlflowClient

    from flowrl.training.tracking import log_artifact_path, log_image_grid, log_run_metadata, metrics_history

    monkeypatch.chdir(tmp_path)  # the sqlite store puts artifacts under ./mlruns of the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after: the logger sets it (below)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = OmegaConf.create(
        {
            "seed": 7,
            "method": {"name": "flowgrpo", "group_size": 24, "clip_eps": 1e-4, "lr": 3e-4, "tag": "${.name}"},
            "wide": {f"group{g}": {f"k{k}": g * 100 + k for k in range(50)} for g in range(5)},
            "prompts": ["a red circle", "a blue square"],
            "long": "z" * 7000,
        }
    )
    n_params = 1 + 5 + 250 + 2 + 1

    logger_cfg = OmegaConf.load(Path(CONF_DIR) / "logger/mlflow.yaml")
    logger = instantiate(logger_cfg, experiment_name="study", tracking_uri=uri, run_name=run_name(cfg))  # as flowrl.train
    log_run_metadata(logger, cfg)  # seed from cfg.seed; 259 params = 3 batches
    assert os.environ["MLFLOW_TRACKING_URI"] == uri  # MLFlowLogger -> mlflow.set_tracking_uri() writes the env
    logger.log_metrics({"train/loss": 1.0, "train/reward/shapes": 0.5}, step=0)
    logger.log_metrics({"train/loss": 0.25, "train/reward/shapes": 0.75}, step=1)
    grid = log_image_grid(logger, torch.rand(4, 3, 8, 8), "val", step=1, nrow=2)
    assert grid == "images/val_step000001.png"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.pt").write_bytes(b"\0" * 16)
    log_artifact_path(logger, tmp_path / "weights", "final_model")
    client = MlflowClient(uri)
    # Lightning calls finalize("success") after every trainer.validate()/fit(): the run must stay
    # RUNNING until flowrl ends it, or a run killed after its first validation reads FINISHED.
    logger.finalize("success")
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    logger.end_run("success")

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("study")
    assert experiment is not None  # artifacts under ./mlruns of the working directory at experiment creation:
    assert experiment.artifact_location.removeprefix("file://").startswith(str(tmp_path / "mlruns"))
    run = client.get_run(logger.run_id)
    assert run.info.experiment_id == experiment.experiment_id and run.info.status == "FINISHED"
    assert run.info.run_name == "flowgrpo G24 clip1e-04 lr3e-04 s7"
    params = run.data.params
    assert len(params) == n_params
    assert params["method.tag"] == "flowgrpo" and params["wide.group4.k49"] == "449" and params["prompts.1"] == "a blue square"
    assert params["long"] == "z" * 5997 + "..."
    assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"]) and run.data.tags["git_dirty"] in ("True", "False")
    assert run.data.tags["seed"] == "7"
    # the sweep knobs as tags (the UI's group-by); this config has no tau, sweep or budget block
    assert {k: run.data.tags.get(k) for k in ("method", "group_size", "clip_eps", "tau", "sweep", "budget")} == {
        "method": "flowgrpo",
        "group_size": "24",
        "clip_eps": "0.0001",
        "tau": None,
        "sweep": None,
        "budget": None,
    }
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert metrics_history(uri, logger.run_id, "train/loss") == [(0, 1.0), (1, 0.25)]
    assert metrics_history(uri, logger.run_id, "train/reward/shapes") == [(0, 0.5), (1, 0.75)]

    listed = {a.path for top in ("config", "images", "final_model") for a in client.list_artifacts(logger.run_id, top)}
    assert listed == {"config/resolved.yaml", grid, "final_model/model.pt"}
    local = client.download_artifacts(logger.run_id, "config/resolved.yaml", str(tmp_path / "dl"))
    assert OmegaConf.to_container(OmegaConf.load(local)) == OmegaConf.to_container(cfg, resolve=True)
    png = Path(client.download_artifacts(logger.run_id, grid, str(tmp_path / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second in-process run naming its own store must land there despite the env var set above.
    other = f"sqlite:///{tmp_path}/other.db"
    from flowrl.training.tracking import build_mlflow_logger

    second = build_mlflow_logger("study", "second", other)
    second.log_metrics({"perf/nfe": 16.0}, step=0)
    second.end_run("success")
    assert metrics_history(other, second.run_id, "perf/nfe") == [(0, 16.0)]
    with pytest.raises(Exception):  # noqa: B017 - MLflow raises its own MlflowException
        MlflowClient(uri).get_run(second.run_id)


def test_import_is_cheap():
    code = "import sys, flowrl.training.tracking; print('mlflow' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == ["False", "False"]


CONCURRENT_CHILD = """
import sys, time
from pathlib import Path
import mlflow, lightning.pytorch  # imported before the start signal: the race is in store creation
from flowrl.training.tracking import build_mlflow_logger
db, ready, go = sys.argv[1:4]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.001)
logger = build_mlflow_logger("sweep", tracking_uri=f"sqlite:///{db}")
print(logger.experiment_id, logger.run_id)
"""


def test_runs_started_together_on_a_new_sqlite_store_all_succeed(tmp_path):
    # Four processes create their logger at the same instant on a store that does not exist yet,
    # as the first runs of a parallel sweep do. Without the lock around store creation MLflow's
    # migrations collide ("duplicate column name: step"): 3 or 4 of the 4 failed in every trial.
    # With it all four succeed, share one experiment and get four distinct runs.
    n = 4
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    script = tmp_path / "child.py"
    script.write_text(CONCURRENT_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, script, db, tmp_path / f"ready{i}", go],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
            assert time.monotonic() < deadline, "children did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.05)
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    failures = [err[-500:] for p, (_, err) in zip(procs, results) if p.returncode != 0]
    assert not failures, failures
    ids = [out.split() for out, _ in results]
    assert len({experiment for experiment, _ in ids}) == 1
    assert len({run for _, run in ids}) == n


def test_run_tags_read_the_sweep_knobs_from_the_config():
    from flowrl.training.tracking import run_tags

    cfg = OmegaConf.create(
        {
            "seed": 2,
            "sweep": "tau",
            "budget": {"nfe": None, "reward_queries": None, "wall_s": None},
            "train": {"iterations": 30},
            "method": {
                "name": "egrpo",
                "tau": 2.2,
                "group_size": 12,
                "clip_eps": 1e-4,
                "g": "${.group_size}",
                # the method's own tags are the knobs its step scheduler class declares (sweep_knobs)
                "step_scheduler": {"_target_": "flowrl.step_schedulers.entropy_merge.EntropyMergeStepScheduler"},
            },
        }
    )
    assert run_tags(cfg) == {
        "method": "egrpo",
        "tau": "2.2",
        "group_size": "12",
        "clip_eps": "0.0001",
        "seed": "2",
        "sweep": "tau",
        "budget": "iterations=30",  # no budget set: the run's length is its iterations
    }
    cfg.budget.nfe = 200000
    assert run_tags(cfg)["budget"] == "nfe=200000"
    cfg.budget.wall_s = 600
    assert run_tags(cfg)["budget"] == "nfe=200000,wall_s=600"
    # keys the config lacks or leaves null are left out (a method without tau, no sweep, no budget)
    assert run_tags({"method": {"name": "dancegrpo", "group_size": 12}, "sweep": None}) == {
        "method": "dancegrpo",
        "group_size": "12",
    }
    assert run_tags({}) == {}


def test_experiments_are_tagged_custom_model_development(tmp_path):
    # flowrl's experiments say in MLflow's own tag that they hold training runs, also ones created
    # before; the page MLflow 3.17's UI opens them on is make ui's (tests/analysis/test_mlflow_ui.py).
    from mlflow.tracking import MlflowClient

    from flowrl.training.tracking import build_mlflow_logger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = client.create_experiment("old", artifact_location=str(tmp_path / "a"))
    other = client.create_experiment(
        "other", artifact_location=str(tmp_path / "b"), tags={"mlflow.experimentKind": "genai_development"}
    )
    for name in ("new", "old", "other"):
        build_mlflow_logger(name, tracking_uri=uri)
    kinds = {name: client.get_experiment_by_name(name).tags.get("mlflow.experimentKind") for name in ("new", "old", "other")}
    assert kinds == {"new": "custom_model_development", "old": "custom_model_development", "other": "genai_development"}
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert other  # a kind set on purpose is kept


def test_an_unreachable_tracking_server_fails_fast_in_one_line(monkeypatch):
    # MLflow's own retry / timeout settings for the first contact (its defaults waited 257 s);
    # the environment is as it was afterwards, so the run's own requests keep MLflow's defaults
    import os
    import time

    import pytest

    from flowrl.config.errors import UserFacingError
    from flowrl.training.tracking import FIRST_CONTACT_ENV, build_mlflow_logger

    for key in FIRST_CONTACT_ENV:
        monkeypatch.delenv(key, raising=False)
    start = time.monotonic()
    with pytest.raises(UserFacingError) as err:
        build_mlflow_logger(tracking_uri="http://127.0.0.1:9")
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message and "tracking server http://127.0.0.1:9 does not answer" in message
    assert "Connection refused" in message and "logger.tracking_uri=sqlite:///mlflow.db" in message
    assert not any(key in os.environ for key in FIRST_CONTACT_ENV)
