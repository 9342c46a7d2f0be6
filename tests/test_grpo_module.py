"""The training loop on the tiny model: ratio exactly 1 before the first update, and a
2-iteration end-to-end run of each method with MLflow tracking (slow)."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from flowrl.train import CONF_DIR


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path}",
                f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                "train.iterations=2",
                "train.prompts_per_step=2",
                "method.group_size=3",
                "method.num_steps=4",
                "val.samples_per_prompt=1",
                "val.num_steps=4",
                "trainer.val_check_interval=1",
                *overrides,
            ],
        )


PROMPTS = ["a red circle on a blue background", "a white square on a green background"]


def _shapes_score(images, prompts):
    from flowrl.rewards.shapes import ShapesReward

    return {"shapes": ShapesReward()(images, prompts)}


def _schedulers():
    from flowrl.step_schedulers.dense_reward import DenseRewardStepScheduler
    from flowrl.step_schedulers.entropy_merge import EntropyMergeStepScheduler
    from flowrl.step_schedulers.singular_stochastic import SingularStochasticStepScheduler
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    return {
        "dance": UniformStepScheduler(num_steps=4, group_size=3, noise_level=0.3, sde="dance"),
        "flowgrpo": UniformStepScheduler(num_steps=4, group_size=3, noise_level=0.7, sde="sde", same_initial_noise=False),
        "egrpo": EntropyMergeStepScheduler(num_steps=8, group_size=3, num_branch_steps=4, tau=1.2),
        "g2rpo": SingularStochasticStepScheduler(num_steps=6, group_size=3, num_branch_steps=3, granularities=[1, 2]),
        "densegrpo": DenseRewardStepScheduler(num_steps=4, group_size=3, noise_levels=[0.7, 0.6, 0.5, 0.4]),
    }


@pytest.mark.parametrize("kind", ["dance", "flowgrpo", "egrpo", "g2rpo", "densegrpo"])
def test_ratio_is_exactly_one_before_first_update(tiny_model, kind):
    # Re-evaluating every jump of a fresh rollout with the same weights (train mode, grad on)
    # must reproduce the rollout's log-probs bit for bit: ratio = exp(0) = 1 exactly. The training
    # forward uses the rollout's row chunks (max_batch 4 splits the 6 rows of the sde plans).
    from flowrl.sampling.rollout import chunks, jump_log_prob, rollout
    from flowrl.sampling.sigmas import flow_sigmas

    sched = _schedulers()[kind]
    sigmas = flow_sigmas(sched.num_steps, 3.0)
    tiny_model.eval()
    ro = rollout(tiny_model, sched, PROMPTS, sigmas, _shapes_score, torch.Generator().manual_seed(0), max_batch=4)
    tiny_model.train()
    try:
        for j in range(len(sched.plan().jumps)):
            js = ro.jump_sets[j]
            for rows in chunks(js.x.shape[0], 4):
                out = jump_log_prob(tiny_model, sched, ro, js, rows)
                assert out.log_prob.requires_grad
                ratio = torch.exp(out.log_prob - js.log_prob[rows].flatten())
                assert torch.equal(ratio, torch.ones_like(ratio)), (kind, j)
    finally:
        tiny_model.eval()


def test_rollout_same_initial_noise_and_nfe(tiny_model):
    from flowrl.sampling.rollout import rollout
    from flowrl.sampling.sigmas import flow_sigmas
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    prompt = ["a red circle on a blue background"]
    sched = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=True)
    ro = rollout(tiny_model, sched, prompt, flow_sigmas(3), _shapes_score, torch.Generator().manual_seed(0), max_batch=3)
    # 4 rows x 3 steps = 12 NFE, in 2 chunks (3 + 1 rows) per step = 6 forwards
    assert ro.nfe == 4 * 3 and ro.forwards == 6 and ro.images.shape == (4, 3, 32, 32)
    assert ro.parts["shapes"].shape == (1, 4) and len(ro.jump_sets) == 3
    x1 = ro.jump_sets[0].x
    assert torch.equal(x1[0], x1[3])  # same x_1 in the group
    assert not torch.equal(ro.jump_sets[1].x[0], ro.jump_sets[1].x[3])  # different SDE noise after
    sched2 = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=False)
    ro2 = rollout(tiny_model, sched2, prompt, flow_sigmas(3), _shapes_score, torch.Generator().manual_seed(0))
    assert not torch.equal(ro2.jump_sets[0].x[0], ro2.jump_sets[0].x[3])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dancegrpo", "flowgrpo", "egrpo", "g2rpo", "densegrpo"])
def test_two_iterations_end_to_end(tmp_path, method):
    import mlflow

    from flowrl.train import train

    extra = {
        "egrpo": ["method.num_branch_steps=2", "method.tau=1.0"],
        "g2rpo": ["method.num_branch_steps=2", "method.granularities=[1,2]"],
        "densegrpo": ["method.calibration.iterations=1", "method.calibration.num_prompts=2"],
    }.get(method, [])
    summary = train(_cfg(tmp_path, f"method={method}", "logger.experiment_name=e2e", *extra))
    assert {"before/val/reward/shapes", "after/val/reward/shapes", "after/val/reward/tiny_clip"} <= set(summary)
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])[0]
    assert run.info.status == "FINISHED" and method in run.info.run_name
    m = run.data.metrics
    for key in (
        "train/loss",
        "train/clip_frac",
        "train/approx_kl",
        "train/ratio_mean",
        "train/reward/tiny_clip",
        "val/reward/shapes",
        "perf/nfe",
    ):
        assert key in m, key
    assert m["train/first_step_ratio_mean"] == 1.0  # first trained step of the last iteration
    # Held-out rewards are logged at the number of updates made so far: before training (0),
    # after iteration 1 and 2 (val_check_interval 1), and the final evaluation (2 again).
    history = client.get_metric_history(run.info.run_id, "val/reward/shapes")
    assert sorted(h.step for h in history) == [0, 1, 2, 2]
    assert run.data.params["method.name"] == method
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "images", "final_model"} <= artifacts
    if method == "densegrpo":  # the calibration phase ran and its noise-level table is an artifact
        assert "calibration.json" in artifacts


def test_ema_update_and_swap_hand_worked():
    # decay 0.9: shadow starts at theta_0 = 1; theta becomes 2 -> shadow = 0.9 * 1 + 0.1 * 2 = 1.1;
    # a second update at theta = 2 -> 0.9 * 1.1 + 0.2 = 1.19.
    from flowrl.modules.ema import EMA

    p = torch.nn.Parameter(torch.tensor([1.0]))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(2.0)
    ema.update()
    assert ema.shadow[0].item() == pytest.approx(1.1)
    ema.update()
    assert ema.shadow[0].item() == pytest.approx(1.19)
    with ema.swapped_in():
        assert p.item() == pytest.approx(1.19)
    assert p.item() == 2.0  # the live weights come back
    with pytest.raises(ValueError, match="decay"):
        EMA([p], decay=1.0)


@pytest.mark.slow
def test_lora_training_with_kl_uses_the_disabled_adapter_as_reference(tmp_path):
    # Flow-GRPO (kl_beta 0.04) with a LoRA adapter on the tiny model: only the adapter trains, the
    # reference policy is the adapter switched off (no second model copy), the saved final model
    # is the diffusers LoRA file, and EMA weights are what gets evaluated and saved.
    from safetensors.torch import load_file

    from flowrl.train import build_module, train

    lora = ["+model.lora.rank=4", "+model.lora.alpha=8", "+model.lora.target_modules=[to_q,to_k,to_v,to_out.0]"]
    cfg = _cfg(tmp_path, "method=flowgrpo", "train.ema_decay=0.5", "logger.experiment_name=lora", *lora)
    module, _ = build_module(cfg)
    assert module.ref_model is None and module.model.has_adapter
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    summary = train(cfg)
    assert "after/val/reward/shapes" in summary
    saved = load_file(str(tmp_path / "final_model" / "pytorch_lora_weights.safetensors"))
    assert saved and all("lora" in k for k in saved)


def test_crash_mid_training_marks_the_run_failed_and_keeps_what_was_logged(tmp_path, monkeypatch):
    # Lightning calls logger.finalize("success") after the validation that precedes fit. The run
    # must still read RUNNING during training (a SIGKILLed run must not look FINISHED) and end
    # FAILED when training crashes, with the "before" validation kept.
    import mlflow

    from flowrl.modules.grpo_module import GRPOModule
    from flowrl.train import train

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    status_during_training = []

    def crash(self, batch, batch_idx):
        status_during_training.append(client.get_run(self.logger.run_id).info.status)
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr(GRPOModule, "training_step", crash)
    with pytest.raises(RuntimeError, match="boom"):
        train(_cfg(tmp_path, "logger.experiment_name=crash", "method.num_branch_steps=2", "method.tau=1.0"))
    assert status_during_training == ["RUNNING"]
    run = client.search_runs([client.get_experiment_by_name("crash").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert "val/reward/shapes" in run.data.metrics  # the validation before training is kept


def test_known_lightning_noise_is_silenced_and_nothing_else(caplog):
    # What every run printed and silence_known_warnings() hides: two warnings and Lightning's
    # litlogger advertisement. An unrelated warning and log line must still come through.
    import logging
    import warnings

    from flowrl.train import silence_known_warnings

    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_warnings()
        silence_known_warnings()  # idempotent: one filter, not two
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        warnings.warn("isinstance(treespec, LeafSpec) is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("something the user must see", UserWarning, stacklevel=1)
        with caplog.at_level(logging.INFO, logger=rank_zero.name):
            rank_zero.info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
            rank_zero.info("GPU available: False")
    assert [str(w.message) for w in caught] == ["something the user must see"]
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]
    assert sum(f is not None and getattr(f, "__name__", "") == "_drop_litlogger_tip" for f in rank_zero.filters) == 1
