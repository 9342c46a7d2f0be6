"""flowrl.compare and flowrl.analysis: MLflow runs -> groups of seeds (mean, Student t 95% CI), table.md, plots,
the MLflow UI view, a summary run."""

import math
import os
import subprocess
import sys

import pytest


def _store(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, mlflow.tracking.MlflowClient(uri)


def _run(client, exp, name, params, curves, status="FINISHED", tags=None, nfe_per_step=100.0):
    """A run with params and val/reward/* curves {key: [(step, value)]}; val/nfe_total at each step."""
    run = client.create_run(exp, run_name=name, tags=tags or {})
    rid = run.info.run_id
    for key, value in params.items():
        client.log_param(rid, key, value)
    steps = set()
    for key, points in curves.items():
        for step, value in points:
            client.log_metric(rid, key, value, step=step)
            steps.add(step)
    if nfe_per_step is not None:
        for step in sorted(steps):
            client.log_metric(rid, "val/nfe_total", nfe_per_step * step, step=step)
    client.log_metric(rid, "train/reward/tiny_clip", 0.5, step=0)
    if status != "RUNNING":
        client.set_terminated(rid, status)
    return rid


def test_mean_ci_is_the_student_t_interval():
    from flowrl.analysis.stats import mean_ci

    mean, half, n = mean_ci([0.70, 0.72, 0.74])
    # s = 0.02, t(0.975, 2) = 4.302653: half = 4.302653 * 0.02 / sqrt(3)
    assert (mean, n) == (pytest.approx(0.72), 3) and half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    mean, half, n = mean_ci([0.5, float("nan"), None, float("inf")])
    assert (mean, n) == (0.5, 1) and math.isnan(half)  # one seed: no interval
    assert mean_ci([0.3, 0.3, 0.3]) == (pytest.approx(0.3), 0.0, 3)  # no spread: a point, not NaN
    mean, half, n = mean_ci([])
    assert n == 0 and math.isnan(mean) and math.isnan(half)


@pytest.mark.parametrize("level", [0.95, 0.9, 0.99])
@pytest.mark.parametrize("sample", [[0.70, 0.72, 0.74], [1.0, 2.0], [0.1, 0.5, 0.2, 0.9, 0.4, 0.35], [-3.0, 4.5, 0.25, 7.0]])
def test_mean_ci_matches_scipy_t_interval(sample, level):
    import numpy as np
    from scipy import stats

    from flowrl.analysis.stats import mean_ci

    mean, half, n = mean_ci(sample, level)
    low, high = stats.t.interval(level, len(sample) - 1, loc=np.mean(sample), scale=stats.sem(sample))
    assert n == len(sample) and mean == pytest.approx(np.mean(sample), rel=1e-12)
    assert (mean - half, mean + half) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_collapse_lists_and_swept_keys():
    import pandas as pd

    from flowrl.analysis.runs import collapse_lists
    from flowrl.analysis.tables import swept_keys

    assert collapse_lists({"method.levels.0": "1", "method.levels.1": "2", "seed": "0"}) == {
        "method.levels": "[1, 2]",
        "seed": "0",
    }
    assert collapse_lists({"reward.weights.0": "1", "reward.weights.2": "2"}) == {
        "reward.weights.0": "1",
        "reward.weights.2": "2",
    }

    def frame(rows):
        return pd.DataFrame([{f"params.{k}": v for k, v in r.items()} for r in rows])

    # a methods sweep: each method has its own G and only E-GRPO a tau -> grouped by method only
    methods = [
        {"method.name": m, "method.group_size": g, "method.tau": t, "seed": s, "paths.output_dir": f"o{m}{s}"}
        for m, g, t in [("egrpo", "12", "2.2"), ("flowgrpo", "24", None)]
        for s in "01"
    ]
    assert swept_keys(frame(methods)) == ["method.name"]
    # a tau sweep of one method
    taus = [{"method.name": "egrpo", "method.tau": t, "method.group_size": "12", "seed": s} for t in ("1.8", "2.2") for s in "01"]
    assert swept_keys(frame(taus)) == ["method.tau"]
    # two knobs crossed: the shared preferred key first, then the other
    crossed = [{"method.name": "egrpo", "method.tau": t, "method.clip_eps": c} for t in ("1.8", "2.2") for c in ("1e-4", "1e-3")]
    assert swept_keys(frame(crossed)) == ["method.clip_eps", "method.tau"]
    # seed varies in every sweep and is never a key; without differences, no key
    assert swept_keys(frame([{"method.name": "egrpo", "seed": s} for s in "012"])) == []


class KnobbedStepScheduler:
    """Stands for a step-scheduler class: swept_keys reads only its `sweep_knobs`."""

    sweep_knobs = ("b",)


class OtherStepScheduler:
    sweep_knobs = ("c", "b")


class PlainStepScheduler:
    """No sweep_knobs attribute: declares none."""


def test_swept_keys_prefer_the_step_schedulers_knobs():
    import pandas as pd

    from flowrl.analysis.tables import preferred_keys, swept_keys

    here = __name__  # get_class imports this module by the name pytest gave it
    # method.a and method.b change together (each fixes the other): the first candidate is kept
    rows = [{"method.name": "m", "method.a": a, "method.b": b, "seed": s} for a, b in (("1", "x"), ("2", "y")) for s in "01"]
    plain = pd.DataFrame([{f"params.{k}": v for k, v in r.items()} for r in rows])
    assert swept_keys(plain) == ["method.a"]  # no step scheduler: alphabetical
    knobbed = plain.assign(**{"params.method.step_scheduler._target_": f"{here}.KnobbedStepScheduler"})
    assert swept_keys(knobbed) == ["method.b"]  # the declared knob wins
    # ... but not over the shared keys: G changing with b is reported as G
    assert swept_keys(knobbed.assign(**{"params.method.group_size": ["4", "4", "8", "8"]})) == ["method.group_size"]
    # a methods sweep: every class's knobs, in the order of the runs, each once, after the shared keys
    both = knobbed.assign(
        **{
            "params.method.step_scheduler._target_": [
                f"{here}.KnobbedStepScheduler",
                f"{here}.OtherStepScheduler",
                f"{here}.PlainStepScheduler",
                f"{here}.OtherStepScheduler",
            ]
        }
    )
    assert preferred_keys(both) == ["method.name", "method.group_size", "method.clip_eps", "method.b", "method.c"]
    # a real step scheduler, by the class path training logs: its declared knobs follow the shared keys
    from hydra.utils import get_class

    real = "flowrl.step_schedulers.entropy_merge.EntropyMergeStepScheduler"
    declared = [f"method.{k}" for k in get_class(real).sweep_knobs]
    assert declared and preferred_keys(plain.assign(**{"params.method.step_scheduler._target_": real}))[3:] == declared
    # a class that no longer imports (a run from before it moved): a warning, the keys still found
    gone = plain.assign(**{"params.method.step_scheduler._target_": "flowrl.no_such_module.GoneStepScheduler"})
    with pytest.warns(UserWarning, match="does not import"):
        assert swept_keys(gone) == ["method.a"]


def test_resolve_key_aliases_and_method_prefix():
    from flowrl.analysis.tables import resolve_key

    columns = ["params.method.name", "params.method.group_size", "params.method.tau", "params.seed", "params.train.lr"]
    assert resolve_key("method", columns) == "method.name"
    assert resolve_key("G", columns) == "method.group_size"
    assert resolve_key("tau", columns) == "method.tau"  # a bare name: tried as is, then under method.
    assert resolve_key("seed", columns) == "seed"
    assert resolve_key("train.lr", columns) == "train.lr"
    with pytest.raises(SystemExit, match="no param 'lr'"):
        resolve_key("lr", columns)


def test_shared_view_groups_by_run_tags_where_the_runs_carry_them():
    import json

    import pandas as pd

    from flowrl.analysis.mlflow_view import SHARED_VIEW_KEY, SHARED_VIEW_PREFIX, run_tag, share_grouped_view

    assert [run_tag(k) for k in ("method.name", "method.tau", "method.group_size", "seed")] == [
        "method",
        "tau",
        "group_size",
        "seed",
    ]

    class Client:
        tags = {}

        def set_experiment_tag(self, experiment_id, key, value):
            self.tags[(experiment_id, key)] = value

    class Experiment:
        experiment_id = "7"

    runs = pd.DataFrame(
        columns=[
            "params.method.name",
            "params.method.tau",
            "params.train.lr",
            "tags.tau",
            "tags.seed",
            "metrics.val/reward/shapes",
        ]
    )
    client = Client()
    path = share_grouped_view(client, Experiment(), ["method.name", "method.tau", "train.lr"], runs, "val/reward/shapes", True)
    assert path == f"#/experiments/7/runs?viewStateShareKey={SHARED_VIEW_KEY}"
    state = json.loads(client.tags[("7", SHARED_VIEW_PREFIX + SHARED_VIEW_KEY)])
    assert state["groupBy"]["groupByKeys"] == [
        {"mode": "param", "groupByData": "method.name"},  # no `method` tag on these runs
        {"mode": "tag", "groupByData": "tau"},
        {"mode": "param", "groupByData": "train.lr"},
    ]
    assert state["selectedColumns"] == ["metrics.`val/reward/shapes`", "tags.`seed`"]
    assert state["compareRunCharts"][0]["selectedXAxisMetricKey"] == "val/nfe_total"


def test_compare_groups_seeds_plots_and_logs_a_summary_run(tmp_path, capsys):
    uri, client = _store(tmp_path)
    exp = client.create_experiment("methods", artifact_location=str(tmp_path / "artifacts"))
    shapes = {"egrpo": [0.70, 0.72, 0.74], "dancegrpo": [0.69, 0.70, 0.71]}  # last evaluation per seed
    for method, finals in shapes.items():
        for seed, final in enumerate(finals):
            params = {"method.name": method, "seed": str(seed), "method.group_size": "12" if method == "egrpo" else "8"}
            curves = {
                "val/reward/shapes": [(0, 0.65), (5, (0.65 + final) / 2), (10, final)],
                "val/reward/tiny_clip": [(0, 0.77), (10, 0.78 + 0.01 * seed)],
            }
            _run(client, exp, f"{method} s{seed}", params, curves)
    _run(client, exp, "crashed s9", {"method.name": "egrpo", "seed": "9"}, {"val/reward/shapes": [(0, 0.1)]}, status="FAILED")
    _run(client, exp, "killed s8", {"method.name": "egrpo", "seed": "8"}, {"val/reward/shapes": [(0, 0.1)]}, status="KILLED")
    _run(
        client, exp, "still going", {"method.name": "dancegrpo", "seed": "7"}, {"val/reward/shapes": [(0, 0.1)]}, status="RUNNING"
    )
    _run(client, exp, "compare", {}, {"val/reward/shapes": [(0, 9.0)]}, tags={"flowrl.summary": "true"})  # an older summary

    from flowrl.compare import main

    out = tmp_path / "cmp"
    main(["--experiment", "methods", "--tracking-uri", uri, "--out", str(out)])
    printed = capsys.readouterr().out
    md = (out / "table.md").read_text()
    assert md.strip() in printed
    assert {p.name for p in out.iterdir()} == {"table.md", "reward_vs_nfe.png", "final.png", "proxy_vs_truth.png"}
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # grouped by method (G differs too, but is fixed by the method), best shapes first
    header = md.split("\n## ")[0]
    table_lines = [line for line in header.splitlines() if line.startswith("|")]
    cols = [c.strip() for c in table_lines[0].strip("|").split("|")]
    assert cols[:3] == ["method", "n", "seeds"] and "shapes ±95% CI" in cols and "Δshapes ±95% CI" in cols
    assert "G" not in cols and "group_size" not in cols
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table_lines[2:]]
    assert [r[0] for r in rows] == ["egrpo", "dancegrpo"] and [r[1] for r in rows] == ["3", "3"]
    egrpo = dict(zip(cols, rows[0]))
    assert float(egrpo["shapes"]) == pytest.approx(0.72, abs=1e-4)
    assert float(egrpo["shapes ±95% CI"]) == pytest.approx(4.302653 * 0.02 / math.sqrt(3), abs=1e-4)
    assert float(egrpo["Δshapes"]) == pytest.approx(0.07, abs=1e-4)
    assert float(egrpo["NFE"]) == pytest.approx(1000.0)

    # failed / unfinished runs listed apart, not averaged in; the old summary run not at all
    left = md.split("## Not compared (not FINISHED)")[1].split("## ")[0]
    for name, status in [("crashed s9", "FAILED"), ("killed s8", "KILLED"), ("still going", "RUNNING")]:
        assert name in left and status in left
    assert "crashed s9" not in header and "compare" not in md.split("## Runs")[1].split("## Not")[0]

    # the summary run: named compare, tagged, holding every file
    from flowrl.analysis import SUMMARY_TAG

    summaries = [r for r in client.search_runs([exp]) if r.data.tags.get(SUMMARY_TAG) == "true"]
    assert len(summaries) == 1  # it replaced the older one (deleted: MLflow's soft delete, restorable)
    new = summaries[0]
    assert new.info.run_name == "compare" and new.info.status == "FINISHED"
    old = new.data.tags["flowrl.summary.replaces"]
    assert client.get_run(old).info.lifecycle_stage == "deleted"
    assert {a.path for a in client.list_artifacts(new.info.run_id)} == {p.name for p in out.iterdir()}
    # the UI view it shares: runs grouped by the method tag
    view = client.get_experiment(exp).tags["mlflow.sharedViewState.flowrl-compare"]
    assert '{"mode": "param", "groupByData": "method.name"}' in view  # these runs have no method tag: the param
    assert f"#/experiments/{exp}/runs?viewStateShareKey=flowrl-compare" in md


