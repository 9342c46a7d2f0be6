"""The MLflow UI view of a comparison, stored where the UI's own "Share" button stores one.

The UI keeps a shareable runs-page state as an experiment tag, `mlflow.sharedViewState.<key>`,
and opens it from `#/experiments/<id>/runs?viewStateShareKey=<key>`. flowrl.compare writes that
state by hand (a plain JSON value; MLflow 3.17 accepts it), so that the table's groups can be
opened in the UI: runs grouped by the swept keys, the mean over seeds with a band in its charts.
"""

from __future__ import annotations

import json

from flowrl.analysis.runs import NFE_METRIC, SUMMARY_RUN_NAME

SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
SHARED_VIEW_KEY = "flowrl-compare"


def run_tag(key: str) -> str:
    """The run tag that holds a config key: 'method' for method.name, else the key's last dotted
    segment ('method.group_size' -> 'group_size', 'seed' -> 'seed'). Training tags a run with the
    knobs a sweep compares under these names; the UI groups by a tag in one click."""
    return "method" if key == "method.name" else key.rsplit(".", 1)[-1]


def share_grouped_view(client, experiment, keys: list[str], runs, metric: str, x_is_nfe: bool) -> str:
    """Store an MLflow UI view of this comparison as the experiment tag
    mlflow.sharedViewState.flowrl-compare and return the UI path that opens it:
    `#/experiments/<id>/runs?viewStateShareKey=flowrl-compare` (add `&compareRunsMode=CHART` for
    the charts).

    The view: runs grouped by `keys` (by the run tag `run_tag(key)` where the runs carry it, else
    by the param), the group rows showing the mean over seeds; only FINISHED runs, as in the
    table, and not the summary runs; the held-out rewards, the NFE and the seed as columns; and a
    first chart of `metric` against `val/nfe_total` (the step without it), which the UI draws per
    group as the mean with a band over the seeds."""
    group_by = []
    for key in keys:
        tag = run_tag(key)
        if f"tags.{tag}" in runs.columns:
            group_by.append({"mode": "tag", "groupByData": tag})
        else:
            group_by.append({"mode": "param", "groupByData": key})
    metrics = sorted(c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.val/"))
    columns = [f"metrics.`{m}`" for m in metrics] + (["tags.`seed`"] if "tags.seed" in runs.columns else [])
    section = "flowrl-compare"
    chart = {
        "type": "LINE",
        "uuid": "flowrl-compare-curve",
        "metricSectionId": section,
        "isGenerated": False,
        "deleted": False,
        "runsCountToCompare": 100,
        "metricKey": metric,
        "selectedMetricKeys": [metric],
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "metric" if x_is_nfe else "step",
        "selectedXAxisMetricKey": NFE_METRIC if x_is_nfe else "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": False,
        "useGlobalLineSmoothing": False,
    }
    state = {
        "groupBy": {"aggregateFunction": "average", "groupByKeys": group_by} if group_by else None,
        "searchFilter": f"attributes.status = 'FINISHED' and attributes.run_name != '{SUMMARY_RUN_NAME}'",
        "selectedColumns": columns,
        "compareRunCharts": [chart],
        "compareRunSections": [
            {
                "uuid": section,
                "name": "flowrl.compare",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
    }
    client.set_experiment_tag(experiment.experiment_id, SHARED_VIEW_PREFIX + SHARED_VIEW_KEY, json.dumps(state))
    return f"#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={SHARED_VIEW_KEY}"
