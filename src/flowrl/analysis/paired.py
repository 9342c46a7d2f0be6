"""Paired comparisons with common random numbers: every group of a comparison against a baseline
group, run by run on the same seed.

Runs of one seed share their prompts, their sampling noise and their held-out evaluation, so the
difference of two runs of the same seed is free of most of the seed-to-seed spread: the paired
difference of the ground-truth improvement needs far fewer seeds than two independent means.

- The metric (`resolve_metric`): `--metric` if given, else the runs' `ground_truth` tag (training
  tags every run `ground_truth=<metric key>`), else `val/reward/shapes`.
- Δ of a run (`run_deltas`): the metric's value at the last step logged minus its value at step 0
  (after minus before training). A run without a value at step 0 has no Δ.
- The baseline (`find_baseline`): `--baseline key=value` (repeatable, or comma-separated), each
  key a grouping key or a name `--by` takes (`method`, `G`, `tau`); it must name one group.
- The pairs (`pair_runs`): per group, the runs whose `--paired-by` value (default `seed`, the
  param, else the tag) a baseline run shares. A seed run twice in one group pairs its latest run.
  Runs left unpaired (no partner, no seed, no Δ, an older duplicate) are listed apart, each with
  its reason.
- The statistics per group: flowrl.analysis.stats.paired_comparison on the differences
  Δ(group run) − Δ(baseline run); `paired.csv` holds them, `table.md` a "Paired comparison" section.
"""

from __future__ import annotations

import math
import re

from flowrl.analysis.runs import GROUND_TRUTH, metric_history
from flowrl.analysis.stats import DELTA, as_float, paired_comparison
from flowrl.analysis.tables import ALIASES, group_iter

GROUND_TRUTH_TAG = "ground_truth"
CSV_COLUMNS = ["group", "baseline", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "seeds_needed"]
UNPAIRED_COLUMNS = ["group", "run", "pair", "reason"]
_SPEC_SPLIT = re.compile(r",(?=\s*[\w.]+=)")  # "method=x,tau=2.2" but not inside "[1, 2]"


class PairedError(ValueError):
    """A paired comparison that cannot be made as asked (the CLI exits 2 with its message)."""


def resolve_metric(runs, metric: str | None) -> tuple[str, str]:
    """(metric key, where it came from): `metric` if given, else the `ground_truth` tag the runs
    carry (one value; a bare reward name is read as `val/reward/<name>` when only that is logged),
    else GROUND_TRUTH."""
    if metric:
        return metric, "--metric"
    col = f"tags.{GROUND_TRUTH_TAG}"
    tagged = sorted(set(runs[col].dropna())) if col in runs.columns else []
    if not tagged:
        return GROUND_TRUTH, f"default: no run carries a `{GROUND_TRUTH_TAG}` tag"
    if len(tagged) > 1:
        raise SystemExit(f"flowrl.compare: the runs' {GROUND_TRUTH_TAG} tags differ ({', '.join(tagged)}): pass --metric")
    key = tagged[0]
    if f"metrics.{key}" not in runs.columns and f"metrics.val/reward/{key}" in runs.columns:
        key = f"val/reward/{key}"
    return key, f"the runs' `{GROUND_TRUTH_TAG}` tag"


def parse_baseline(specs: list[str] | str) -> list[tuple[str, str]]:
    """['method=x', 'tau=2.2,G=4'] -> [('method', 'x'), ('tau', '2.2'), ('G', '4')]."""
    items = []
    for spec in [specs] if isinstance(specs, str) else specs:
        for part in _SPEC_SPLIT.split(spec):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise PairedError(f"--baseline takes key=value, not {part!r}")
            items.append((name.strip(), value.strip()))
    return items


def _same(logged, value: str) -> bool:
    """A group's logged value equals `value`, as text or as numbers ('2.2' == '2.20')."""
    if logged is None or (isinstance(logged, float) and math.isnan(logged)):
        return value == ""
    if str(logged) == value:
        return True
    x, y = as_float(logged), as_float(value)
    return x is not None and y is not None and x == y