def test_compare_ablation_and_step_axis_without_nfe(tmp_path, monkeypatch):
    import mlflow

    uri, client = _store(tmp_path)
    exp = client.create_experiment("tau", artifact_location=str(tmp_path / "artifacts"))
    for tau in ("1.8", "2.2", "2.6"):
        for seed in (0, 1):
            final = 0.7 + 0.01 * float(tau) + 0.001 * seed
            params = {"method.name": "egrpo", "method.tau": tau, "seed": str(seed), "reward.name": "tiny_clip"}
            params |= {"method.levels.0": "1", "method.levels.1": "2"}  # a list, as training flattens it
            curves = {"val/reward/shapes": [(0, 0.65), (10, final)], "val/reward/tiny_clip": [(0, 0.7), (10, 0.8)]}
            _run(client, exp, f"egrpo tau{tau} s{seed}", params, curves, tags={"method": "egrpo", "tau": tau}, nfe_per_step=None)

    from flowrl.analysis import compare

    # another store in the environment (a later run in this process would log there): the search
    # on `uri` must leave both the environment and MLflow's process-wide URI as they were
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    before = mlflow.get_tracking_uri()
    result = compare("tau", by=["tau"], out_dir=tmp_path / "cmp", tracking_uri=uri, log_summary=False)
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/elsewhere.db" and mlflow.get_tracking_uri() == before
    assert list(result["runs"]["run"]) == [f"egrpo tau{t} s{s}" for t in ("1.8", "2.2", "2.6") for s in (0, 1)]  # oldest first
    assert set(result["runs"]["params.method.levels"]) == {"[1, 2]"} and "params.method.levels.0" not in result["runs"]
    assert result["keys"] == ["method.tau"] and result["summary_run_id"] is None
    assert list(result["table"]["tau"]) == ["2.6", "2.2", "1.8"] and list(result["table"]["n"]) == [2, 2, 2]
    names = {p.name for p in result["files"]}
    assert {"ablation_tau.png", "reward_vs_nfe.png", "proxy_vs_truth.png"} <= names
    assert "step (`val/nfe_total` not logged)" in result["markdown"]
    assert set(result["runs"]["proxy key"]) == {"val/reward/tiny_clip"}  # reward.name, read held-out
    view = client.get_experiment(exp).tags["mlflow.sharedViewState.flowrl-compare"]
    assert '"mode": "tag", "groupByData": "tau"' in view
    with pytest.raises(SystemExit, match="no param"):
        compare("tau", by=["nope"], out_dir=tmp_path / "x", tracking_uri=uri, log_summary=False)
    with pytest.raises(SystemExit, match="no MLflow experiment named 'nope'"):
        compare("nope", out_dir=tmp_path / "x", tracking_uri=uri, log_summary=False)


