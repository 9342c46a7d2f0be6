"""flowrl.compare: MLflow runs -> groups of seeds (mean, Student t 95% CI), table.md, plots, a summary run."""

import math
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


def test_runs_table_from_a_tracked_run(tmp_path):
    # the older single table (one row per finished run), still what `--out FILE.md` writes
    uri, client = _store(tmp_path)
    exp = client.create_experiment("study", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, run_name="egrpo G12")
    client.log_param(run.info.run_id, "method.name", "egrpo")
    # first evaluation 0.70 (before training), last 0.75: delta +0.05
    for step, value in [(0, 0.70), (9, 0.72), (19, 0.75)]:
        client.log_metric(run.info.run_id, "val/reward/shapes", value, step=step)
    for step, value in [(0, 10.0), (1, 12.0)]:
        client.log_metric(run.info.run_id, "perf/iteration_s", value, step=step)
    client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(exp, run_name="crashed")
    client.set_terminated(failed.info.run_id, "FAILED")

    from flowrl.compare import main, runs_table, to_markdown

    table = runs_table("study", uri)
    assert list(table["run"]) == ["egrpo G12"]  # unfinished runs are left out
    row = table.iloc[0]
    assert row["shapes before"] == 0.70 and row["shapes after"] == 0.75 and row["shapes delta"] == pytest.approx(0.05)
    assert row["s/iter"] == 11.0
    md = to_markdown(table)
    assert md.splitlines()[0].startswith("| run | method |") and "egrpo G12" in md
    out = tmp_path / "t.md"
    main(["--experiment", "study", "--tracking-uri", uri, "--out", str(out)])
    assert out.read_text().strip() == md
    with pytest.raises(SystemExit, match="no MLflow experiment"):
        runs_table("nope", uri)


def test_mean_ci_is_the_student_t_interval():
    from flowrl.compare import mean_ci

    mean, half, n = mean_ci([0.70, 0.72, 0.74])
    # s = 0.02, t(0.975, 2) = 4.302653: half = 4.302653 * 0.02 / sqrt(3)
    assert (mean, n) == (pytest.approx(0.72), 3) and half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    mean, half, n = mean_ci([0.5, float("nan"), None])
    assert (mean, n) == (0.5, 1) and math.isnan(half)  # one seed: no interval
    assert mean_ci([])[2] == 0


def test_collapse_lists_and_swept_keys():
    import pandas as pd

    from flowrl.compare import collapse_lists, swept_keys

    assert collapse_lists({"method.granularities.0": "1", "method.granularities.1": "2", "seed": "0"}) == {
        "method.granularities": "[1, 2]",
        "seed": "0",
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
    # two knobs crossed
    crossed = [{"method.name": "egrpo", "method.tau": t, "method.clip_eps": c} for t in ("1.8", "2.2") for c in ("1e-4", "1e-3")]
    assert swept_keys(frame(crossed)) == ["method.tau", "method.clip_eps"]


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
    from flowrl.compare import SUMMARY_TAG

    summaries = [r for r in client.search_runs([exp]) if r.data.tags.get(SUMMARY_TAG) == "true"]
    assert len(summaries) == 2  # the older one and this one
    new = max(summaries, key=lambda r: r.info.start_time)
    assert new.info.run_name == "compare" and new.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(new.info.run_id)} == {p.name for p in out.iterdir()}
    # the UI view it shares: runs grouped by the method tag
    view = client.get_experiment(exp).tags["mlflow.sharedViewState.flowrl-compare"]
    assert '{"mode": "param", "groupByData": "method.name"}' in view  # these runs have no method tag: the param
    assert f"#/experiments/{exp}/runs?viewStateShareKey=flowrl-compare" in md


def test_compare_ablation_and_step_axis_without_nfe(tmp_path):
    uri, client = _store(tmp_path)
    exp = client.create_experiment("tau", artifact_location=str(tmp_path / "artifacts"))
    for tau in ("1.8", "2.2", "2.6"):
        for seed in (0, 1):
            final = 0.7 + 0.01 * float(tau) + 0.001 * seed
            params = {"method.name": "egrpo", "method.tau": tau, "seed": str(seed), "reward.name": "tiny_clip"}
            curves = {"val/reward/shapes": [(0, 0.65), (10, final)], "val/reward/tiny_clip": [(0, 0.7), (10, 0.8)]}
            _run(client, exp, f"egrpo tau{tau} s{seed}", params, curves, tags={"method": "egrpo", "tau": tau}, nfe_per_step=None)

    from flowrl.compare import compare

    result = compare("tau", by=["tau"], out_dir=tmp_path / "cmp", tracking_uri=uri, log_summary=False)
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


def test_import_is_cheap():
    code = "import sys, flowrl.compare; print(*(m in sys.modules for m in ('torch', 'mlflow', 'matplotlib', 'pandas')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert out == ["False"] * 4


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
    assert {t["budget"] for t in tags} == {"iterations=1"} and {t["group_size"] for t in tags} == {"4"}
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
