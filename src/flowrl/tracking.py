"""MLflow tracking of every run: params = the flattened resolved config, namespaced metrics,
artifacts (resolved config, sample grids, final weights), git commit and seed as tags.

mlflow and lightning are imported inside the functions: `import flowrl.tracking` stays cheap.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch call


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The config's uri > env MLFLOW_TRACKING_URI > sqlite:///mlflow.db (working directory).

    An explicit uri must win: mlflow.set_tracking_uri() itself writes MLFLOW_TRACKING_URI into
    os.environ, so with env first, one in-process run (tests, Hydra multirun) would leak its
    store into the next."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _to_container(cfg):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def flatten_config(cfg, prefix: str = "") -> dict[str, str]:
    """{"method.group_size": "12", "reward.weights.tiny_clip": "0.7", "list.0": ...}; values
    stringified and cut to MLflow's limit; the `hydra` node is skipped."""
    out: dict[str, str] = {}
    node = _to_container(cfg)
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if not prefix and key == "hydra":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(flatten_config(value, prefix=f"{name}."))
        else:
            text = str(value)
            out[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def run_name(cfg) -> str:
    """'dancegrpo G12 clip1e-04 a0.3 lr1e-05 s0': the method and its key hyper-parameters."""
    from omegaconf import OmegaConf

    c = OmegaConf.create(_to_container(cfg))
    parts = []
    for key, fmt in (
        ("method.name", "{}"),
        ("method.group_size", "G{}"),
        ("method.clip_eps", "clip{:.0e}"),
        ("method.noise_level", "a{:g}"),
        ("method.lr", "lr{:.0e}"),
        ("seed", "s{}"),
    ):
        value = OmegaConf.select(c, key, default=None)
        if value is not None:
            parts.append(fmt.format(value))
    return " ".join(parts) or "flowrl"


def git_commit(repo_dir: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_dirty(repo_dir: str | Path | None = None) -> bool | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=repo_dir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def build_mlflow_logger(
    experiment_name: str = "flowrl", run_name: str | None = None, tracking_uri: str | None = None, tags: dict | None = None
):
    """A Lightning MLFlowLogger on the resolved tracking uri."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(
        experiment_name=experiment_name, run_name=run_name, tracking_uri=resolve_tracking_uri(tracking_uri), tags=dict(tags or {})
    )


def log_run_metadata(logger, cfg, seed: int | None = None) -> None:
    """Params (flattened resolved config, in batches of 100), git/seed tags, resolved yaml."""
    from mlflow.entities import Param
    from omegaconf import OmegaConf

    client, run_id = logger.experiment, logger.run_id
    params = [Param(k, v) for k, v in flatten_config(cfg).items()]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
    repo = Path(__file__).resolve().parents[2]
    for key, value in (("git_commit", git_commit(repo)), ("git_dirty", git_dirty(repo)), ("seed", seed)):
        if value is not None:
            client.set_tag(run_id, key, str(value))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resolved.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(_to_container(cfg))))
        client.log_artifact(run_id, str(path), artifact_path="config")


def log_image_grid(logger, images, name: str, step: int, nrow: int = 8) -> str:
    """images [B, 3, H, W] in [0, 1] -> artifact images/{name}_step{step:06d}.png."""
    from flowrl.utils.images import save_grid

    upscale = max(1, 128 // images.shape[-1])
    with tempfile.TemporaryDirectory() as tmp:
        path = save_grid(images, Path(tmp) / f"{name}_step{step:06d}.png", nrow=nrow, upscale=upscale)
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path="images")
    return f"images/{path.name}"


def log_artifact_path(logger, path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole directory."""
    path = Path(path)
    if path.is_dir():
        logger.experiment.log_artifacts(logger.run_id, str(path), artifact_path=artifact_path)
    else:
        logger.experiment.log_artifact(logger.run_id, str(path), artifact_path=artifact_path)


def metrics_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)]
