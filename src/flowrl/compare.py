"""`python -m flowrl.compare [--experiment NAME] [--tracking-uri URI] [--out FILE.md]`: the
finished runs of one MLflow experiment as one table (pandas): method, budget, held-out rewards at
the first and last evaluation and their change, wall time per iteration.

The first evaluation is the model before training (same held-out prompts and noise as the last),
so `delta` is a paired difference.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def runs_table(experiment: str, tracking_uri: str | None = None):
    """One row per finished run of `experiment` (oldest first)."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from flowrl.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"flowrl.compare: no MLflow experiment named {experiment!r}")
    rows = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"]):
        p = run.data.params
        row = {
            "run": run.info.run_name,
            "method": p.get("method.name"),
            "prompts/iter": p.get("train.prompts_per_step"),
            "G": p.get("method.group_size"),
            "iterations": p.get("train.iterations"),
        }
        nfe = client.get_metric_history(run.info.run_id, "perf/nfe")
        row["NFE/iter (spent)"] = round(sum(m.value for m in nfe) / len(nfe)) if nfe else None
        it = client.get_metric_history(run.info.run_id, "perf/iteration_s")
        row["s/iter"] = round(sum(m.value for m in it) / len(it), 1) if it else None
        for key in sorted(k for k in run.data.metrics if k.startswith("val/reward/")):
            hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
            name = key.removeprefix("val/reward/")
            row[f"{name} before"] = round(hist[0].value, 4)
            row[f"{name} after"] = round(hist[-1].value, 4)
            row[f"{name} delta"] = round(hist[-1].value - hist[0].value, 4)
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table) -> str:
    """A DataFrame as a GitHub markdown table (pandas' own needs the optional tabulate package)."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None or v != v else str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flowrl.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="flowrl", help="MLflow experiment name (logger.experiment_name)")
    ap.add_argument("--tracking-uri", default=None, help="default: env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--out", default=None, help="also write the table as markdown to this file")
    args = ap.parse_args(argv)
    table = runs_table(args.experiment, args.tracking_uri)
    text = to_markdown(table) if not table.empty else "(no finished runs)"
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