def test_import_is_cheap():
    heavy = ("torch", "mlflow", "matplotlib", "pandas", "scipy", "hydra")
    code = f"import sys, flowrl.compare; print(*(m in sys.modules for m in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == ["False"] * len(heavy)


@pytest.mark.slow
def test_smoke_sweep_then_compare_end_to_end(smoke_sweep, tmp_path):
    # sweeps/methods.sh (SMOKE, 2 methods x 2 seeds) -> python -m flowrl.compare -> table + plots
    from mlflow.tracking import MlflowClient

    uri, experiment, _ = smoke_sweep
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED' and tags.sweep = 'methods'")
    assert len(runs) == 4
    tags = [r.data.tags for r in runs]
    assert sorted((t["method"], t["seed"]) for t in tags) == [
        ("dancegrpo", "0"),
        ("dancegrpo", "1"),
        ("egrpo", "0"),
        ("egrpo", "1"),
    ]
    assert {t["budget"] for t in tags} == {"iterations=1"} and {t["group_size"] for t in tags} == {
        "2"
    }  # smoke=true: each step scheduler's small_overrides (G 2)
    assert {t.get("tau") for t in tags} == {"2.2", None}  # E-GRPO's tau; DanceGRPO has none
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # a crashed run and a run that never ended, in the same experiment
    for name, status in [("crashed egrpo s5", "FAILED"), ("lost dancegrpo s6", None)]:
        run = client.create_run(exp.experiment_id, run_name=name, tags={"method": name.split()[1]})
        client.log_param(run.info.run_id, "method.name", name.split()[1])
        client.log_metric(run.info.run_id, "val/reward/shapes", 0.0, step=0)
        if status:
            client.set_terminated(run.info.run_id, status)

    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "flowrl.compare", "--experiment", experiment, "--out", str(out), "--tracking-uri", uri]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "table.md").read_text()
    assert md.strip() in proc.stdout
    assert {"table.md", "reward_vs_nfe.png", "final.png", "proxy_vs_truth.png"} <= {p.name for p in out.iterdir()}
    header = md.split("\n## ")[0]
    table = [line for line in header.splitlines() if line.startswith("|")]
    cols = [c.strip() for c in table[0].strip("|").split("|")]
    assert cols[:3] == ["method", "n", "seeds"] and "shapes ±95% CI" in cols and "Δshapes ±95% CI" in cols
    rows = {r[0]: dict(zip(cols, r)) for r in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert set(rows) == {"egrpo", "dancegrpo"} and {r["n"] for r in rows.values()} == {"2"}
    assert {r["seeds"] for r in rows.values()} == {"0,1"}
    left = md.split("## Not compared (not FINISHED)")[1].split("## ")[0]
    assert "crashed egrpo s5" in left and "FAILED" in left and "lost dancegrpo s6" in left and "RUNNING" in left
    assert "crashed" not in header and "lost" not in header
    assert "NFE (`val/nfe_total`)" in md  # training logs the NFE spent with every evaluation
    summary = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("flowrl.summary") == "true"]
    assert len(summary) == 1 and {a.path for a in client.list_artifacts(summary[0].info.run_id)} >= {"table.md", "final.png"}


