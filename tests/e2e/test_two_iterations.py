"""A 2-iteration end-to-end run of each method on the tiny model, with MLflow tracking (slow):
what it logs, its evaluations, its artifacts, and the optimizer steps its official script takes."""

import pytest

from flowrl.config.compose import config_options
from tests.runs import SMALL

# Per method: its overrides at the small size above (2 prompts x G 3, T 4 unless given) and the
# optimizer steps one iteration takes there, worked by hand from the method's config and the
# official script its yaml comments name (not read off the plan: the run logs exactly the plan's
# count, so comparing with the plan would prove nothing).
RUNS = {
    # train_sd3_awm.py: gradient accumulation over all of an epoch's batches -> 1. At T 4: 2 levels
    # stratified over int(linspace(1, int(4 * 0.75) = 3, 3)) = [1, 2, 3].
    "awm": (["method.levels.count=2", "method.levels.fraction=0.75"], 1),
    # train_nft_sd3.py: gradient_step_per_epoch 1 -> 1. int(4 * 0.5) = 2 levels per sample.
    "diffusionnft": (["method.levels.fraction=0.5"], 1),
    # no code: Flow-GRPO's optimizer_steps_per_rollout 2 (its yaml's choice) -> 2.
    "tempflow_grpo": ([], 2),
    # flow_grpo config/grpo_guard.py: Flow-GRPO's 2 per rollout -> 2.
    "grpo_guard": ([], 2),
    # train_branchgrpo_flux.py: T 4, splits 0, 2 -> 4 leaves, edges per tree 2 + 2 + 4 + 4 = 12; 2
    # trees per emulated GPU (prompts_per_rank 2): 24 edges, a step every 12 -> 2.
    "branchgrpo": (["method.group_size=4", "method.tree_splits=[0,2]"], 2),
    # train_grpo_flux.py, one prompt per GPU (prompts_per_rank 1, so 2 emulated GPUs): each GPU
    # steps after every gradient_accumulation_steps of its G samples, the GPUs together: with 2,
    # after its samples {0, 1} and {2} -> ceil(3 / 2) = 2 (finetune_flux_grpo.sh: 12 / 4 = 3).
    "dancegrpo": (["method.gradient_accumulation_steps=2"], 2),
    # the paper's gradient accumulation over all the batches of a rollout:
    # optimizer_steps_per_rollout 1 -> 1. One calibration round of 2 samples before training.
    "densegrpo": (["method.calibration.iterations=1", "method.calibration.num_samples=2"], 1),
    # VisualGRPO grpo_trainer.py: one step per branch point -> num_branch_steps 2.
    "egrpo": (["method.num_branch_steps=2"], 2),
    # flow_grpo config/grpo.py: gradient_accumulation_steps = num_batches_per_epoch // 2 ->
    # optimizer_steps_per_rollout 2, whatever the number of samples.
    "flowgrpo": ([], 2),
    # train_g2rpo_hps.py: one step per SDE step e -> num_branch_steps 2.
    "g2rpo": (["method.num_branch_steps=2", "method.granularities=[1,2]"], 2),
    # MixGRPO train_grpo_flux.py, one prompt per GPU (train_batch_size 1): a step every
    # gradient_accumulation_steps samples; with 1, every sample of each GPU: G 3 -> 3
    # (finetune_flux_grpo_MixGRPO.sh: 12 / 3 = 4). T 6, window 2 moving every iteration.
    "mixgrpo": (
        ["method.num_steps=6", "method.window_size=2", "method.iters_per_group=1", "method.gradient_accumulation_steps=1"],
        3,
    ),
}

# the methods that train a forward-process objective on their final samples (no log-prob ratio)
FORWARD_PROCESS = {"awm", "diffusionnft"}


@pytest.mark.slow
@pytest.mark.parametrize("method", config_options("method"))
def test_two_iterations_end_to_end(make_cfg, tmp_path, method):
    import mlflow

    from flowrl.training.loop import train

    assert method in RUNS, "a new method: give its small run and work its optimizer steps by hand in RUNS"
    overrides, optimizer_steps = RUNS[method]
    # trained on the continuous proxy: at G 3 the binary verifier often gives a group one value, and
    # Flow-GRPO's zero-advantage filter (DenseGRPO's too) then leaves nothing to update
    summary = train(make_cfg(*SMALL, f"method={method}", "reward=geneval_clip", "logger.experiment_name=e2e", *overrides))
    assert {"before/val/reward/geneval", "after/val/reward/geneval", "after/val/reward/geneval_clip"} <= set(summary)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and method in run.info.run_name
    m = run.data.metrics
    ratio_keys = () if method in FORWARD_PROCESS else ("train/clip_frac", "train/approx_kl", "train/ratio_mean")
    for key in (
        "train/loss",
        "train/policy_loss",
        "train/kl_loss",
        *ratio_keys,
        "train/reward/geneval_clip",
        "val/reward/geneval",
        "perf/nfe",
        "perf/nfe_total",
        "perf/optimizer_steps",
    ):
        assert key in m, key
    # every iteration took the optimizer steps of the method's official script (RUNS)
    steps = client.get_metric_history(run.info.run_id, "perf/optimizer_steps")
    assert sorted((h.step, h.value) for h in steps) == [(1, optimizer_steps), (2, optimizer_steps)]
    if method not in FORWARD_PROCESS:  # their objectives have no ratio to log
        assert m["train/first_step_ratio_mean"] == 1.0  # first trained step of the last iteration
    # Held-out rewards are logged at the number of iterations completed: before training (0) and
    # after iterations 1 and 2 (val_check_interval 1; the last one is also the final evaluation,
    # not repeated), each with the NFE spent so far as val/nfe_total (the x-axis methods share).
    history = client.get_metric_history(run.info.run_id, "val/reward/geneval")
    assert sorted(h.step for h in history) == [0, 1, 2]
    nfe = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, "val/nfe_total"))
    # Before training the x-axis holds what was already spent: nothing, except DenseGRPO's
    # calibration (Alg. 1), which counts toward its budget: 1 round x 2 single-sample rollouts,
    # each T 4 SDE steps + the ODE completions of x_0..x_3 (4 + 3 + 2 + 1) = 14 NFE -> 28.
    spent_before = 1 * 2 * (4 + 4 + 3 + 2 + 1) if method == "densegrpo" else 0.0
    assert nfe[0] == (0, spent_before) and nfe[-1][1] == m["perf/nfe_total"] > spent_before
    assert run.data.params["method.name"] == method
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "images", "final_model"} <= artifacts
    if method == "densegrpo":  # the calibration phase ran and its noise-level table is an artifact
        assert "calibration.json" in artifacts
