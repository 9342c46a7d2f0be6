"""compare's plots and summary run (issue 22): overlapping groups stay visible and coinciding ones
say so, bars start from a stated baseline, no CI caps for one seed, a re-run replaces its own
summary run. Hand-made frames, files under tmp_path only."""

import math

import pandas as pd
import pytest

from flowrl.analysis.plots import coinciding, offsets, plot_ablation, plot_final, plot_reward_vs_nfe

METRIC = "val/reward/shapes"
PNG = b"\x89PNG\r\n\x1a\n"


def _values(rows):
    """rows: (run_id, {param: value}, first, last)."""
    return pd.DataFrame(
        [
            {"run_id": rid, **{f"params.{k}": v for k, v in params.items()}, f"{METRIC} first": first, f"{METRIC} last": last}
            for rid, params, first, last in rows
        ]
    )


def test_identical_curves_are_offset_and_said_to_coincide(tmp_path):
    # two methods whose runs logged the same curve (issue 22: one hid the other)
    values = _values([("a", {"method.name": "egrpo"}, 0.6, 0.7), ("b", {"method.name": "g2rpo"}, 0.6, 0.7)])
    curve = [(0.0, 0.6), (100.0, 0.65), (200.0, 0.7)]
    info = plot_reward_vs_nfe(tmp_path / "r.png", values, ["method.name"], {"a": curve, "b": curve}, True, METRIC)
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG
    assert info["offsets"] == pytest.approx([-1.2, 1.2])  # 1.2% of the 200-NFE span each side
    assert info["coinciding"] == {"egrpo (n=1)": ["g2rpo (n=1)"], "g2rpo (n=1)": ["egrpo (n=1)"]}
    # different curves do not coincide; one group is not offset
    assert coinciding({"x": ([0, 1], [0.5, 0.6]), "y": ([0, 1], [0.5, 0.9])}, 0.4) == {}
    assert offsets(1, 5.0) == [0.0] and offsets(3, 1.0) == [-1.0, 0.0, 1.0]


def _table(rows):
    """rows: (label, n, last, ci, delta)."""
    return pd.DataFrame(
        [{"_label": lbl, "n": n, "shapes": last, "shapes ±95% CI": ci, "Δshapes": delta} for lbl, n, last, ci, delta in rows]
    )


def test_final_bars_start_before_training_and_one_seed_has_no_ci(tmp_path):
    # issue 22: final.png's y-axis started near the data, so 0.0185 looked ten times bigger, with caps for n = 1
    table = _table([("egrpo", 3, 0.7060, 0.004, 0.0185), ("dancegrpo", 1, 0.6950, math.nan, 0.0075)])
    info = plot_final(tmp_path / "final.png", table, METRIC)
    assert info["baseline"] == "before" and info["bottoms"] == pytest.approx([0.6875, 0.6875])
    assert info["error_bars"] == 1  # egrpo's (n = 3) only
    assert (tmp_path / "final.png").read_bytes()[:8] == PNG
    # without the change (no first evaluation) the bars start at zero, and the axis says so
    info = plot_final(tmp_path / "zero.png", table.drop(columns=["Δshapes"]), METRIC)
    assert info["baseline"] == "zero" and info["bottoms"] == [0.0, 0.0]
    # one seed everywhere: no CI bar at all
    assert plot_final(tmp_path / "one.png", _table([("a", 1, 0.7, math.nan, 0.01)]), METRIC)["error_bars"] == 0


def test_ablation_offsets_lines_marks_the_before_value_and_no_caps_for_one_seed(tmp_path):
    rows = []
    for clip in ("1e-4", "1e-3"):  # two lines (clip_eps) over tau, identical results
        for tau in ("1.8", "2.2"):
            rows.append((f"{clip}{tau}", {"method.tau": tau, "method.clip_eps": clip}, 0.60, 0.70 if tau == "1.8" else 0.72))
    values = _values(rows)
    info = plot_ablation(tmp_path / "abl.png", values, ["method.tau", "method.clip_eps"], "method.tau", METRIC)
    assert (tmp_path / "abl.png").read_bytes()[:8] == PNG
    assert info["error_bars"] == 0  # n = 1 per point: no interval, no caps
    assert len(set(info["offsets"])) == 2 and info["baseline"] == pytest.approx(0.60)
    assert set(info["coinciding"]) == {"clip_eps=1e-4", "clip_eps=1e-3"}
    # two seeds per point: an interval each
    two = _values([(f"{r[0]}s{s}", {**r[1], "seed": str(s)}, r[2], r[3] + 0.01 * s) for r in rows for s in (0, 1)])
    assert plot_ablation(tmp_path / "abl2.png", two, ["method.tau", "method.clip_eps"], "method.tau", METRIC)["error_bars"] == 4


def test_a_rerun_of_compare_replaces_its_own_summary_run(tmp_path):
    import mlflow

    from flowrl.analysis import SUMMARY_TAG, compare

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.create_experiment("rerun", artifact_location=str(tmp_path / "artifacts"))
    for method in ("egrpo", "dancegrpo"):
        run = client.create_run(exp, run_name=method)
        client.log_param(run.info.run_id, "method.name", method)
        for step, value in ((0, 0.6), (10, 0.7)):
            client.log_metric(run.info.run_id, METRIC, value, step=step)
            client.log_metric(run.info.run_id, "val/reward/jpeg", -value, step=step)
        client.set_terminated(run.info.run_id, "FINISHED")

    def summaries():
        return [r for r in client.search_runs([exp]) if r.data.tags.get(SUMMARY_TAG) == "true"]

    first = compare("rerun", metric=METRIC, out_dir=tmp_path / "c1", tracking_uri=uri)["summary_run_id"]
    second = compare("rerun", metric=METRIC, out_dir=tmp_path / "c2", tracking_uri=uri)["summary_run_id"]
    assert [r.info.run_id for r in summaries()] == [second]
    assert client.get_run(first).info.lifecycle_stage == "deleted"  # MLflow's soft delete: restorable in the UI
    # another metric is another comparison: its summary stands beside this one, and is replaced in turn
    other = compare("rerun", metric="val/reward/jpeg", out_dir=tmp_path / "c3", tracking_uri=uri)["summary_run_id"]
    again = compare("rerun", metric="val/reward/jpeg", out_dir=tmp_path / "c4", tracking_uri=uri)["summary_run_id"]
    assert {r.info.run_id for r in summaries()} == {second, again} and other != again
