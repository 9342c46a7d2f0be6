"""The training loop on the tiny model: ratio exactly 1 before the first update, and a
2-iteration end-to-end run of each method with MLflow tracking (slow)."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from flowrl.config.compose import CONF_DIR


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


def _small_scheduler(method: str, *extra):
    """A method config at a small size (its scheduler's own small_overrides), as built for training."""
    from hydra.utils import instantiate

    small = instantiate(_compose([f"method={method}"]).method.step_scheduler).small_overrides
    return instantiate(_compose([f"method={method}", *small, "method.group_size=3", *extra]).method.step_scheduler)


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
@pytest.mark.parametrize("method", sorted(p.stem for p in (__import__("pathlib").Path(CONF_DIR) / "method").glob("*.yaml")))
def test_ratio_is_exactly_one_before_first_update(tiny_model, method, precision):
    # Every term of the first optimizer step re-evaluated with the same weights (train mode, grad
    # on) reproduces the rollout's log-prob bit for bit: ratio = exp(0) = 1 exactly. The engine
    # runs the first step's rows of a jump as chunks of their own and the update uses the same
    # chunks (max_batch 4 splits the 6 rows of the sde plans). After that first optimizer step the
    # weights have moved, so the later steps' ratios may leave 1 (they do in the official scripts).
    from flowrl.engine.rollout import chunks, jump_log_prob, rollout

    sched = _small_scheduler(method)
    plan = sched.plan(0, torch.Generator().manual_seed(0))
    tiny_model.precision = precision  # bf16 autocast: the same forwards in rollout and training, fp32 step math
    tiny_model.eval()
    ro = rollout(tiny_model, plan, PROMPTS, _shapes_score, torch.Generator().manual_seed(0), max_batch=4)
    tiny_model.train()
    try:
        first = plan.optimizer_steps(len(PROMPTS))[0]
        assert first, method
        for block in first:
            js = ro.jump_sets[block.jump]
            for sl in chunks(block.rows.numel(), 4):
                rows = block.rows[sl]
                out = jump_log_prob(tiny_model, ro, js, rows)
                assert out.log_prob.requires_grad
                ratio = torch.exp(out.log_prob - js.log_prob[rows].flatten())
                assert torch.equal(ratio, torch.ones_like(ratio)), (method, block.jump)
    finally:
        tiny_model.eval()
        tiny_model.precision = "fp32"


def test_rollout_same_initial_noise_and_nfe(tiny_model):
    from flowrl.engine.rollout import rollout
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    prompt = ["a red circle on a blue background"]
    sched = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=True)
    ro = rollout(tiny_model, sched.plan(0), prompt, _shapes_score, torch.Generator().manual_seed(0), max_batch=3)
    # 4 rows x 3 steps = 12 NFE; with one optimizer step over all samples (the default update)
    # every step's rows are chunked 3 + 1 -> 6 forwards; the last x0 is scored (no extra NFE)
    assert ro.nfe == 4 * 3 and ro.forwards == 6 and ro.images.shape == (4, 3, 32, 32)
    assert ro.parts["shapes"].shape == (1, 4) and len(ro.jump_sets) == 3
    x1 = ro.jump_sets[0].x
    assert torch.equal(x1[0], x1[3])  # same x_1 in the group
    assert not torch.equal(ro.jump_sets[1].x[0], ro.jump_sets[1].x[3])  # different SDE noise after
    sched2 = UniformStepScheduler(num_steps=3, group_size=4, same_initial_noise=False)
    ro2 = rollout(tiny_model, sched2.plan(0), prompt, _shapes_score, torch.Generator().manual_seed(0))
    assert not torch.equal(ro2.jump_sets[0].x[0], ro2.jump_sets[0].x[3])