def test_eval_noise_against_seed_spread(tmp_path):
    # eval SE = (high - low) / (2 x 1.96) of the last evaluation's bootstrap interval, averaged over
    # runs; seed SD = the sample SD of the final scores over seeds (hand-worked below)
    uri, client = _store(tmp_path)
    exp = client.create_experiment("noise", artifact_location=str(tmp_path / "artifacts"))
    finals, halfwidths = [0.30, 0.34, 0.38], [0.0196, 0.0392, 0.0588]
    for seed, (final, hw) in enumerate(zip(finals, halfwidths)):
        curves = {
            "val/reward/geneval": [(0, 0.25), (10, final)],
            "val_ci/geneval/low": [(0, 0.2), (10, final - hw)],
            "val_ci/geneval/high": [(0, 0.3), (10, final + hw)],
        }
        _run(
            client,
            exp,
            f"s{seed}",
            {"method.name": "egrpo", "seed": str(seed)},
            curves,
            tags={"ground_truth": "val/reward/geneval"},
        )
    from flowrl.analysis import compare

    table = compare("noise", tracking_uri=uri, out_dir=tmp_path / "cmp", log_summary=False)["table"]
    row = table.iloc[0]
    assert row["geneval eval SE"] == pytest.approx((0.01 + 0.02 + 0.03) / 3, rel=1e-3)  # 0.0196 / 1.96 = 0.01 ...
    assert row["geneval seed SD"] == pytest.approx(0.04, rel=1e-6)  # SD of 0.30, 0.34, 0.38
    assert "eval SE <= seed SD / 4" in (tmp_path / "cmp" / "table.md").read_text()


