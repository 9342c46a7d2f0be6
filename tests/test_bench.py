"""`python -m flowrl.bench --quick` end to end into a tmp dir (experiments/bench is left alone)."""

import csv

from flowrl.bench import METHODS, main


def test_bench_quick_tables_and_equal_nfe(tmp_path):
    rows = main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "results.md").read_text()

    # machine description and the four sections, each with one row per method / patch size
    assert "Machine: " in text and " cores, " in text and "torch " in text and "device cpu" in text
    for heading in (
        "## (a) Where the engine's rollout time goes",
        "## (b) flowrl's engine vs a peer-style loop",
        "## (c) Budget",
    ):
        assert heading in text
    for header in (
        "| method | rollout s | forwards s | forward share |",
        "| method | NFE (papers) | engine evals | peer evals |",
    ):
        table = text.split(header)[1].split("\n\n")[0]
        assert [line.split(" | ")[0].strip("| ") for line in table.strip().splitlines()[2:]] == list(METHODS)
    assert "| tiny_flux patch 4 (64 tokens) |" in text and "1.00x" in text

    with open(tmp_path / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["method"] for r in csv_rows if r["section"] == "methods"] == list(METHODS)
    assert len([r for r in csv_rows if r["section"] == "patch_size"]) == 2

    by_method = {r["method"]: r for r in rows}
    for r in rows:
        # same work: the peer loop spends exactly the papers' NFE, the engine is charged it
        assert r["peer_evals"] == r["nfe_papers"] == r["engine_nfe_charged"], r["method"]
        assert r["images"] == r["peer_reward_queries"] == r["reward_queries_per_prompt"]
        assert r["reward_shape"] == r["peer_reward_shape"]
        assert 0 < r["forward_share"] <= 1 and r["rollout_s"] > 0 and r["peer_s"] > 0 and r["iteration_s"] >= r["rollout_s"]
    # the engine actually spends fewer evaluations where G jumps leave one anchor state, no fewer elsewhere
    assert by_method["egrpo"]["engine_evals"] < by_method["egrpo"]["peer_evals"]
    assert by_method["dancegrpo"]["engine_evals"] == by_method["dancegrpo"]["peer_evals"]