def test_dancegrpo_scores_the_last_steps_x0_prediction(tiny_model):
    # train_grpo_flux.py decodes the last step's pred_original_sample, x_{T-1} - sigma_{T-1} v,
    # not the final SDE sample (which carries the last step's noise).
    from flowrl.engine.rollout import rollout
    from flowrl.sampling.steps import predict_x0
    from flowrl.step_schedulers.uniform import UniformStepScheduler

    images = []

    def keep(im, prompts):
        images.append(im)
        return _shapes_score(im, prompts)

    plan = UniformStepScheduler(num_steps=3, group_size=2, score="last_x0").plan(0)
    ro = rollout(tiny_model, plan, PROMPTS[:1], keep, torch.Generator().manual_seed(0))
    js = ro.jump_sets[2]
    with torch.no_grad():
        v = tiny_model.velocity(js.x, ro.sigmas[2].expand(2), ro.embeds[js.embed_index])
    expected = tiny_model.decode(predict_x0(js.x, v, ro.sigmas[2]))
    torch.testing.assert_close(images[0], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(images[0], tiny_model.decode(js.x_next[:, 0]), atol=1e-3)


METHODS = sorted(p.stem for p in (__import__("pathlib").Path(CONF_DIR) / "method").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_iterations_end_to_end(tmp_path, method):
    import mlflow
    from hydra.utils import instantiate

    from flowrl.training.loop import train

    small = [
        o for o in instantiate(_compose([f"method={method}"]).method.step_scheduler).small_overrides if "group_size" not in o
    ]
    extra = ["method.calibration.iterations=1", "method.calibration.num_samples=2"] if method == "densegrpo" else []
    summary = train(_cfg(tmp_path, f"method={method}", "logger.experiment_name=e2e", *small, *extra))
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
        "perf/nfe_total",
        "perf/optimizer_steps",
    ):
        assert key in m, key
    # the plan's optimizer steps were taken (2 prompts x G 3 at the small sizes)
    from flowrl.plan import compose_plan

    plan, _ = compose_plan([f"method={method}", *small, *extra, "method.group_size=3"])
    assert m["perf/optimizer_steps"] == len(plan.optimizer_steps(2))
    assert m["train/first_step_ratio_mean"] == 1.0  # first trained step of the last iteration
    # Held-out rewards are logged at the number of iterations completed: before training (0) and
    # after iterations 1 and 2 (val_check_interval 1; the last one is also the final evaluation,
    # not repeated), each with the NFE spent so far as val/nfe_total (the x-axis methods share).
    history = client.get_metric_history(run.info.run_id, "val/reward/shapes")
    assert sorted(h.step for h in history) == [0, 1, 2]
    nfe = sorted((h.step, h.value) for h in client.get_metric_history(run.info.run_id, "val/nfe_total"))
    # Before training the x-axis holds what was already spent: nothing, except DenseGRPO's
    # calibration (Alg. 1: 1 round x 2 single-sample rollouts here), which counts toward its budget.
    import dataclasses

    spent_before = 0.0
    if method == "densegrpo":
        spent_before = 1 * 2 * dataclasses.replace(plan, group_size=1).budget()["nfe_per_prompt"]
    assert nfe[0] == (0, spent_before) and nfe[-1][1] == m["perf/nfe_total"] > spent_before
    assert run.data.params["method.name"] == method
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "images", "final_model"} <= artifacts
    if method == "densegrpo":  # the calibration phase ran and its noise-level table is an artifact
        assert "calibration.json" in artifacts


def test_ema_update_and_swap_hand_worked():
    # decay 0.9: shadow starts at theta_0 = 1; theta becomes 2 -> shadow = 0.9 * 1 + 0.1 * 2 = 1.1;
    # a second update at theta = 2 -> 0.9 * 1.1 + 0.2 = 1.19.
    from flowrl.training.ema import EMA

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
    # flow_grpo/ema.py: every 2nd optimizer step, decay min((1 + s) / (10 + s), 0.9) at step s.
    # Step 0: skipped; step 1: d = 2 / 11 -> shadow = 2/11 * 1 + 9/11 * 3 = 2.636364.
    q = torch.nn.Parameter(torch.tensor([1.0]))
    warm = EMA([q], decay=0.9, every=2, warmup=True)
    with torch.no_grad():
        q.fill_(3.0)
    warm.update(0)
    assert warm.shadow[0].item() == 1.0
    warm.update(1)
    assert warm.shadow[0].item() == pytest.approx(2 / 11 + 27 / 11)
    assert warm.decay_at(1000) == 0.9


@pytest.mark.slow
def test_lora_training_with_kl_uses_the_disabled_adapter_as_reference(tmp_path):
    # Flow-GRPO (kl_beta 0.04) with a LoRA adapter on the tiny model: only the adapter trains, the
    # reference policy is the adapter switched off (no second model copy), the saved final model
    # is the diffusers LoRA file, and EMA weights are what gets evaluated and saved.
    from safetensors.torch import load_file

    from flowrl.training.build import build_module
    from flowrl.training.loop import train

    lora = ["+model.lora.rank=4", "+model.lora.alpha=8", "+model.lora.target_modules=[to_q,to_k,to_v,to_out.0]"]
    cfg = _cfg(tmp_path, "method=flowgrpo", "method.ema.decay=0.5", "logger.experiment_name=lora", *lora)
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

    from flowrl.training.loop import train
    from flowrl.training.module import GRPOModule

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

    from flowrl.training.build import silence_known_warnings

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


def test_held_out_evaluation_is_in_full_precision_under_bf16_autocast(tmp_path):
    # val.full_precision (default true): a bf16-autocast run's held-out samples are the fp32 ones,
    # so its before/after numbers compare with an fp32 run's (issue 14 chooses the precision by them).
    from flowrl.training.build import build_module

    def evaluated(*overrides):
        module, data = build_module(_cfg(tmp_path, "method.num_branch_steps=2", *overrides))
        return module.evaluate(list(data.val)[:4]), module.model.precision

    fp32, _ = evaluated("model.precision=fp32")
    bf16_full, kept = evaluated("model.precision=bf16-autocast")
    bf16, _ = evaluated("model.precision=bf16-autocast", "val.full_precision=false")
    assert kept == "bf16-autocast"  # restored after the evaluation: training stays in bf16
    assert bf16_full == fp32
    assert bf16 != fp32  # the switch matters: bf16 samples score differently