def test_per_category_table_when_the_ground_truth_is_a_category_overall(tmp_path):
    # GenEval's categories of the ground-truth reward, per group: last value (mean over seeds) and
    # its change since the first evaluation with the t half-width. Worked by hand: group "a" has
    # colors 0.5 -> 0.7 and 0.5 -> 0.9 (Δ 0.2, 0.4: mean 0.3, s 0.1414, t(.975, 1) 12.706 x s / sqrt 2
    # = 1.2706); position stays 0 -> 0.
    from flowrl.analysis import compare

    uri, client = _store(tmp_path)
    exp = client.create_experiment("cats")
    gt = "val/category/geneval/overall"
    for method, seed, colors, position in [
        ("a", "0", 0.7, 0.0),
        ("a", "1", 0.9, 0.0),
        ("b", "0", 0.5, 0.25),
        ("b", "1", 0.5, 0.25),
    ]:
        curves = {
            "val/reward/geneval": [(0, 0.25), (2, (colors + position) / 2)],
            "val/category/geneval/colors": [(0, 0.5), (2, colors)],
            "val/category/geneval/position": [(0, 0.0), (2, position)],
            gt: [(0, 0.25), (2, (colors + position) / 2)],
        }
        _run(client, exp, f"{method}{seed}", {"method.name": method, "seed": seed}, curves, tags={"ground_truth": gt})
    got = compare("cats", by=["method.name"], out_dir=tmp_path / "out", tracking_uri=uri, log_summary=False)
    text = got["markdown"]
    assert "## Per category (`geneval`" in text
    section = text.split("## Per category")[1].split("##")[0]
    header, _, row_a, row_b = [line for line in section.splitlines() if line.startswith("|")][:4]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:3] == ["group", "n", "colors"] and cols[-3:] == ["overall", "Δoverall", "Δoverall ±95% CI"]
    a = dict(zip(cols, [c.strip() for c in row_a.strip("|").split("|")]))
    assert (a["group"], a["colors"], a["Δcolors"], a["Δposition"]) == ("a", "0.8000", "0.3000", "0.0000")
    assert float(a["Δcolors ±95% CI"]) == pytest.approx(12.7062 * 0.141421 / math.sqrt(2), abs=1e-3)
    b = dict(zip(cols, [c.strip() for c in row_b.strip("|").split("|")]))
    assert (b["position"], b["Δposition ±95% CI"]) == ("0.2500", "0.0000")
    # another metric: no category section
    other = compare(
        "cats", metric="val/reward/geneval", by=["method.name"], out_dir=tmp_path / "o2", tracking_uri=uri, log_summary=False
    )
    assert "## Per category" not in other["markdown"]