def _baseline_key(name: str, keys: list[str]) -> str:
    """A baseline name as one of the grouping keys: itself, its alias, or `method.<name>`."""
    name = ALIASES.get(name, name)
    for key in (name, f"method.{name}"):
        if key in keys:
            return key
    grouped = ", ".join(keys) or "nothing (one group)"
    raise PairedError(f"--baseline key {name!r} is not a grouping key (grouped by {grouped})")


def find_baseline(values, keys: list[str], specs) -> str:
    """The label of the one group that every `key=value` of `specs` names."""
    wanted = [(_baseline_key(name, keys), value) for name, value in parse_baseline(specs)]
    if not keys or values.empty:
        raise PairedError("--baseline needs groups to compare: no finished runs, or nothing differs")
    matches = []
    for label, g in group_iter(values, keys):
        row = g.iloc[0]
        if all(_same(row[f"params.{key}"], value) for key, value in wanted):
            matches.append(label)
    spec = ",".join(f"{k}={v}" for k, v in wanted)
    if not matches:
        found = "; ".join(label for label, _ in group_iter(values, keys))
        raise PairedError(f"--baseline {spec} matches no group (groups: {found})")
    if len(matches) > 1:
        raise PairedError(f"--baseline {spec} matches {len(matches)} groups ({'; '.join(matches)}): name more keys")
    return matches[0]


def pair_column(name: str, columns) -> str:
    """The frame column that holds `--paired-by`: `seed` (param, else tag), else a param."""
    if name == "seed":
        return "seed"
    for key in (ALIASES.get(name, name), f"method.{name}"):
        if f"params.{key}" in columns:
            return f"params.{key}"
    raise PairedError(f"--paired-by {name!r}: no such param in these runs")


def run_deltas(client, values, metric: str) -> list[float]:
    """Per run of `values`: the metric at its last step minus at step 0 (NaN without step 0)."""
    out = []
    for rid in values["run_id"]:
        hist = dict(metric_history(client, rid, metric))
        out.append(hist[max(hist)] - hist[0] if 0 in hist else math.nan)
    return out


def _pairable(g, pair_col: str, group: str, unpaired: list[dict]) -> dict[str, object]:
    """{pair value: run row} of one group's runs; those that cannot pair go to `unpaired`."""
    by_pair: dict[str, object] = {}
    for _, row in g.iterrows():  # oldest first: a later run of the same pair value replaces it
        pair = row[pair_col]
        if pair is None or (isinstance(pair, float) and math.isnan(pair)):
            unpaired.append({"group": group, "run": row["run"], "pair": "", "reason": "no pair value"})
        elif not math.isfinite(row["Δ"]):
            unpaired.append({"group": group, "run": row["run"], "pair": str(pair), "reason": "no value at step 0"})
        else:
            older = by_pair.get(str(pair))
            if older is not None:
                unpaired.append({"group": group, "run": older["run"], "pair": str(pair), "reason": "older run of this pair"})
            by_pair[str(pair)] = row
    return by_pair


def pair_runs(values, keys: list[str], baseline: str, pair_col: str):
    """([(group label, group Δ, baseline Δ)], unpaired rows), the Δ aligned by pair value.

    `values` carries the column `Δ` (run_deltas). Runs of the baseline without a partner in a
    group are listed with that group (reason 'baseline run, no partner')."""
    groups = dict(group_iter(values, keys))
    unpaired: list[dict] = []
    base = _pairable(groups[baseline], pair_col, baseline, unpaired)
    pairs = []
    for label, g in groups.items():
        if label == baseline:
            continue
        mine = _pairable(g, pair_col, label, unpaired)
        common = [p for p in mine if p in base]
        unpaired += [
            {"group": label, "run": mine[p]["run"], "pair": p, "reason": "no baseline run"} for p in mine if p not in base
        ]
        unpaired += [
            {"group": label, "run": base[p]["run"], "pair": p, "reason": "baseline run, no partner"}
            for p in base
            if p not in mine
        ]
        pairs.append((label, [mine[p]["Δ"] for p in common], [base[p]["Δ"] for p in common]))
    return pairs, unpaired


