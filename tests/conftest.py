import os

# Nothing in the suite may touch a hub (non-negotiable 2): set before any HF import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import checkout_state  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_cfg(tmp_path, monkeypatch):
    """The one way a test composes a config: `flowrl.config.compose.compose` (conf/<config_name>.yaml
    and Hydra overrides, as every entry point composes it), with what a run writes under tmp_path.

        cfg = make_cfg("method=dancegrpo", "train.iterations=2")
        cfg = make_cfg("per_prompt=1", config_name="sample")
        cfg = make_cfg(..., output_dir=tmp_path / "cut")      # several runs in one test, one store

    paths.output_dir is `output_dir` (default tmp_path); a train config's MLflow store
    (logger.tracking_uri) is sqlite:///<tmp_path>/mlflow.db; and the test runs in tmp_path (chdir),
    so that MLflow's artifacts (./mlruns of the working directory when an experiment is created) and
    any relative path land there too. The test's overrides come after these and win.
    `return_hydra_config=True` keeps the `hydra` node (a launcher's or sweeper's config), which
    flowrl's compose drops: Hydra's compose API on the same conf/ tree."""
    monkeypatch.chdir(tmp_path)

    def make(*overrides: str, config_name: str = "train", output_dir=None, return_hydra_config: bool = False):
        from flowrl.config.compose import CONF_DIR, compose

        base = [f"paths.output_dir={output_dir or tmp_path}"]
        if config_name == "train":
            base.append(f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db")
        if not return_hydra_config:
            return compose([*base, *overrides], config_name)
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name, overrides=[*base, *overrides], return_hydra_config=True)

    return make


@pytest.fixture(scope="session", autouse=True)
def _the_checkout_is_left_as_found():
    """`git status` (ignored and untracked files one by one) after the session is what it was before:
    a test that leaves a file in the checkout (an MLflow store, ./mlruns artifacts, a Hydra run
    dir, a stray file) or changes a tracked one fails the session here. A developer's own files
    present at the start are never blamed; what is compared and left out: tests/checkout_state.py."""
    before = checkout_state.snapshot(REPO)
    yield
    new = checkout_state.changes(before, checkout_state.snapshot(REPO))
    if new:
        pytest.fail(checkout_state.report(new), pytrace=False)


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
        ["bash", str(REPO / "sweeps" / "methods.sh"), "logger.experiment_name=smoke"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return uri, "smoke", work
