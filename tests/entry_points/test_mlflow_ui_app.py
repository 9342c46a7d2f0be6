"""`make ui`'s MLflow app (flowrl.mlflow_ui) without a browser: the index.html it serves, the
entry point `mlflow ui --app-name flowrl` finds, the Makefile's recipe and the runs addresses it
prints. tests/analysis/test_mlflow_ui.py clicks through the served UI in Chromium."""

import importlib.metadata
import re
from pathlib import Path

from flowrl.mlflow_ui import TRAINING_RUNS, WORKFLOW_TYPE_KEY, create_app, default_to_training_runs, main

REPO = Path(__file__).resolve().parents[2]


def test_index_html_stores_model_training_unless_the_browser_chose(monkeypatch):
    from mlflow.server import app as flask_app

    monkeypatch.setitem(flask_app.view_functions, "serve", flask_app.view_functions["serve"])  # restored after
    monkeypatch.setenv("_MLFLOW_SGI_NAME", "waitress")  # the Flask app itself; uvicorn's wraps the same one
    app = create_app()
    assert app is flask_app
    response = app.test_client().get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    head = html.split("<head>", 1)[1]
    assert head.startswith("<script>")  # before MLflow's own bundle reads the stored choice
    assert f'localStorage.getItem("{WORKFLOW_TYPE_KEY}")===null' in head  # a choice made with the switch is kept
    assert f'localStorage.setItem("{WORKFLOW_TYPE_KEY}","\\"{TRAINING_RUNS}\\"")' in head
    assert "main." in html and html.count("<script>") == 1
    assert response.headers["Cache-Control"] == "no-cache"


def test_the_stored_key_is_the_one_mlflow_reads():
    """The pinned MLflow's bundle keeps the workflow type under useLocalStorage({key:"mlflow.workflowType",
    version:1}) (stored as `mlflow.workflowType_v1`), "machine_learning" being "Model training":
    an MLflow whose UI renamed either fails here, not silently in a browser."""
    import mlflow.server

    static = Path(mlflow.server.app.static_folder, "static", "js")
    bundle = next(static.glob("main.*.js")).read_text(encoding="utf-8")
    key, version = re.fullmatch(r"(.+)_v(\d+)", WORKFLOW_TYPE_KEY).groups()
    assert f'key:"{key}",version:{version}' in bundle
    assert f'MACHINE_LEARNING="{TRAINING_RUNS}"' in bundle
    assert "getItem(" in default_to_training_runs("<html><head></head></html>")


def test_make_ui_serves_the_flowrl_app_and_prints_the_runs_addresses():
    entry = {e.name: e.value for e in importlib.metadata.entry_points(group="mlflow.app")}
    assert entry.get("flowrl") == "flowrl.mlflow_ui:create_app"  # `pip install -e .` registers it
    recipe = re.search(r"^ui:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert "-m flowrl.mlflow_ui --store $(STORE)" in recipe
    assert "mlflow ui --backend-store-uri $(STORE)" in recipe and "--app-name flowrl" in recipe


def test_each_experiment_is_printed_with_its_runs_address(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flowrl.training.tracking import ensure_experiment

    monkeypatch.chdir(tmp_path)  # an experiment's default artifact location is ./mlruns
    missing = tmp_path / "none.db"
    main(["--store", f"sqlite:///{missing}"])
    assert "no experiments" in capsys.readouterr().out
    assert not missing.exists()  # printing does not create a store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    ids = {name: ensure_experiment(client, name) for name in ("flowrl", "toy-methods")}
    main(["--store", uri, "--url", "http://127.0.0.1:8080/"])
    out = capsys.readouterr().out
    for name, experiment_id in ids.items():
        assert re.search(rf"^  {re.escape(name)} +http://127\.0\.0\.1:8080/#/experiments/{experiment_id}/runs$", out, re.M)
