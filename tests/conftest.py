import os

# Nothing in the suite may touch a hub (non-negotiable 2): set before any HF import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """The shipped tiny FLUX model, loaded once per session."""
    from flowrl.models.tiny_flux import TinyFluxModel

    return TinyFluxModel.from_pretrained()


@pytest.fixture(scope="session")
def tiny_clip():
    from flowrl.rewards.clip import TinyClipReward

    return TinyClipReward()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """A 2 x 2 smoke sweep through the sweeps machinery, run once per session and shared by the
    compare end-to-end test and the MLflow UI test: `SMOKE=1 SEEDS=0,1 METHODS=egrpo,dancegrpo
    bash sweeps/methods.sh logger.experiment_name=smoke`, into a fresh sqlite store.
    Returns (tracking uri, experiment name, working directory)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("smoke_sweep")
    uri = f"sqlite:///{work}/mlflow.db"
    env = {
        **os.environ,
        "SMOKE": "1",
        "SEEDS": "0,1",
        "METHODS": "egrpo,dancegrpo",
        "PYTHON": sys.executable,
        "MLFLOW_TRACKING_URI": uri,
    }
    proc = subprocess.run(
        ["bash", str(repo / "sweeps" / "methods.sh"), "logger.experiment_name=smoke"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return uri, "smoke", work
