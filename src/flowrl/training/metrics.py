"""An iteration's metrics, assembled and logged apart from the training step (torchtune's
`log_metrics`): one fixed set of keys every iteration, namespaced train/ and perf/, at step =
iterations completed."""

from __future__ import annotations

import torch

LOSS_METRICS = ("train/loss", "train/policy_loss", "train/kl_loss", "train/ratio_mean", "train/clip_frac", "train/approx_kl")
SKIP_CAUSES = ("reward", "advantage", "log_prob", "loss", "gradient")  # why an optimizer step was skipped


def iteration_metrics(module, scores, adv: list[torch.Tensor], stats, ro, rollout_s: float, iteration_s: float) -> dict:
    """{key: float} for one iteration. One fixed set of keys (under DDP every rank all-reduces the
    same vector): NaN where a quantity does not exist this iteration (all its updates skipped)."""
    flat_adv = torch.cat([a.flatten() for a in adv])
    metrics = dict.fromkeys(LOSS_METRICS, float("nan")) | stats.mean_metrics()
    metrics["train/skipped_updates"] = float(module.skipped_updates)
    for cause in SKIP_CAUSES:
        metrics[f"train/skipped/{cause}"] = float(stats.skipped.count(cause)) if cause in stats.skipped else float("nan")
    for name, part in scores.parts.items():
        metrics[f"train/reward/{name}"] = part.mean().item()
    first_ratio = stats.first_step_ratio_mean
    metrics.update(
        {
            "train/reward_std": scores.total.std().item(),
            "train/adv_std": flat_adv.std().item(),
            "train/adv_abs_mean": flat_adv.abs().mean().item(),
            "train/first_step_ratio_mean": first_ratio if first_ratio is not None else float("nan"),
            "train/lr": module.current_lr(),
            "perf/nfe": float(ro.nfe),
            "perf/forwards": float(ro.forwards),
            "perf/optimizer_steps": float(stats.optimizer_steps),
            "perf/nfe_total": float(module.nfe_total),
            "perf/reward_queries_total": float(module.reward_queries_total),
            "perf/wall_total": module.wall_total,
            "perf/rollout_s": rollout_s,
            "perf/iteration_s": iteration_s,
        }
    )
    return metrics


def log_metrics(module, metrics: dict, stats, ro, num_prompts: int, reward_mean: float) -> None:
    """To MLflow (NaNs left out; under DDP the mean over ranks: only scalars cross ranks), the
    last skip cause as a run tag, the progress bar's reward, and a grid of rollout images every
    `val.train_grid_every` iterations."""
    logger = module.logger
    if stats.skipped and hasattr(logger, "run_id"):
        logger.experiment.set_tag(logger.run_id, "last_skip_cause", f"{stats.skipped[-1]} (iteration {module.iteration})")
    if module._trainer is not None and module.trainer.world_size > 1:
        from flowrl.training.distributed import mean_over_ranks

        metrics = mean_over_ranks(metrics, module.trainer.strategy)
    if logger is not None:
        logger.log_metrics({k: v for k, v in metrics.items() if v == v}, step=module.iteration)
    # bar only; MLflow gets train/reward/<name>
    module.log("reward", reward_mean, prog_bar=True, logger=False, batch_size=num_prompts)
    val = module.val_cfg
    if val.grid_prompts > 0 and (module.iteration - 1) % max(1, val.train_grid_every) == 0 and hasattr(logger, "run_id"):
        from flowrl.training.tracking import log_image_grid

        log_image_grid(logger, ro.images[: val.grid_prompts * 4], "train", step=module.iteration, nrow=8)
