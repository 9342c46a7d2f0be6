"""GRPO training: `python -m flowrl.train [overrides]` (or `make train` for the embedded default).

Reads as a table of contents: compose -> instantiate -> validate (before) -> fit -> save.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def prompt_loaders(data, cfg: DictConfig, iterations: int):
    """Train: `iterations` random batches of prompts; val: all held-out prompts at once."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    g = torch.Generator().manual_seed(cfg.seed)
    n = iterations * cfg.train.prompts_per_step
    train = DataLoader(
        data.train,
        batch_size=cfg.train.prompts_per_step,
        sampler=RandomSampler(data.train, replacement=True, num_samples=n, generator=g),
        collate_fn=list,
    )
    val = DataLoader(data.val, batch_size=len(data.val), collate_fn=list)
    return train, val


def calibration_prompts(data, cfg: DictConfig) -> list[str]:
    """The prompts a method's pre-training calibration may draw from: the train prompts in a
    fixed (seeded) shuffle, so calibration never sees held-out prompts."""
    import random

    prompts = list(data.train)
    random.Random(cfg.seed).shuffle(prompts)
    return prompts


def build_module(cfg: DictConfig):
    """Instantiate everything a GRPO run needs from the config: (module, prompt data).
    Cheap, fail-fast parts first (prompt files, step plan), then the checkpoints (each loader checks
    its files before importing its library), and only then Lightning (~10 s to import)."""
    from hydra.utils import instantiate

    data = instantiate(cfg.data)
    step_scheduler = instantiate(cfg.method.step_scheduler)
    # a plan that cannot run, or a bad budget, fails here, before any model loads (a fresh
    # instance: plan() may move a scheduler's state)
    instantiate(cfg.method.step_scheduler).plan(0).optimizer_steps(cfg.train.prompts_per_step)
    from flowrl.budget import Budget

    Budget.from_config(cfg.get("budget"))
    # rewards before the model: a missing reward checkpoint is reported before FLUX (24 GB) loads
    reward = instantiate(cfg.reward)
    eval_rewards = {name: instantiate(r) for name, r in cfg.eval_rewards.items()}
    model = instantiate(cfg.model)

    from flowrl.modules.grpo_module import GRPOModule, OptimConfig, ValConfig
    from flowrl.update import LossConfig

    ema = cfg.method.get("ema") or {}
    optim = OptimConfig(
        lr=cfg.method.lr * cfg.train.lr_scale,
        weight_decay=cfg.train.weight_decay,
        grad_clip=cfg.train.grad_clip,
        ema_decay=ema.get("decay", 0.0),
        ema_every=ema.get("every", 1),
        ema_warmup=ema.get("warmup", False),
    )
    loss = LossConfig(
        clip_eps=cfg.method.clip_eps,
        adv_clip=cfg.method.adv_clip,
        kl_beta=cfg.method.kl_beta,
        kl_form=cfg.method.get("kl_form", "official"),
    )
    module = GRPOModule(
        model,
        reward,
        eval_rewards,
        step_scheduler,
        shift=cfg.method.shift,
        max_batch=cfg.train.max_batch,
        optim=optim,
        loss=loss,
        val=ValConfig(**cfg.val),
        seed=cfg.seed,
    )
    return module, data


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (what Lightning's seed_everything does, without importing it)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def silence_known_warnings() -> None:
    """Lightning output that every run would print and that says nothing about it: the frozen
    reward models (and a full fine-tune's KL reference) are in eval mode on purpose, Lightning
    2.6's own pytree code trips a torch deprecation, and each Trainer advertises a cloud logger."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_litlogger_tip not in rank_zero.filters:
        rank_zero.addFilter(_drop_litlogger_tip)


def _drop_litlogger_tip(record) -> bool:
    """A logging filter (a callable works as one): False drops the record."""
    return "litlogger" not in record.getMessage()


def held_out_rewards(trainer, module, val_loader) -> dict[str, float]:
    """One evaluation on the held-out prompts: {'val/reward/<name>': mean}. Read from the
    callback metrics because the module logs these to MLflow itself (at its own step)."""
    trainer.validate(module, val_loader, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def train(cfg: DictConfig) -> dict[str, float]:
    silence_known_warnings()
    seed_everything(cfg.seed)
    module, data = build_module(cfg)

    import torch
    from hydra.utils import instantiate

    from flowrl.budget import Budget, budget_callback, iteration_cost
    from flowrl.tracking import log_artifact_path, log_run_metadata, run_name

    model = module.model
    if hasattr(model, "precompute_prompts"):  # real backends: embed every prompt once, then free the text encoders
        model.precompute_prompts(list(data.train) + list(data.val))
    logger = instantiate(cfg.logger, run_name=cfg.logger.run_name or run_name(cfg))
    log_run_metadata(logger, cfg, seed=cfg.seed)
    # the run's length: train.iterations, or a budget (then evaluations at fractions of it)
    budget = Budget.from_config(cfg.get("budget"))
    if budget is None:
        iterations, extra = cfg.train.iterations, {}
    else:
        plan = instantiate(cfg.method.step_scheduler).plan(0)  # a fresh instance: plan() may move state
        iterations = budget.max_iterations(iteration_cost(plan, cfg.train.prompts_per_step))
        extra = {"callbacks": [budget_callback(budget, list(data.val))], "val_check_interval": 10**9}
    trainer = instantiate(cfg.trainer, logger=logger, **extra)
    train_loader, val_loader = prompt_loaders(data, cfg, iterations)

    try:
        module.calibrate(calibration_prompts(data, cfg), logger)  # a no-op unless the method calibrates (DenseGRPO)
        before = held_out_rewards(trainer, module, val_loader)
        trainer.fit(module, train_loader, val_loader)
        # the final evaluation, unless the fit loop just made it (an in-loop evaluation at the last
        # iteration, or a wall-clock budget's stop): the same prompts and noise would repeat it
        if module.evaluated_at == module.iteration and any(k.startswith("val/") for k in trainer.callback_metrics):
            after = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        else:
            after = held_out_rewards(trainer, module, val_loader)
    except BaseException as error:  # the MLflow run keeps what was logged, marked FAILED (KILLED on Ctrl-C)
        logger.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "failed")
        raise

    out = Path(cfg.paths.output_dir) / "final_model"
    with module.evaluated_weights():  # the EMA weights when method.ema.decay > 0
        model.save_pretrained(out) if hasattr(model, "save_pretrained") else torch.save(model.state_dict(), out / "model.pt")
    log_artifact_path(logger, out, "final_model")
    summary = {f"before/{k}": v for k, v in before.items()} | {f"after/{k}": v for k, v in after.items()}
    for key in sorted(before):
        print(f"{key:<22} before {before[key]:.4f}   after {after[key]:.4f}")
    logger.end_run("success")
    return summary


def exit_on_user_error(fn):
    """Run an entry point; a flowrl.errors.UserFacingError (missing checkpoint, bad value) is
    printed as one line, exit status 2, no traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from flowrl.errors import UserFacingError

        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = err  # hydra's instantiate wraps what a _target_ raised: walk the chain
            while cause is not None and not isinstance(cause, UserFacingError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            print(f"flowrl: {cause}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """The run; returns `optimized_metric` of its summary for a sweeper (Optuna) to optimise."""
    return train(cfg).get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
