"""The MLflow UI in a real browser: a 2 x 2 smoke sweep (sweeps/methods.sh), `make ui`'s server
on its store (`mlflow ui --app-name flowrl`), opened in headless Chromium with a fresh profile (a
browser that never chose between MLflow's "GenAI" and "Model training"):
- a click on the experiment from the landing page opens its runs, listed by name (MLflow 3.17
  alone opens its GenAI overview there: Traces 0, "No data available");
- the experiment's runs page grouped by method (the view flowrl.compare shares).
Debian's `chromium` is installed by .ci/run; without it (a local checkout) the tests are skipped."""

import json
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

from flowrl.mlflow_ui import WORKFLOW_TYPE_KEY

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("chromium") or shutil.which("chromium-browser")),
        reason="Debian's chromium is not installed (.ci/run installs it with apt-get)",
    ),
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SERVER_START_S = 180  # ~14 s on an idle 2-core machine
PAGE_S = 90  # a page's content to appear (~5 s idle)
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
]
DUMP_FLAGS = ["--virtual-time-budget=20000"]
GENAI_OVERVIEW = ("Detect Issues", "No data available")  # what MLflow 3.17 shows instead of the runs


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
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, *DUMP_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


class Browser:
    """Headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe:
    commands on the child's fd 3, replies on its fd 4, NUL-separated JSON), so that a test can
    click like a user without a websocket library or a driver."""

    def __init__(self, profile: Path):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def onto_3_and_4():  # in the child: the two pipe ends onto the fds Chromium reads and writes
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=onto_3_and_4,
            pass_fds=(3, 4, to_child, from_child),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id = b"", 0
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:  # events come in between: keep the reply to this call
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 16)
                assert chunk, "chromium closed its DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def goto(self, url: str) -> None:
        self._call("Page.navigate", session=self._session, url=url)

    def js(self, expression: str):
        result = self._call(
            "Runtime.evaluate", session=self._session, expression=expression, awaitPromise=True, returnByValue=True
        )
        return None if "exceptionDetails" in result else result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = PAGE_S):
        """The expression's value once truthy (polled), or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.3)
        return None

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


@pytest.fixture(scope="module")
def ui(smoke_sweep, tmp_path_factory):
    """`make ui`'s server (`mlflow ui ... --workers 1 --app-name flowrl`) on the smoke sweep's store, in
    its own process group; yields (base url, tracking uri, experiment name, the sweep's run names)."""
    from mlflow.tracking import MlflowClient

    uri, experiment, work = smoke_sweep
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    names = [r.info.run_name for r in MlflowClient(uri).search_runs([exp.experiment_id], "tags.sweep = 'methods'")]
    assert len(names) == 4
    port = _free_port()
    log = tmp_path_factory.mktemp("ui") / "server.log"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as handle:
        server = subprocess.Popen(
            [*command, "--app-name", "flowrl"],
            cwd=work,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the huey workers go down with it
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(server, base, log)
        yield base, uri, experiment, names
    finally:
        _stop_group(server)
    assert server.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_a_click_on_the_experiment_from_the_landing_page_opens_its_runs(ui, tmp_path):
    base, _, experiment, names = ui
    link = f"[...document.querySelectorAll('a')].find(a => a.textContent.trim() === {json.dumps(experiment)})"
    browser = Browser(tmp_path / "profile")  # fresh: no workflow type chosen
    try:
        browser.goto(f"{base}/")
        href = browser.wait_for(f"({link} || {{}}).href")
        assert href, f"the landing page lists no experiment {experiment!r}:\n{browser.js('document.body.innerText')}"
        browser.js(f"{link}.click()")
        listed = f"(t => {json.dumps(names)}.every(n => t.includes(n)))(document.body.innerText)"
        shown = browser.wait_for(listed)
        text, url = browser.js("document.body.innerText"), browser.js("location.href")
        assert shown, f"after the click on {href}: {url}\n{text[:2000]}"
        assert "/runs" in url and "workflowType=machine_learning" in url
        assert "Run Name" in text  # the runs table's header
        assert not [s for s in GENAI_OVERVIEW if s in text], text[:2000]

        # A choice made with MLflow's switch is kept: flowrl's page stores "Model training" only when none is stored.
        browser.js(f"localStorage.setItem({json.dumps(WORKFLOW_TYPE_KEY)}, JSON.stringify('genai'))")
        browser.goto(f"{base}/")
        assert browser.wait_for(f"({link} || {{}}).href"), "the landing page did not load again"
        assert browser.js(f"localStorage.getItem({json.dumps(WORKFLOW_TYPE_KEY)})") == '"genai"'
    finally:
        browser.close()
    assert browser.proc.returncode is not None


def test_runs_grouped_by_method_in_the_mlflow_ui(ui, tmp_path):
    from flowrl.analysis import compare

    base, uri, experiment, names = ui
    result = compare(experiment, out_dir=tmp_path / "cmp", tracking_uri=uri, log_summary=False)  # shares the grouped view
    assert result["keys"] == ["method.name"]
    url = f"{base}/{result['ui_path']}"
    dom = _chromium(["--dump-dom", url], tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "Run Name" in html and not [s for s in GENAI_OVERVIEW if s in html]  # the runs page, not the GenAI overview
    assert "Group by: method" in html and "Group: egrpo" in html and "Group: dancegrpo" in html
    missing = [name for name in names if name not in html]
    assert not missing, f"runs not listed: {missing}"
    shots = Path(os.environ.get("FLOWRL_UI_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = _chromium([f"--screenshot={shots / 'runs-grouped-by-method.png'}", url], tmp_path / "profile2")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert (shots / "runs-grouped-by-method.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
