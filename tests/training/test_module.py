"""The Lightning module and the run around it on the tiny model: a LoRA run with its KL and EMA
(slow), a crash mid-training, the known warnings silenced, held-out evaluation in full precision.
(A 2-iteration run of each method: tests/e2e/test_two_iterations.py.)"""

import pytest

from tests.runs import SMALL


@pytest.mark.slow
def test_lora_training_with_kl_uses_the_disabled_adapter_as_reference(make_cfg, tmp_path):
    # Flow-GRPO (kl_beta 0.04) with a LoRA adapter on the tiny model: only the adapter trains, the
    # reference policy is the adapter switched off (no second model copy), the saved final model
    # is the diffusers LoRA file, and EMA weights are what gets evaluated and saved.
    from safetensors.torch import load_file

    from flowrl.training.build import build_module
    from flowrl.training.loop import train

    lora = ["+model.lora.rank=4", "+model.lora.alpha=8", "+model.lora.target_modules=[to_q,to_k,to_v,to_out.0]"]
    cfg = make_cfg(*SMALL, "method=flowgrpo", "method.ema.decay=0.5", "logger.experiment_name=lora", *lora)
    module, _ = build_module(cfg)
    assert module.ref_model is None and module.model.has_adapter
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    summary = train(cfg)
    assert "after/val/reward/geneval" in summary
    saved = load_file(str(tmp_path / "final_model" / "pytorch_lora_weights.safetensors"))
    assert saved and all("lora" in k for k in saved)


def test_crash_mid_training_marks_the_run_failed_and_keeps_what_was_logged(make_cfg, tmp_path, monkeypatch):
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
        train(make_cfg(*SMALL, "logger.experiment_name=crash", "method.num_branch_steps=2", "method.tau=1.0"))
    assert status_during_training == ["RUNNING"]
    run = client.search_runs([client.get_experiment_by_name("crash").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert "val/reward/geneval" in run.data.metrics  # the validation before training is kept


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


def test_held_out_evaluation_is_in_full_precision_under_bf16_autocast(make_cfg):
    # val.full_precision (default true): a bf16-autocast run's held-out samples are the fp32 ones,
    # so its before/after numbers compare with an fp32 run's (issue 14 chooses the precision by them).
    from flowrl.training.build import build_module

    def evaluated(*overrides):
        module, data = build_module(make_cfg(*SMALL, "method.num_branch_steps=2", *overrides))
        return module.evaluate(list(data.val)[:4]), module.model.precision

    fp32, _ = evaluated("model.precision=fp32")
    bf16_full, kept = evaluated("model.precision=bf16-autocast")
    bf16, _ = evaluated("model.precision=bf16-autocast", "val.full_precision=false")
    assert kept == "bf16-autocast"  # restored after the evaluation: training stays in bf16
    assert bf16_full == fp32
    assert bf16 != fp32  # the switch matters: bf16 samples score differently
