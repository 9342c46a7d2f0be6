"""`make ui`: the MLflow UI on flowrl's store, opening every experiment on its training runs.

Why this is needed: MLflow 3.17's UI chooses an experiment's page from the browser's *workflow
type* ("GenAI" or "Model training", the switch at the top of its sidebar), not from the
experiment. Its `useExperimentKind` reads the `mlflow.experimentKind` tag only while a feature
flag is off, and 3.17.2 ships that flag on; the workflow type comes from the page's
`?workflowType=` parameter, else from the browser's localStorage (`mlflow.workflowType_v1`,
written by the switch), else "genai". A browser that never touched the switch therefore opens
every experiment, tagged or not, on the GenAI overview (Traces 0, "No data available", a
"Detect Issues in Your Traces" pop-up). A `?workflowType=machine_learning` in the address does not
help for long: the landing page's links to experiments drop it.

`create_app` is an MLflow server app (the `mlflow.app` entry point `flowrl` in pyproject.toml,
served by `mlflow ui --app-name flowrl`, the way MLflow's own basic-auth app plugs in): MLflow's
server unchanged, except that its index.html first stores "Model training" as the browser's
workflow type when the browser has none. A choice made with the switch is kept, so "GenAI" is
one click away and stays chosen.

`python -m flowrl.mlflow_ui [--store URI] [--url BASE]` prints the address that opens each
experiment of a store on its runs (`make ui` prints it before it starts the server).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# MLflow's useLocalStorage({key: "mlflow.workflowType", version: 1}) stores under `${key}_v${version}`,
# JSON-encoded; "machine_learning" is the switch's "Model training".
WORKFLOW_TYPE_KEY = "mlflow.workflowType_v1"
TRAINING_RUNS = "machine_learning"
UI_URL = "http://127.0.0.1:5000"  # make ui's default HOST and PORT
DEFAULT_STORE = "sqlite:///mlflow.db"


def default_to_training_runs(index_html: str) -> str:
    """MLflow's index.html with a first script that stores "Model training" unless a choice is stored."""
    key, value = json.dumps(WORKFLOW_TYPE_KEY), json.dumps(json.dumps(TRAINING_RUNS))
    script = f"<script>try{{if(localStorage.getItem({key})===null)localStorage.setItem({key},{value})}}catch(e){{}}</script>"
    if "<head>" not in index_html:
        raise ValueError("MLflow's index.html has no <head>: its UI changed; see flowrl.mlflow_ui")
    return index_html.replace("<head>", "<head>" + script, 1)


def create_app():
    """MLflow's tracking server app, its index.html served through `default_to_training_runs`.

    Under uvicorn (`mlflow ui`'s default) the FastAPI app MLflow serves itself, which mounts the
    same Flask app; under gunicorn or waitress the Flask app (MLflow's basic-auth app does the same)."""
    import os

    from flask import Response
    from mlflow.server import app as flask_app

    mlflow_index = flask_app.view_functions["serve"]

    def index():
        page = Path(flask_app.static_folder, "index.html")
        if not page.is_file():
            return mlflow_index()  # MLflow's own "index.html not found" text
        html = default_to_training_runs(page.read_text(encoding="utf-8"))
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    flask_app.view_functions["serve"] = index
    if os.environ.get("_MLFLOW_SGI_NAME", "uvicorn") == "uvicorn":  # set by `mlflow server` / `mlflow ui`
        from mlflow.server.fastapi_app import app

        return app
    return flask_app


def experiment_urls(store: str = DEFAULT_STORE, base: str = UI_URL) -> list[tuple[str, str]]:
    """(name, address of its runs page) for each active experiment of `store`, oldest first.

    A sqlite store that does not exist yet has none (and is not created here)."""
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///") :]).is_file():
        return []
    from mlflow.tracking import MlflowClient

    experiments = MlflowClient(tracking_uri=store).search_experiments(order_by=["creation_time ASC"])
    base = base.rstrip("/")
    return [(e.name, f"{base}/#/experiments/{e.experiment_id}/runs") for e in experiments]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flowrl.mlflow_ui", description="print each experiment's runs address")
    ap.add_argument("--store", default=DEFAULT_STORE, help=f"the tracking store (default {DEFAULT_STORE})")
    ap.add_argument("--url", default=UI_URL, help=f"the UI's address (default {UI_URL})")
    args = ap.parse_args(argv)
    urls = experiment_urls(args.store, args.url)
    if not urls:
        print(f"MLflow UI at {args.url}: no experiments in {args.store} yet")
        return
    print(f"MLflow UI at {args.url}; each experiment of {args.store} on its training runs:")
    width = max(len(name) for name, _ in urls)
    for name, url in urls:
        print(f"  {name:<{width}}  {url}")


if __name__ == "__main__":
    main()
