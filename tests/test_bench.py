"""`python -m benchmarks.bench --quick` end to end into a tmp dir (experiments/bench is left alone)."""

import csv

import pytest

from benchmarks.bench import METHODS, main


def test_bench_quick_tables_and_equal_nfe(tmp_path):
    rows = main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "results.md").read_text()

    # machine description and the four sections, each with one row per method / patch size
    assert "Machine: " in text and " cores, " in text and "torch " in text and "device cpu" in text
    for heading in (
        "## End to end: a flowrl iteration vs a peer-structured one",
        "## (a) Where the engine's rollout time goes",
        "## (b) flowrl's engine vs a peer-style loop",
        "## (c) Budget",
    ):
        assert heading in text
        table = [ln for ln in text.split(heading)[1].split("\n## ")[0].splitlines() if ln.startswith("|")]
        first_cells = [ln.split("|")[1].strip() for ln in table[2:]]  # pandas' to_markdown: header, rule, rows
        assert first_cells == list(METHODS), (heading, first_cells)
    assert "tiny_flux patch 4 (64 tokens)" in text and "1.00x" in text

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
        assert r["peer_iteration_s"] >= r["peer_s"] and r["iteration_vs_peer"] == r["peer_iteration_s"] / r["iteration_s"]
        # the peer loop in the official scripts' batch sizes (conf/method/<m>.yaml peer:)
        assert (r["peer_rollout_batch"], r["peer_update_batch"]) in {(1, 1), (9, 9)}
    # the engine actually spends fewer evaluations where G jumps leave one anchor state, no fewer elsewhere
    assert by_method["egrpo"]["engine_evals"] < by_method["egrpo"]["peer_evals"]
    assert by_method["dancegrpo"]["engine_evals"] == by_method["dancegrpo"]["peer_evals"]


def test_gpu_suite_dry_run(tmp_path):
    # The one-call GPU suite on the CPU at scaled-down sizes: every section runs and is written.
    from benchmarks.bench import main as bench_main

    bench_main(["--suite", "gpu", "--dry-run", "--out", str(tmp_path)])
    text = (tmp_path / "gpu_dry_run.md").read_text()
    for section in ("## forward", "## egrpo_rollout", "## lora_step", "## toy_iteration"):
        assert section in text, section
    assert "dry run on the CPU" in text
    rows = list(csv.DictReader(open(tmp_path / "gpu_dry_run.csv")))
    assert sorted(r["method"] for r in rows if r["section"] == "toy_iteration") == sorted(METHODS)
    roll = next(r for r in rows if r["section"] == "egrpo_rollout")
    assert int(roll["nfe_spent"]) <= int(roll["nfe_papers"]) and 0 < float(roll["forward_share"]) <= 1


def test_flux_forward_flops_hand_worked():
    # FLUX.1-dev: width j = 24 x 128 = 3072, 19 + 38 = 57 blocks; 512 px -> 1024 image + 512 text
    # tokens T = 1536. Per block: 2 x 12 j^2 T = 3.4789e11 and attention 4 T^2 j = 2.8991e10, so
    # 57 x 3.7688e11 = 2.1482e13 FLOPs per row (21.5 TFLOP); at H200's 989.5 TFLOPS a 12-row
    # forward in 0.5 s would be 52% MFU.
    from benchmarks.gpu import FLUX_DEV, forward_flops

    assert forward_flops(FLUX_DEV, 1024, 512) == pytest.approx(57 * (24 * 3072**2 * 1536 + 4 * 1536**2 * 3072))
    assert forward_flops(FLUX_DEV, 1024, 512) == pytest.approx(2.1482e13, rel=1e-4)