def test_proxy_vs_truth_reads_the_runs_ground_truth_tag(tmp_path):
    # the compositional world's runs: trained on the learned proxy, judged by the tag's metric
    # (val/category/geneval/overall); the plot's truth is that metric, not the shapes world's key
    from flowrl.analysis import compare

    uri, client = _store(tmp_path)
    exp = client.create_experiment("proxy", artifact_location=str(tmp_path / "artifacts"))
    truth = "val/category/geneval/overall"
    for seed, (proxy_end, truth_end) in enumerate([(0.60, 0.18), (0.62, 0.17)]):
        curves = {truth: [(0, 0.19), (10, truth_end)], "val/reward/tiny_clip": [(0, 0.55), (10, proxy_end)]}
        _run(client, exp, f"s{seed}", {"seed": str(seed)}, curves, tags={"ground_truth": truth})
    result = compare("proxy", tracking_uri=uri, out_dir=tmp_path / "cmp", log_summary=False)
    assert result["metric"] == truth
    values = result["runs"]  # the trained reward is tiny_clip (each run's train/reward/tiny_clip)
    assert sorted(values["truth Δ"].round(6)) == [-0.02, -0.01]
    assert sorted(values["proxy Δ"].round(6)) == [0.05, 0.07]
    assert (tmp_path / "cmp" / "proxy_vs_truth.png").exists()
    assert f"Δ trained reward against Δ `{truth}`" in result["markdown"]
