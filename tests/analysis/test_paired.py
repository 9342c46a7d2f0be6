"""flowrl.compare --baseline: every group against a baseline group, paired by seed (common random numbers):
the mean difference of the ground-truth improvement, its paired t interval, p-value, seeds needed, paired.csv."""

import csv
import math

import pytest

CSV_HEADER = ["group", "baseline", "metric", "n_pairs", "mean_diff", "ci_low", "ci_high", "p_value", "seeds_needed"]


# --- the statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ([0.05, 0.045, 0.06], [0.01, 0.02, 0.015]),
        ([1.0, 2.0], [0.5, 0.25]),
        ([0.1, 0.5, 0.2, 0.9, 0.4, 0.35], [0.0, 0.45, 0.3, 0.6, 0.41, 0.1]),
        ([-3.0, 4.5, 0.25, 7.0], [-2.0, 4.0, 1.25, 5.5]),
    ],
)
def test_paired_comparison_is_scipys_paired_t_test(a, b):
    import numpy as np
    from scipy import stats

    from flowrl.analysis.stats import paired_comparison

    got = paired_comparison(a, b)
    d = np.subtract(a, b)
    n = len(d)
    test = stats.ttest_rel(a, b)
    low, high = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(n))
    assert got["n_pairs"] == n and got["mean_diff"] == pytest.approx(d.mean(), rel=1e-12)
    assert got["sd_diff"] == pytest.approx(d.std(ddof=1), rel=1e-12)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert got["p_value"] == pytest.approx(test.pvalue, rel=1e-9)
    # scipy's own interval of the same test agrees (ttest_rel's confidence_interval, scipy >= 1.10)
    ci = test.confidence_interval(0.95)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    # the differences alone give the same test
    alone = paired_comparison(list(d))
    assert alone["p_value"] == pytest.approx(test.pvalue, rel=1e-9) and alone["ci_low"] == pytest.approx(low, rel=1e-9)


