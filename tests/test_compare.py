"""flowrl.compare: finished MLflow runs -> one table of before/after held-out rewards."""

import pytest


def test_runs_table_from_a_tracked_run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.tracking.MlflowClient(uri)
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
