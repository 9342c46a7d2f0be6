"""benchmarks/: `python -m benchmarks.bench --quick` end to end into a tmp dir (experiments/bench is
left alone), the peer loops against the engine, the GPU suite's dry run, the FLOPs count."""

import csv

import pytest
import torch

from benchmarks.bench import main
from benchmarks.methods import METHODS, compose_method
from benchmarks.peers import PEER_BATCHES, peer_rollout
from benchmarks.timing import TimedModel

# Optimizer steps of one iteration (1 prompt) at each method's small_overrides, worked by hand from
# the method's update rule: DanceGRPO steps every 4 samples and MixGRPO every 3 (G = 2: one
# step); DenseGRPO once per rollout; Flow-GRPO twice per rollout (two half-batches); E-GRPO and
# G²RPO once per branch point (2 of them).
OPTIMIZER_STEPS = {
    "awm": 1,
    "branchgrpo": 2,
    "diffusionnft": 1,
    "dancegrpo": 1,
    "densegrpo": 1,
    "egrpo": 2,
    "flowgrpo": 2,
    "g2rpo": 2,
    "grpo_guard": 2,
    "tempflow_grpo": 2,
    "mixgrpo": 1,
}


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
    # model.attention's two processors under bf16 autocast, the stock one first
    attention = [r["method"] for r in csv_rows if r["section"] == "attention"]
    assert attention == ["bf16-autocast, attention autocast", "bf16-autocast, attention fp32"]
    assert "## The embedded model's attention under bf16 autocast" in text

    by_method = {r["method"]: r for r in rows}
    for r in rows:
        # same work: the peer loop spends exactly the papers' NFE, the engine is charged it
        assert r["peer_evals"] == r["nfe_papers"] == r["engine_nfe_charged"], r["method"]
        assert r["images"] == r["peer_reward_queries"] == r["reward_queries_per_prompt"] * r["prompts"]
        assert r["reward_shape"] == r["peer_reward_shape"]
        assert 0 < r["forward_share"] <= 1 and r["rollout_s"] > 0 and r["peer_s"] > 0 and r["iteration_s"] >= r["rollout_s"]
        # both updates took the optimizer steps the method's rule gives (none skipped or merged)
        assert r["optimizer_steps_applied"] == r["peer_optimizer_steps_applied"] == OPTIMIZER_STEPS[r["method"]], r["method"]
        # the peer loop in the official scripts' batch sizes (benchmarks/peers.py)
        batches = PEER_BATCHES[r["method"]]
        assert (r["peer_rollout_batch"], r["peer_update_batch"]) == (batches.rollout_batch, batches.update_batch)
    # the engine actually spends fewer evaluations where G jumps leave one anchor state, no fewer elsewhere
    assert by_method["egrpo"]["engine_evals"] < by_method["egrpo"]["peer_evals"]
    assert by_method["dancegrpo"]["engine_evals"] == by_method["dancegrpo"]["peer_evals"]


def test_peer_batches_cover_every_method():
    assert sorted(PEER_BATCHES) == sorted(METHODS)
    assert all(b.rollout_batch >= 1 and b.update_batch >= 1 and b.source for b in PEER_BATCHES.values())


@pytest.fixture(scope="module")
def small_model():
    from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel

    torch.manual_seed(0)
    return TinyFluxModel(TinyFluxConfig(num_layers=1, num_single_layers=1, image_size=16)).eval()


@pytest.mark.parametrize("method", METHODS)
def test_peer_rollout_samples_the_engines_images(method, small_model):
    # The peer loop takes its noise from the engine's noise source in the engine's order, so with
    # the engine's seed it scores the engine's images (to float rounding of other batchings) for
    # several prompts and a micro-batch that splits every group, and spends exactly the papers' NFE.
    from flowrl.engine.rollout import rollout

    model = small_model
    plan = compose_method(method, [], small=True).step_scheduler.plan(0, torch.Generator().manual_seed(0))
    assert plan.group_size > 1  # micro-batch 1 splits the group

    def brightness(images, prompts):
        return {"brightness": images.mean(dim=(1, 2, 3))}

    prompts = ["a red circle on a blue background", "a white square on a green background"]
    engine = rollout(model, plan, prompts, brightness, torch.Generator().manual_seed(3), max_batch=64)
    timed = TimedModel(model)
    peer = peer_rollout(timed, plan, prompts, brightness, torch.Generator().manual_seed(3), micro_batch=1)
    assert peer["brightness"].shape == engine.parts["brightness"].shape
    torch.testing.assert_close(peer["brightness"], engine.parts["brightness"], rtol=1e-4, atol=1e-5)
    assert timed.evals == plan.budget()["nfe_per_prompt"] * len(prompts)
    # a different noise stream gives other images: the comparison above is not vacuous
    other = peer_rollout(model, plan, prompts, brightness, torch.Generator().manual_seed(4), micro_batch=1)
    assert not torch.allclose(other["brightness"], engine.parts["brightness"], rtol=1e-4, atol=1e-5)


def test_peer_rollout_takes_an_injected_noise_source(small_model):
    # The bench's peer loop and the engine handed the same NoiseSource score the same images.
    from flowrl.engine.noise import GeneratorNoise
    from flowrl.engine.rollout import rollout

    plan = compose_method("dancegrpo", [], small=True).step_scheduler.plan(0, torch.Generator().manual_seed(0))

    def brightness(images, prompts):
        return {"brightness": images.mean(dim=(1, 2, 3))}

    prompts = ["a red circle on a blue background"] * 3
    engine = rollout(small_model, plan, prompts, brightness, noise=GeneratorNoise(torch.Generator().manual_seed(9)))
    peer = peer_rollout(
        small_model, plan, prompts, brightness, micro_batch=1, noise=GeneratorNoise(torch.Generator().manual_seed(9))
    )
    torch.testing.assert_close(peer["brightness"], engine.parts["brightness"], rtol=1e-4, atol=1e-5)


def test_gpu_suite_dry_run(tmp_path):
    # The one-call GPU suite on the CPU at scaled-down sizes: every section runs and is written.
    main(["--suite", "gpu", "--dry-run", "--out", str(tmp_path)])
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
    from benchmarks.gpu import FLUX_DEV
    from flowrl.models.flux import flux_forward_flops
    from flowrl.models.tiny_flux import TinyFluxModel

    assert flux_forward_flops(FLUX_DEV, 1024, 512) == pytest.approx(57 * (24 * 3072**2 * 1536 + 4 * 1536**2 * 3072))
    assert flux_forward_flops(FLUX_DEV, 1024, 512) == pytest.approx(2.1482e13, rel=1e-4)
    # the shipped tiny model: j = 4 x 32 = 128, 2 + 4 = 6 blocks, 64 image + 8 text tokens T = 72:
    # 6 x (24 x 128^2 x 72 + 4 x 72^2 x 128) = 6 x (28,311,552 + 2,654,208) = 185,794,560 per row
    assert TinyFluxModel().forward_flops(3) == 3 * 185_794_560
