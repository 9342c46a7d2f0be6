"""Comparing the runs of a sweep: one MLflow experiment's runs, grouped by the swept keys and
aggregated over seeds, as a table, plots, an MLflow UI view and a summary run.

`compare()` (the body of `python -m flowrl.compare`) writes to its folder (default
`outputs/compare/<experiment>/`), and logs as the artifacts of a summary run named "compare" (tag
`flowrl.summary=true`) in the same experiment:
- `table.md`: one row per group (the swept keys' values), `n` seeds, each held-out reward at the
  last evaluation and its change since the first one (the model before training, same prompts and
  noise, so the change is a paired difference), each as the mean over seeds and the half-width
  of its 95% confidence interval; then one row per run; then the runs left out (not FINISHED:
  RUNNING, KILLED, FAILED), by name and status. It is printed too.
- the plots: `reward_vs_nfe.png`, `final.png`, `ablation_<key>.png`, `proxy_vs_truth.png`.

The parts, by concern: `runs` (MLflow I/O: the runs, their histories, the summary run), `stats`
(mean and Student t interval over seeds), `tables` (swept keys, groups, markdown), `plots`,
`mlflow_view` (the UI's shared view). Importing this package is cheap: mlflow, pandas, scipy and
matplotlib are imported where they are used.
"""

from __future__ import annotations

from pathlib import Path

from flowrl.analysis.mlflow_view import share_grouped_view
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
from flowrl.analysis.tables import group_table, render_markdown, resolve_key, short, swept_keys

DEFAULT_METRIC = GROUND_TRUTH

__all__ = ["DEFAULT_METRIC", "NFE_METRIC", "SUMMARY_RUN_NAME", "SUMMARY_TAG", "compare"]


def compare(
    experiment: str,
    metric: str = DEFAULT_METRIC,
    by: list[str] | None = None,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    log_summary: bool = True,
) -> dict:
    """Read, group, aggregate, plot, write and log (see the module docstring).

    Returns {'table': grouped DataFrame, 'runs': per-run DataFrame, 'left_out': DataFrame,
    'keys': swept keys, 'files': written paths, 'summary_run_id': id or None, 'markdown': text,
    'ui_path': the MLflow UI path of the grouped view}."""
    client = get_client(tracking_uri)
    exp, runs = load_runs(client, experiment)
    out = Path(out_dir) if out_dir is not None else Path("outputs") / "compare" / experiment
    out.mkdir(parents=True, exist_ok=True)
    finished = runs[runs["status"] == "FINISHED"].reset_index(drop=True)
    left_out = runs[runs["status"] != "FINISHED"].reset_index(drop=True)
    keys = [resolve_key(k, runs.columns) for k in by] if by else swept_keys(finished)
    values, curves, x_is_nfe, val_keys = run_values(client, finished, metric)
    if not finished.empty and f"{metric} last" not in values.columns:
        raise SystemExit(f"flowrl.compare: no finished run of {experiment!r} logs {metric!r}")
    table = group_table(values, keys, val_keys, metric) if not finished.empty else values.iloc[0:0].assign(_label=[])
    ui_path = share_grouped_view(client, exp, keys, runs, metric, x_is_nfe)
    text = render_markdown(experiment, metric, keys, table, values, left_out, x_is_nfe, ui_path)
    files = [out / "table.md"]
    files[0].write_text(text + "\n")
    if not finished.empty:
        files += _plot(out, values, table, keys, curves, x_is_nfe, metric)
    summary_id = None
    if log_summary:
        summary_id = log_summary_run(client, exp.experiment_id, files, metric, keys, len(finished), len(left_out))
    return {
        "table": table,
        "runs": values,
        "left_out": left_out,
        "keys": keys,
        "files": files,
        "summary_run_id": summary_id,
        "markdown": text,
        "ui_path": ui_path,
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
    if plot_proxy_vs_truth(out / "proxy_vs_truth.png", values, keys):
        files.append(out / "proxy_vs_truth.png")
    return files
