"""Comparing the runs of a sweep: one MLflow experiment's runs, grouped by the swept keys and
aggregated over seeds, as a table, plots, an MLflow UI view and a summary run.

`compare()` (the body of `python -m flowrl.compare`) writes to its folder (default
`outputs/compare/<experiment>/`), and logs as the artifacts of a summary run named "compare" (tag
`flowrl.summary=true`) in the same experiment, which replaces (soft-deletes) the summary an earlier
call left for the same metric, grouping and baseline (`runs.replace_summaries`):
- `table.md`: one row per group (the swept keys' values), `n` seeds, each held-out reward at the
  last evaluation and its change since the first one (the model before training, same prompts and
  noise, so the change is a paired difference), each as the mean over seeds and the half-width
  of its 95% confidence interval; then one row per run; then the runs left out (not FINISHED:
  RUNNING, KILLED, FAILED), by name and status. It is printed too.
- the plots: `reward_vs_nfe.png`, `final.png`, `ablation_<key>.png`, `proxy_vs_truth.png`.
- with a baseline (`--baseline key=value`): `paired.csv`, every group against the baseline group
  run by run on the same seed (the mean difference of the ground-truth improvement, its paired t
  interval, p-value, and the seeds needed to resolve δ), and a "Paired comparison" section in
  `table.md` (see `paired`).

The metric, unless given: the runs' `ground_truth` tag, else `val/reward/shapes`.

The parts, by concern: `runs` (MLflow I/O: the runs, their histories, the summary run), `stats`
(mean and Student t interval over seeds; the paired statistics), `tables` (swept keys, groups,
markdown), `paired` (the baseline, the pairs, paired.csv), `plots`,
`mlflow_view` (the UI's shared view). Importing this package is cheap: mlflow, pandas, scipy and
matplotlib are imported where they are used.
"""

from __future__ import annotations

from pathlib import Path

from flowrl.analysis.mlflow_view import share_grouped_view
from flowrl.analysis.paired import PairedError, paired_table, render_paired, resolve_metric, write_csv
from flowrl.analysis.plots import plot_ablation, plot_final, plot_proxy_vs_truth, plot_reward_vs_nfe
from flowrl.analysis.runs import (
    GROUND_TRUTH,
    NFE_METRIC,
    SUMMARY_RUN_NAME,
    SUMMARY_TAG,
    get_client,
    load_runs,
    log_summary_run,
    run_values,
)
from flowrl.analysis.stats import DELTA
from flowrl.analysis.tables import (
    category_table,
    group_table,
    render_categories,
    render_markdown,
    resolve_key,
    short,
    swept_keys,
)

DEFAULT_METRIC = GROUND_TRUTH

__all__ = ["DEFAULT_METRIC", "NFE_METRIC", "SUMMARY_RUN_NAME", "SUMMARY_TAG", "PairedError", "compare"]


def compare(
    experiment: str,
    metric: str | None = None,
    by: list[str] | None = None,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    log_summary: bool = True,
    baseline: list[str] | str | None = None,
    paired_by: str = "seed",
    delta: float = DELTA,
) -> dict:
    """Read, group, aggregate, plot, write and log (see the module docstring). `metric` None: the
    runs' `ground_truth` tag, else DEFAULT_METRIC. `baseline` ('key=value' items) adds the paired
    comparison; a baseline that names no group raises PairedError before anything is written.

    Returns {'table': grouped DataFrame, 'runs': per-run DataFrame, 'left_out': DataFrame,
    'keys': swept keys, 'files': written paths, 'summary_run_id': id or None, 'markdown': text,
    'ui_path': the MLflow UI path of the grouped view, 'metric': the metric used, 'paired' and
    'unpaired': DataFrames (None without a baseline)}."""
    client = get_client(tracking_uri)
    exp, runs = load_runs(client, experiment)
    finished = runs[runs["status"] == "FINISHED"].reset_index(drop=True)
    left_out = runs[runs["status"] != "FINISHED"].reset_index(drop=True)
    metric, metric_source = resolve_metric(finished, metric)
    keys = [resolve_key(k, runs.columns) for k in by] if by else swept_keys(finished)
    values, curves, x_is_nfe, val_keys = run_values(client, finished, metric)
    if not finished.empty and f"{metric} last" not in values.columns:
        raise SystemExit(f"flowrl.compare: no finished run of {experiment!r} logs {metric!r}")
    paired = unpaired = None
    sections, logged = [], {}
    categories = category_table(client, values, keys, metric) if not finished.empty else None
    if categories is not None:
        sections.append(render_categories(categories, metric))
    if baseline:
        paired, unpaired, base_label = paired_table(client, values, keys, metric, baseline, paired_by, delta)
        sections.append(render_paired(paired, unpaired, base_label, metric, metric_source, paired_by, delta))
        logged = {"baseline": base_label, "paired_by": paired_by, "delta": delta}
    table = group_table(values, keys, val_keys, metric) if not finished.empty else values.iloc[0:0].assign(_label=[])
    ui_path = share_grouped_view(client, exp, keys, runs, metric, x_is_nfe)
    text = render_markdown(experiment, metric, keys, table, values, left_out, x_is_nfe, ui_path, sections)
    out = Path(out_dir) if out_dir is not None else Path("outputs") / "compare" / experiment
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "table.md"]
    files[0].write_text(text + "\n")
    if paired is not None:
        write_csv(out / "paired.csv", paired)
        files.append(out / "paired.csv")
    if not finished.empty:
        files += _plot(out, values, table, keys, curves, x_is_nfe, metric)
    summary_id = None
    if log_summary:
        summary_id = log_summary_run(client, exp.experiment_id, files, metric, keys, len(finished), len(left_out), logged)
    return {
        "table": table,
        "runs": values,
        "left_out": left_out,
        "keys": keys,
        "files": files,
        "summary_run_id": summary_id,
        "markdown": text,
        "ui_path": ui_path,
        "metric": metric,
        "paired": paired,
        "unpaired": unpaired,
    }


def _plot(out: Path, values, table, keys, curves, x_is_nfe: bool, metric: str) -> list[Path]:
    """Every plot of the finished runs into `out`; the paths written."""
    plot_reward_vs_nfe(out / "reward_vs_nfe.png", values, keys, curves, x_is_nfe, metric)
    plot_final(out / "final.png", table, metric)
    files = [out / "reward_vs_nfe.png", out / "final.png"]
    for key in keys:
        if key != "method.name":
            plot_ablation(out / f"ablation_{short(key)}.png", values, keys, key, metric)
            files.append(out / f"ablation_{short(key)}.png")
    if plot_proxy_vs_truth(out / "proxy_vs_truth.png", values, keys, metric):
        files.append(out / "proxy_vs_truth.png")
    return files