def paired_table(client, values, keys: list[str], metric: str, baseline_specs, paired_by: str = "seed", delta: float = DELTA):
    """(one row per group against the baseline, CSV_COLUMNS plus sd_diff and seeds_needed_t,
    largest mean difference first; unpaired runs, UNPAIRED_COLUMNS; the baseline's label)."""
    import pandas as pd

    baseline = find_baseline(values, keys, baseline_specs)
    pair_col = pair_column(paired_by, values.columns)
    values = values.assign(Δ=run_deltas(client, values, metric))
    pairs, unpaired = pair_runs(values, keys, baseline, pair_col)
    rows = []
    for label, a, b in pairs:
        stats = paired_comparison(a, b, delta=delta)
        rows.append({"group": label, "baseline": baseline, "metric": metric} | stats)
    table = pd.DataFrame(rows, columns=[*CSV_COLUMNS, "sd_diff", "seeds_needed_t"])
    table = table.sort_values("mean_diff", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    for col in ("n_pairs", "seeds_needed", "seeds_needed_t"):
        table[col] = table[col].astype("Int64")
    return table, pd.DataFrame(unpaired, columns=UNPAIRED_COLUMNS), baseline


def write_csv(path, table) -> None:
    """`paired.csv`: exactly CSV_COLUMNS, full precision, NaN where a value cannot be estimated."""
    table[CSV_COLUMNS].to_csv(path, index=False, na_rep="NaN")


def _num(value, fmt: str) -> str:
    """`value` formatted, "—" where it is missing (NaN, pandas' NA)."""
    import pandas as pd

    return "—" if pd.isna(value) else format(value, fmt)


def render_paired(table, unpaired, baseline: str, metric: str, source: str, paired_by: str, delta: float) -> str:
    """The "Paired comparison" section of table.md."""
    import pandas as pd

    lines = [
        "## Paired comparison",
        "",
        f"Each group against the baseline **{baseline}**, run by run on the same `{paired_by}` (common",
        f"random numbers). Metric `{metric}` ({source}); Δ of a run: its last value minus its value at",
        "step 0. `mean diff`: the mean over pairs of Δ(group) − Δ(baseline); `95% CI`: the paired t",
        "interval; `p`: two-sided, `scipy.stats.ttest_rel`; `s_d`: the SD of the differences. `seeds",
        f"needed` to resolve a difference of δ = {delta:g} at 80% power (two-sided α = 0.05): `(z)` =",
        "⌈((z.975 + z.8) · s_d / δ)²⌉, `(t)` = the smallest n whose paired t-test has that power",
        "(noncentral t); at least 2, `—` with fewer than 2 pairs. `paired.csv` holds these (z figure).",
        "",
    ]
    if table.empty:
        lines += ["(no group besides the baseline)", ""]
    else:
        cells = pd.DataFrame(
            {
                "group": table["group"],
                "pairs": table["n_pairs"].astype(str),
                "mean diff": [_num(v, "+.4f") for v in table["mean_diff"]],
                "95% CI": [f"[{_num(lo, '+.4f')}, {_num(hi, '+.4f')}]" for lo, hi in zip(table["ci_low"], table["ci_high"])],
                "p": [_num(v, ".3g") for v in table["p_value"]],
                "s_d": [_num(v, ".4f") for v in table["sd_diff"]],
                "seeds needed (z)": [_num(v, "d") for v in table["seeds_needed"]],
                "seeds needed (t)": [_num(v, "d") for v in table["seeds_needed_t"]],
            }
        )
        lines += [cells.to_markdown(index=False, colalign=["left"] + ["right"] * 7, disable_numparse=True), ""]
    lines += ["### Unpaired runs (not in the differences)", ""]
    lines += ["(none)", ""] if unpaired.empty else [unpaired.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)
