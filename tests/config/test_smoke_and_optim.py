"""smoke=true (every method shrunk by its own step scheduler) and the optimizer / lr_scheduler /
loss nodes that Hydra instantiates for the module."""

import pytest
import torch
from hydra.utils import get_class

from flowrl.config.compose import config_options


@pytest.mark.parametrize("method", config_options("method"))
def test_smoke_applies_the_step_schedulers_own_small_overrides(make_cfg, method):
    full, small = make_cfg(f"method={method}"), make_cfg(f"method={method}", "smoke=true")
    declared = get_class(full.method.step_scheduler._target_).small_overrides
    for override in declared:  # e.g. "method.window_size=2": the composed value is the declared one
        key, _, value = override.partition("=")
        node = small
        for part in key.split("."):
            node = node[part]
        assert str(node).replace(" ", "") == value, (method, override)
    assert small.method.step_scheduler.num_steps == small.method.num_steps  # interpolations follow
    assert small.method.group_size <= full.method.group_size


def test_optimizer_lr_scheduler_and_loss_come_from_the_config(make_cfg):
    # what build_module does with the three nodes, without loading a model
    from hydra.utils import instantiate

    cfg = make_cfg("train.weight_decay=0.25", "lr_scheduler.warmup_steps=4", "method.clip_eps=0.002")
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optimizer)(params, lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.25
    sched = instantiate(cfg.lr_scheduler)(opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)  # warm-up: (0 + 1) / 4 of the lr
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 / 4)
    loss = instantiate(cfg.loss)
    assert (loss.clip_eps, loss.adv_clip, loss.kl_beta) == (0.002, cfg.method.adv_clip, cfg.method.kl_beta)


def test_module_steps_its_lr_scheduler_per_optimizer_step(make_cfg):
    # one iteration of E-GRPO at its small size: 2 branch points = 2 optimizer steps (one per
    # branch point, grpo_trainer.py); with a 10-step warm-up the lr after them is 3/10 of the base
    from flowrl.training.loop import train

    # (a small held-out evaluation: the full one before and after was 80 s of this test)
    cfg = make_cfg(
        "smoke=true",
        "train.iterations=1",
        "val.samples_per_prompt=1",
        "val.max_prompts=8",
        "val.num_steps=2",
        "lr_scheduler.warmup_steps=10",
    )
    base = cfg.method.lr * cfg.train.lr_scale
    train(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    assert run.data.metrics["perf/optimizer_steps"] == 2
    assert run.data.metrics["train/lr"] == pytest.approx(base * 3 / 10)  # LambdaLR after 2 steps: (2 + 1) / 10
    assert run.data.params["lr_scheduler.warmup_steps"] == "10"
