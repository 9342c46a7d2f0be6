"""`python -m flowrl.compare --experiment NAME [--metric M] [--by method] [--out DIR]
[--baseline KEY=VALUE [--paired-by seed] [--delta 0.02]]`: the runs of one MLflow experiment,
grouped by the swept keys and aggregated over seeds; with a baseline, every group against it,
paired by seed.

The command line of `flowrl.analysis.compare` (the `flowrl-compare` console script): it writes
`table.md` and the plots to DIR (default `outputs/compare/<experiment>/`), with `--baseline` also
`paired.csv` (columns group, baseline, metric, n_pairs, mean_diff, ci_low, ci_high, p_value,
seeds_needed) and a "Paired comparison" section in table.md; prints the table, and logs the files
as the artifacts of a summary run named "compare". What each file holds: flowrl.analysis; the
swept keys and `--by`: flowrl.analysis.tables; the intervals and the paired statistics:
flowrl.analysis.stats; the baseline and the pairs: flowrl.analysis.paired. A baseline that names
no group, or a `--paired-by` that is no param, is one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from flowrl.analysis import DEFAULT_METRIC, SUMMARY_RUN_NAME, PairedError, compare


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m flowrl.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="flowrl", help="MLflow experiment name (logger.experiment_name)")
    ap.add_argument(
        "--metric",
        default=None,
        help=f"held-out metric to rank, plot and pair (default: the runs' ground_truth tag, else {DEFAULT_METRIC})",
    )
    ap.add_argument("--by", default=None, help="comma-separated keys to group by (default: the swept keys, found)")
    ap.add_argument("--out", default=None, help="output folder (default outputs/compare/<experiment>)")
    ap.add_argument("--tracking-uri", default=None, help="default: env MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    ap.add_argument("--no-summary-run", action="store_true", help="do not log the results as a summary run")
    paired = ap.add_argument_group("paired comparison (common random numbers)")
    paired.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        help="the group every other group is compared with, e.g. method=dancegrpo or tau=2.2 (repeat, or comma-separate, to name several keys)",
    )
    paired.add_argument("--paired-by", default=None, help="the key runs are paired on (default seed: the param, else the tag)")
    paired.add_argument("--delta", type=float, default=None, help="the difference to resolve at 80%% power (default 0.02)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = _parser()
    args = ap.parse_args(argv)
    if not args.baseline and (args.paired_by is not None or args.delta is not None):
        ap.error("--paired-by and --delta need --baseline")
    if args.delta is not None and not args.delta > 0:
        ap.error("--delta must be positive")
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    paired = {"baseline": args.baseline, "paired_by": args.paired_by or "seed"}
    paired |= {"delta": args.delta} if args.delta is not None else {}
    try:
        result = compare(
            args.experiment, args.metric, by, args.out, args.tracking_uri, log_summary=not args.no_summary_run, **paired
        )
    except PairedError as err:
        print(f"flowrl.compare: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(result["markdown"])
    print(f"\nwrote {', '.join(str(p) for p in result['files'])}")
    if result["summary_run_id"]:
        print(f"logged as artifacts of run {result['summary_run_id']} ('{SUMMARY_RUN_NAME}')")


if __name__ == "__main__":
    main()