def test_paired_comparison_with_too_few_pairs_or_no_spread():
    from flowrl.analysis.stats import paired_comparison

    one = paired_comparison([0.7], [0.6])
    assert one["n_pairs"] == 1 and one["mean_diff"] == pytest.approx(0.1)
    for key in ("sd_diff", "ci_low", "ci_high", "p_value", "seeds_needed", "seeds_needed_t"):
        assert math.isnan(one[key]), key  # one pair: no s_d, nothing else
    none = paired_comparison([], [])
    assert none["n_pairs"] == 0 and math.isnan(none["mean_diff"]) and math.isnan(none["seeds_needed"])
    same = paired_comparison([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # every difference 0.5 exactly: no spread
    assert same["sd_diff"] == 0.0 and (same["ci_low"], same["ci_high"]) == (0.5, 0.5)  # a point, not NaN
    assert same["p_value"] == 0.0 and same["seeds_needed"] == 2 and same["seeds_needed_t"] == 2


def test_seeds_needed_worked_by_hand():
    from flowrl.analysis.stats import paired_comparison, seeds_needed, seeds_needed_t

    # z.975 = 1.959964, z.8 = 0.841621, their sum 2.801585 (squared: 7.848879)
    # s_d = 0.04, δ = 0.02: 7.848879 * (0.04 / 0.02)^2 = 31.3955 -> 32
    assert seeds_needed(0.04, 0.02) == 32
    # s_d = 0.02, δ = 0.02: 7.848879 -> 8;  s_d = 0.03, δ = 0.01: 7.848879 * 9 = 70.64 -> 71
    assert seeds_needed(0.02, 0.02) == 8 and seeds_needed(0.03, 0.01) == 71
    # s_d = 0.005, δ = 0.02: 0.49 -> 1, but a paired t-test needs two pairs
    assert seeds_needed(0.005, 0.02) == 2
    assert math.isnan(seeds_needed(math.nan, 0.02)) and math.isnan(seeds_needed_t(math.nan, 0.02))
    # the exact (noncentral t) figures, as published for the one-sample/paired t-test at α = 0.05,
    # power 0.8 (R's pwr.t.test(d, power = 0.8, type = "paired")): d = 0.5 -> n = 33.37 -> 34;
    # d = 1 -> 9.94 -> 10; d = 2 -> 4.22 -> 5
    assert seeds_needed_t(0.04, 0.02) == 34 and seeds_needed_t(0.02, 0.02) == 10 and seeds_needed_t(0.01, 0.02) == 5
    # inside paired_comparison: the differences' SD, measured; δ as asked
    got = paired_comparison([0.0, 0.04, 0.08], delta=0.02)  # s_d = 0.04 exactly
    assert got["sd_diff"] == pytest.approx(0.04) and got["seeds_needed"] == 32 and got["seeds_needed_t"] == 34
    assert paired_comparison([0.0, 0.04, 0.08], delta=0.04)["seeds_needed"] == 8  # 7.85 -> 8


# --- baseline, metric, pairs on frames ------------------------------------------------------------


def _frame(rows):
    import pandas as pd

    return pd.DataFrame([{(k if k in ("run", "seed", "Δ") else f"params.{k}"): v for k, v in r.items()} for r in rows])


def test_find_baseline_by_alias_number_and_several_keys():
    from flowrl.analysis.paired import PairedError, find_baseline, parse_baseline

    values = _frame(
        [{"method.name": m, "method.tau": t, "seed": s} for m in ("egrpo", "dancegrpo") for t in ("1.8", "2.2") for s in "01"]
    )
    keys = ["method.name", "method.tau"]
    assert parse_baseline(["method=egrpo,tau=2.2", "G=4"]) == [("method", "egrpo"), ("tau", "2.2"), ("G", "4")]
    assert parse_baseline("method.levels=[1, 2]") == [("method.levels", "[1, 2]")]  # a list value keeps its commas
    assert find_baseline(values, keys, ["method=dancegrpo", "tau=2.20"]) == "dancegrpo tau=2.2"
    assert find_baseline(values, keys, "method.name=egrpo,method.tau=1.8") == "egrpo tau=1.8"
    with pytest.raises(PairedError, match=r"tau=2.2 matches 2 groups \(egrpo tau=2.2; dancegrpo tau=2.2\): name more keys"):
        find_baseline(values, keys, "tau=2.2")
    with pytest.raises(PairedError, match="method.name=flowgrpo matches no group"):
        find_baseline(values, keys, "method=flowgrpo")
    with pytest.raises(PairedError, match="'train.lr' is not a grouping key"):
        find_baseline(values, keys, "train.lr=1e-4")
    with pytest.raises(PairedError, match="key=value"):
        find_baseline(values, keys, "dancegrpo")


def test_pair_runs_aligns_by_seed_and_lists_the_unpaired():
    from flowrl.analysis.paired import pair_runs

    rows = [
        {"run": "b0", "method.name": "base", "seed": "0", "Δ": 0.01},
        {"run": "b1", "method.name": "base", "seed": "1", "Δ": 0.02},
        {"run": "b2", "method.name": "base", "seed": "2", "Δ": 0.03},
        {"run": "x1 old", "method.name": "x", "seed": "1", "Δ": 9.0},
        {"run": "x1", "method.name": "x", "seed": "1", "Δ": 0.05},  # rerun of seed 1: this one pairs
        {"run": "x0", "method.name": "x", "seed": "0", "Δ": 0.07},  # listed after seed 1: aligned by seed all the same
        {"run": "x7", "method.name": "x", "seed": "7", "Δ": 0.04},
        {"run": "x?", "method.name": "x", "seed": None, "Δ": 0.04},
        {"run": "xnan", "method.name": "x", "seed": "2", "Δ": math.nan},
    ]
    pairs, unpaired = pair_runs(_frame(rows), ["method.name"], "base", "seed")
    assert pairs == [("x", [0.05, 0.07], [0.02, 0.01])]
    assert sorted((u["run"], u["reason"]) for u in unpaired) == [
        ("b2", "baseline run, no partner"),
        ("x1 old", "older run of this pair"),
        ("x7", "no baseline run"),
        ("x?", "no pair value"),
        ("xnan", "no value at step 0"),
    ]
    assert all(u["group"] == "x" for u in unpaired)


def test_metric_is_the_ground_truth_tag_else_the_default():
    import pandas as pd

    from flowrl.analysis.paired import resolve_metric

    tagged = pd.DataFrame({"tags.ground_truth": ["val/reward/tiny_clip", None], "metrics.val/reward/tiny_clip": [0.1, 0.2]})
    assert resolve_metric(tagged, None) == ("val/reward/tiny_clip", "the runs' `ground_truth` tag")
    assert resolve_metric(tagged, "val/reward/shapes")[0] == "val/reward/shapes"  # --metric wins
    assert resolve_metric(pd.DataFrame({"metrics.val/reward/shapes": [0.1]}), None)[0] == "val/reward/shapes"
    bare = pd.DataFrame({"tags.ground_truth": ["tiny_clip"], "metrics.val/reward/tiny_clip": [0.1]})
    assert resolve_metric(bare, None)[0] == "val/reward/tiny_clip"
    with pytest.raises(SystemExit, match="ground_truth tags differ"):
        resolve_metric(pd.DataFrame({"tags.ground_truth": ["val/reward/a", "val/reward/b"]}), None)


# --- through MLflow and the command line ----------------------------------------------------------

BASE = {0: 0.010, 1: 0.020, 2: 0.015, 3: 0.030}  # dancegrpo: Δ of the ground truth per seed
EGRPO = {0: 0.050, 1: 0.045, 2: 0.060, 5: 0.040}  # seed 5 has no baseline run


def _run(client, exp, name, method, seed, delta, start=0, tags=None):
    """A finished run whose ground truth (val/reward/tiny_clip, named by its tag) rises by `delta`
    from step `start` to step 10, from a level shared by its seed (common random numbers); its
    val/reward/shapes does not move (a metric read by mistake would show no difference)."""
    run = client.create_run(exp, run_name=name, tags={"ground_truth": "val/reward/tiny_clip", "method": method} | (tags or {}))
    rid = run.info.run_id
    client.log_param(rid, "method.name", method)
    client.log_param(rid, "seed", str(seed))
    before = 0.6 + 0.01 * seed
    for step, value in [(start, before), (5, before + delta / 3), (10, before + delta)]:
        client.log_metric(rid, "val/reward/tiny_clip", value, step=step)
        client.log_metric(rid, "val/reward/shapes", 0.5, step=step)
    client.set_terminated(rid, "FINISHED")


@pytest.fixture
def sweep(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("methods", artifact_location=str(tmp_path / "artifacts"))
    _run(client, exp, "egrpo s0 (first try)", "egrpo", 0, 0.5)  # replaced by the rerun below
    for seed, delta in BASE.items():
        _run(client, exp, f"dancegrpo s{seed}", "dancegrpo", seed, delta)
    for seed, delta in EGRPO.items():
        _run(client, exp, f"egrpo s{seed}", "egrpo", seed, delta)
    _run(client, exp, "flowgrpo s0", "flowgrpo", 0, 0.012)
    _run(client, exp, "flowgrpo s1 late", "flowgrpo", 1, 0.03, start=1)  # no evaluation at step 0
    return uri, client, exp


def test_cli_writes_paired_csv_and_section(sweep, tmp_path, capsys):
    import numpy as np
    from scipy import stats

    from flowrl.compare import main

    uri, client, exp = sweep
    out = tmp_path / "cmp"
    main(["--experiment", "methods", "--tracking-uri", uri, "--out", str(out), "--paired-by", "seed"]
         + ["--baseline", "method=dancegrpo", "--delta", "0.01"])  # fmt: skip
    printed = capsys.readouterr().out
    with open(out / "paired.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_HEADER
    got = {r[0]: dict(zip(CSV_HEADER, r)) for r in rows[1:]}
    assert list(got) == ["egrpo", "flowgrpo"]  # largest mean difference first; not the baseline itself
    assert {r["baseline"] for r in got.values()} == {"dancegrpo"}
    assert {r["metric"] for r in got.values()} == {"val/reward/tiny_clip"}  # from the runs' ground_truth tag

    egrpo = got["egrpo"]
    a, b = [EGRPO[s] for s in (0, 1, 2)], [BASE[s] for s in (0, 1, 2)]
    test = stats.ttest_rel(a, b)
    d = np.subtract(a, b)
    low, high = stats.t.interval(0.95, 2, loc=d.mean(), scale=stats.sem(d))
    assert int(egrpo["n_pairs"]) == 3
    assert float(egrpo["mean_diff"]) == pytest.approx(d.mean(), abs=1e-9)  # 0.036667: not the first try's 0.5
    assert float(egrpo["ci_low"]) == pytest.approx(low, abs=1e-9) and float(egrpo["ci_high"]) == pytest.approx(high, abs=1e-9)
    assert float(egrpo["p_value"]) == pytest.approx(test.pvalue, rel=1e-6)
    # s_d = 0.0104083 (differences 0.04, 0.025, 0.045), δ = 0.01: 7.848879 * 1.0833 = 8.503 -> 9
    assert d.std(ddof=1) == pytest.approx(0.0104083, rel=1e-5) and egrpo["seeds_needed"] == "9"
    flow = got["flowgrpo"]  # one pair: a difference, nothing else
    assert flow["n_pairs"] == "1" and float(flow["mean_diff"]) == pytest.approx(0.012 - 0.010, abs=1e-9)
    assert [flow[k] for k in ("ci_low", "ci_high", "p_value", "seeds_needed")] == ["NaN"] * 4

    md = (out / "table.md").read_text()
    assert md.strip() in printed
    section = md.split("## Paired comparison")[1].split("\n## ")[0]
    assert "**dancegrpo**" in section and "`val/reward/tiny_clip` (the runs' `ground_truth` tag)" in section
    assert "δ = 0.01" in section
    unpaired = section.split("### Unpaired runs")[1]
    for run, reason in [
        ("egrpo s5", "no baseline run"),
        ("egrpo s0 (first try)", "older run of this pair"),
        ("flowgrpo s1 late", "no value at step 0"),
        ("dancegrpo s3", "baseline run, no partner"),
    ]:
        assert any(run in line and reason in line for line in unpaired.splitlines()), (run, reason)
    flow_line = next(line for line in section.splitlines() if line.startswith("| flowgrpo"))
    assert flow_line.count("—") >= 4  # CI (both ends), p, s_d, seeds: no estimate from one pair
    # paired.csv is logged with the summary run, like table.md
    from flowrl.analysis import SUMMARY_TAG

    summary = [r for r in client.search_runs([exp]) if r.data.tags.get(SUMMARY_TAG) == "true"]
    assert len(summary) == 1 and {"paired.csv", "table.md"} <= {a.path for a in client.list_artifacts(summary[0].info.run_id)}
    assert summary[0].data.params["baseline"] == "dancegrpo" and summary[0].data.params["metric"] == "val/reward/tiny_clip"


def test_cli_bad_baseline_is_one_error_line_and_exit_2(sweep, tmp_path, capsys):
    from flowrl.compare import main

    uri, _, _ = sweep
    out = tmp_path / "cmp"
    base = ["--experiment", "methods", "--tracking-uri", uri, "--out", str(out), "--no-summary-run"]
    for baseline, message in [
        ("method=nope", "flowrl.compare: --baseline method.name=nope matches no group (groups: "),
        ("tau=2.2", "flowrl.compare: --baseline key 'tau' is not a grouping key (grouped by method.name)"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--baseline", baseline])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert not out.exists()  # nothing written
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--baseline", "method=dancegrpo", "--paired-by", "nope"])
    assert exit_.value.code == 2 and "--paired-by 'nope'" in capsys.readouterr().err


def test_compare_with_an_explicit_metric_and_without_a_baseline(sweep, tmp_path):
    from flowrl.analysis import compare

    uri, _, _ = sweep
    result = compare(
        "methods", "val/reward/shapes", out_dir=tmp_path / "a", tracking_uri=uri, log_summary=False, baseline="method=dancegrpo"
    )
    assert result["metric"] == "val/reward/shapes"
    assert list(result["paired"]["mean_diff"]) == [0.0, 0.0]  # shapes never moves: no difference
    assert "(--metric)" in result["markdown"]
    plain = compare("methods", out_dir=tmp_path / "b", tracking_uri=uri, log_summary=False)
    assert plain["paired"] is None and "Paired comparison" not in plain["markdown"]
    assert not (tmp_path / "b" / "paired.csv").exists() and plain["metric"] == "val/reward/tiny_clip"
