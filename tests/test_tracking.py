import subprocess
import sys

import torch
from omegaconf import OmegaConf

from flowrl.tracking import flatten_config, git_commit, resolve_tracking_uri, run_name


def test_tracking_uri_precedence(monkeypatch):
    # config > env > default: mlflow.set_tracking_uri() writes the env var itself, so env first
    # would leak one in-process run's store into the next.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(None) == "sqlite:///env.db"
    assert resolve_tracking_uri("sqlite:///cfg.db") == "sqlite:///cfg.db"


def test_flatten_config():
    cfg = OmegaConf.create(
        {
            "method": {"name": "egrpo", "group_size": 12, "tag": "${method.name}"},
            "xs": [1, 2],
            "long": "x" * 7000,
            "hydra": {"a": 1},
            "empty": {},
        }
    )
    flat = flatten_config(cfg)
    assert flat["method.name"] == "egrpo" and flat["method.group_size"] == "12"
    assert flat["method.tag"] == "egrpo"  # interpolation resolved
    assert flat["xs.0"] == "1" and flat["xs.1"] == "2"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")
    assert not any(k.startswith("hydra") for k in flat) and flat["empty"] == "{}"


def test_run_name():
    cfg = {"method": {"name": "dancegrpo", "group_size": 12, "clip_eps": 1e-4, "noise_level": 0.3, "lr": 1e-5}, "seed": 0}
    assert run_name(cfg) == "dancegrpo G12 clip1e-04 a0.3 lr1e-05 s0"
    assert run_name({"method": {"name": "g2rpo"}}) == "g2rpo"


def test_git_commit(tmp_path):
    from pathlib import Path

    commit = git_commit(Path(__file__).resolve().parents[1])
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)  # None if run from an export
    assert git_commit(tmp_path) is None


def test_logger_end_to_end(tmp_path):
    from mlflow.tracking import MlflowClient

    from flowrl.tracking import build_mlflow_logger, log_image_grid, log_run_metadata, metrics_history

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = OmegaConf.create({"method": {"name": "flowgrpo"}, "wide": {f"k{i}": i for i in range(250)}})
    logger = build_mlflow_logger("study", "my run", uri)
    log_run_metadata(logger, cfg, seed=3)  # 251 params: more than one MLflow batch of 100
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.log_metrics({"train/loss": 0.5}, step=1)
    assert log_image_grid(logger, torch.rand(4, 3, 8, 8), "val", step=1) == "images/val_step000001.png"
    logger.finalize("success")
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "my run" and len(run.data.params) == 251 and run.data.params["wide.k249"] == "249"
    assert run.data.tags["seed"] == "3"
    assert metrics_history(uri, logger.run_id, "train/loss") == [(0, 1.0), (1, 0.5)]
    paths = {a.path for d in ("config", "images") for a in client.list_artifacts(logger.run_id, d)}
    assert paths == {"config/resolved.yaml", "images/val_step000001.png"}
    local = client.download_artifacts(logger.run_id, "config/resolved.yaml", str(tmp_path))
    assert OmegaConf.load(local).wide.k7 == 7


def test_import_is_cheap():
    code = "import sys, flowrl.tracking; print('mlflow' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
