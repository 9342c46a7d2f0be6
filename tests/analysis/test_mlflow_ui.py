"""The MLflow UI in a real browser: a 2 x 2 smoke sweep (sweeps/methods.sh), `mlflow server` on
its store, and the experiment's runs page grouped by method (the view flowrl.compare shares),
opened in headless Chromium. Debian's `chromium` is installed by .ci/run; without it (a local
checkout) the test is skipped."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SERVER_START_S = 180  # ~14 s on an idle 2-core machine
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,900",
    "--virtual-time-budget=20000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (uvicorn + the huey consumers it spawns), then SIGKILL."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=15)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it with apt-get)")
def test_runs_grouped_by_method_in_the_mlflow_ui(smoke_sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    from flowrl.analysis import compare

    uri, experiment, work = smoke_sweep
    result = compare(experiment, out_dir=tmp_path / "cmp", tracking_uri=uri, log_summary=False)  # shares the grouped view
    assert result["keys"] == ["method.name"]
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    names = [r.info.run_name for r in MlflowClient(uri).search_runs([exp.experiment_id], "tags.sweep = 'methods'")]
    assert len(names) == 4

    port = _free_port()
    log = tmp_path / "server.log"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    with open(log, "w") as handle:
        server = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=work,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the huey workers go down with it
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(server, base, log)
        url = f"{base}/{result['ui_path']}"
        dom = _chromium(["--dump-dom", url], tmp_path / "profile")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert "Training runs" in html  # the runs page, not the GenAI traces overview (mlflow.experimentKind)
        assert "Group by: method" in html and "Group: egrpo" in html and "Group: dancegrpo" in html
        missing = [name for name in names if name not in html]
        assert not missing, f"runs not listed: {missing}"
        shots = Path(os.environ.get("FLOWRL_UI_SCREENSHOT_DIR", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        shot = _chromium([f"--screenshot={shots / 'runs-grouped-by-method.png'}", url], tmp_path / "profile2")
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert (shots / "runs-grouped-by-method.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        _stop_group(server)
    assert server.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
