"""`python -m flowrl.compare --experiment NAME [--metric val/reward/shapes] [--by method] [--out DIR]`:
the runs of one MLflow experiment, grouped by the swept keys and aggregated over seeds.

The command line of `flowrl.analysis.compare` (the `flowrl-compare` console script): it writes
`table.md` and the plots to DIR (default `outputs/compare/<experiment>/`), prints the table, and
logs both as the artifacts of a summary run named "compare". What each file holds:
flowrl.analysis; the swept keys and `--by`: flowrl.analysis.tables; the intervals:
flowrl.analysis.stats.
"""

from __future__ import annotations

import argparse

from flowrl.analysis import DEFAULT_METRIC, SUMMARY_RUN_NAME, compare


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flowrl.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="flowrl", help="MLflow experiment name (logger.experiment_name)")
    ap.add_argument("--metric", default=DEFAULT_METRIC, help=f"held-out metric to rank and plot (default {DEFAULT_METRIC})")
    ap.add_argument("--by", default=None, help="comma-separated keys to group by (default: the swept keys, found)")
    ap.add_argument("--out", default=None, help="output folder (default outputs/compare/<experiment>)")
    ap.add_argument("--tracking-uri", default=None, help="default: env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--no-summary-run", action="store_true", help="do not log the results as a summary run")
    args = ap.parse_args(argv)
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    result = compare(args.experiment, args.metric, by, args.out, args.tracking_uri, log_summary=not args.no_summary_run)
    print(result["markdown"])
    print(f"\nwrote {', '.join(str(p) for p in result['files'])}")
    if result["summary_run_id"]:
        print(f"logged as artifacts of run {result['summary_run_id']} ('{SUMMARY_RUN_NAME}')")


if __name__ == "__main__":
    main()
