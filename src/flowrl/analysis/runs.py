"""MLflow I/O for a comparison: the runs of an experiment, their metric histories, the values
per run that the tables and plots need, and the summary run that holds a comparison's files.

The runs (params, latest metrics, tags) come from one `mlflow.search_runs` call, a pandas frame
that MLflow pages for us; metric histories, which a search does not return, from the client.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager

from flowrl.analysis.stats import as_float

GROUND_TRUTH = "val/reward/shapes"
NFE_METRIC = "val/nfe_total"  # logged by training with every held-out evaluation
SUMMARY_TAG = "flowrl.summary"
SUMMARY_RUN_NAME = "compare"
_LIST_ITEM = re.compile(r"^(.+)\.(\d+)$")
_TRACKING_ENV = "MLFLOW_TRACKING_URI"


def get_client(tracking_uri: str | None = None):
    """An MlflowClient on `tracking_uri`, else env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    from mlflow.tracking import MlflowClient

    from flowrl.training.tracking import resolve_tracking_uri

    return MlflowClient(resolve_tracking_uri(tracking_uri))


def get_experiment(client, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise SystemExit(f"flowrl.compare: no MLflow experiment named {name!r}")
    return exp


@contextmanager
def _searching(tracking_uri: str):
    """`mlflow.search_runs` reads the process-wide tracking URI, and `mlflow.set_tracking_uri`
    writes it into os.environ as well. Both are put back afterwards: a comparison run in-process
    (a test, a notebook) must not move later runs that follow the environment to its store."""
    import mlflow

    env = os.environ.get(_TRACKING_ENV)
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(previous)
        if env is None:
            os.environ.pop(_TRACKING_ENV, None)
        else:
            os.environ[_TRACKING_ENV] = env


def collapse_lists(params: dict[str, str]) -> dict[str, str]:
    """{'method.x.0': '1', 'method.x.1': '2'} -> {'method.x': '[1, 2]'}.

    flowrl.training.tracking flattens a list into one param per item; a swept list must compare
    as one value."""
    items: dict[str, dict[int, str]] = {}
    out = {}
    for key, value in params.items():
        m = _LIST_ITEM.match(key)
        if m and m.group(1) not in params:
            items.setdefault(m.group(1), {})[int(m.group(2))] = value
        else:
            out[key] = value
    for prefix, by_index in items.items():
        if sorted(by_index) == list(range(len(by_index))):
            out[prefix] = "[" + ", ".join(by_index[i] for i in range(len(by_index))) + "]"
        else:  # not a list after all (a dict with numeric keys): keep the items
            out.update({f"{prefix}.{i}": v for i, v in by_index.items()})
    return out


def load_runs(client, experiment: str):
    """(experiment, DataFrame of every run but summary runs, oldest first).

    Columns: run_id, run (name), status, seed (the param, else the tag), `params.<key>` (lists
    collapsed), `metrics.<key>` (the latest value, as MLflow's search returns it), `tags.<key>`."""
    import pandas as pd

    exp = get_experiment(client, experiment)
    with _searching(client.tracking_uri) as mlflow:
        found = mlflow.search_runs(
            experiment_ids=[exp.experiment_id], order_by=["attributes.start_time ASC"], output_format="pandas"
        )
    if f"tags.{SUMMARY_TAG}" in found.columns:
        found = found[found[f"tags.{SUMMARY_TAG}"] != "true"]
    found = found.reset_index(drop=True)
    params = _collapsed_params(found)
    runs = pd.DataFrame({"run_id": found["run_id"], "run": found.get("tags.mlflow.runName"), "status": found["status"]})
    runs["seed"] = params["params.seed"] if "params.seed" in params.columns else pd.Series(None, index=found.index, dtype=object)
    if "tags.seed" in found.columns:
        runs["seed"] = runs["seed"].fillna(found["tags.seed"])
    rest = found[[c for c in found.columns if c.startswith(("metrics.", "tags."))]]
    return exp, pd.concat([runs, params, rest], axis=1)


def _collapsed_params(found):
    """The `params.*` columns of a search, lists collapsed per run (see collapse_lists); a run
    lacks a param where the frame holds a missing value."""
    import pandas as pd

    cols = [c for c in found.columns if c.startswith("params.")]
    rows = [
        collapse_lists({k.removeprefix("params."): v for k, v in zip(cols, values) if not pd.isna(v)})
        for values in found[cols].itertuples(index=False)
    ]
    return pd.DataFrame(rows, index=found.index).add_prefix("params.")


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """[(step, value)] by step; a step logged twice keeps its last value."""
    by_step = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value
    return sorted(by_step.items())


def trained_reward(row) -> str | None:
    """The name of the reward a run was trained on: its `reward.name` param if it has one, else
    the name of its `train/reward/<name>` metric (for a combined reward, the part with the largest
    `reward.weights.<name>`)."""
    name = row.get("params.reward.name")
    if isinstance(name, str) and name:
        return name
    names = sorted(c.removeprefix("metrics.train/reward/") for c in row.index if c.startswith("metrics.train/reward/"))
    names = [n for n in names if as_float(row.get(f"metrics.train/reward/{n}")) is not None]
    if len(names) <= 1:
        return names[0] if names else None
    weights = {n: as_float(row.get(f"params.reward.weights.{n}")) or 0.0 for n in names}
    return max(names, key=lambda n: weights[n])


def run_values(client, finished, metric: str):
    """Per finished run: the histories the plots need and the first/last values the table needs.

    Returns (frame with columns `<key> first` / `<key> last` for every val/reward/* key and
    `proxy` / `proxy key` / `proxy Δ` / `truth Δ`, curves {run_id: [(x, y), ...]}, x_is_nfe, the
    val/reward/* keys with `metric` first). The trained reward (`proxy`) is read as
    `val/reward/<name>` (held-out, the same prompts and noise as the ground truth) when the run
    logs it, else as `train/reward/<name>` (the rollouts' mean, noisier)."""
    val_keys = sorted({c.removeprefix("metrics.") for c in finished.columns if c.startswith("metrics.val/reward/")})
    if metric not in val_keys and f"metrics.{metric}" in finished.columns:
        val_keys.append(metric)
    val_keys.sort(key=lambda k: k != metric)  # the ranked metric's columns first
    out = finished.copy()
    curves, nfe_seen = {}, True
    for idx, row in finished.iterrows():
        rid = row["run_id"]
        for key in val_keys:
            hist = metric_history(client, rid, key) if as_float(row.get(f"metrics.{key}")) is not None else []
            out.loc[idx, f"{key} first"] = hist[0][1] if hist else math.nan
            out.loc[idx, f"{key} last"] = hist[-1][1] if hist else math.nan
            if key == metric:
                nfe = dict(metric_history(client, rid, NFE_METRIC)) if f"metrics.{NFE_METRIC}" in row.index else {}
                nfe_seen = nfe_seen and bool(nfe) and all(step in nfe for step, _ in hist)
                curves[rid] = [(step, nfe.get(step), value) for step, value in hist]
        proxy = trained_reward(row)
        out.loc[idx, "proxy"] = proxy
        if proxy is not None:
            key = f"val/reward/{proxy}" if f"val/reward/{proxy}" in val_keys else f"train/reward/{proxy}"
            if key.startswith("val/"):
                first, last = out.loc[idx, f"{key} first"], out.loc[idx, f"{key} last"]
            else:
                hist = metric_history(client, rid, key)
                first, last = (hist[0][1], hist[-1][1]) if hist else (math.nan, math.nan)
            out.loc[idx, "proxy key"] = key
            out.loc[idx, "proxy Δ"] = last - first
        if f"{metric} last" in out.columns:  # the ground truth is the compared metric (the runs' tag)
            out.loc[idx, "truth Δ"] = out.loc[idx, f"{metric} last"] - out.loc[idx, f"{metric} first"]
    x_is_nfe = nfe_seen and bool(curves)
    curves = {rid: [((nfe if x_is_nfe else step), y) for step, nfe, y in pts] for rid, pts in curves.items()}
    return out, curves, x_is_nfe, val_keys


def log_summary_run(
    client, experiment_id: str, files, metric: str, keys: list[str], n_finished: int, n_left_out: int, params=None
) -> str:
    """A FINISHED run named "compare" (tag flowrl.summary=true, left out of later comparisons)
    holding the table, the plots (and paired.csv) as artifacts; `params` ({name: value}, e.g. the
    paired comparison's baseline) logged besides the metric, keys and counts. It replaces the
    summary an earlier call left for the same comparison (`replace_summaries`), once it is complete."""
    run = client.create_run(experiment_id, run_name=SUMMARY_RUN_NAME, tags={SUMMARY_TAG: "true"})
    rid = run.info.run_id
    own = {"metric": metric, "by": ",".join(keys) or "-", **{k: str(v) for k, v in (params or {}).items()}}
    client.log_param(rid, "metric", metric)
    client.log_param(rid, "by", own["by"])
    client.log_param(rid, "runs_compared", n_finished)
    client.log_param(rid, "runs_left_out", n_left_out)
    for name, value in (params or {}).items():
        client.log_param(rid, name, value)
    for path in files:
        client.log_artifact(rid, str(path))
    client.set_terminated(rid, "FINISHED")
    replaced = replace_summaries(client, experiment_id, rid, own)
    if replaced:
        client.set_tag(rid, "flowrl.summary.replaces", ",".join(replaced))
    return rid


SUMMARY_IDENTITY = ("metric", "by", "baseline", "paired_by", "delta")  # what makes two summaries the same comparison


def replace_summaries(client, experiment_id: str, keep: str, own: dict) -> list[str]:
    """Delete (MLflow's soft delete: the UI's "deleted runs" can restore them) every other summary
    run of the experiment that is the same comparison as `own` (the same metric, keys and baseline
    params; one that logged none of them, from before these were logged, counts as the same), so a
    re-run of compare replaces its summary instead of adding another. Summaries of another metric,
    grouping or baseline stay. Returns the deleted run ids."""
    deleted = []
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{SUMMARY_TAG}` = 'true'"):
        if run.info.run_id == keep or run.info.run_name != SUMMARY_RUN_NAME:
            continue
        theirs = run.data.params
        known = [k for k in SUMMARY_IDENTITY if k in theirs]
        if any(theirs.get(k) != own.get(k) for k in SUMMARY_IDENTITY) and known:
            continue
        client.delete_run(run.info.run_id)
        deleted.append(run.info.run_id)
    return deleted
