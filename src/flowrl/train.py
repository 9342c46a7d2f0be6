"""GRPO training: `python -m flowrl.train [overrides]` (or `make train` for the embedded default).

Reads as a table of contents: compose -> instantiate -> validate (before) -> fit -> save.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def prompt_loaders(data, cfg: DictConfig):
    """Train: exactly `iterations` random batches of prompts; val: all held-out prompts at once."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    g = torch.Generator().manual_seed(cfg.seed)
    n = cfg.train.iterations * cfg.train.prompts_per_step
    train = DataLoader(
        data.train,
        batch_size=cfg.train.prompts_per_step,
        sampler=RandomSampler(data.train, replacement=True, num_samples=n, generator=g),
        collate_fn=list,
    )
    val = DataLoader(data.val, batch_size=len(data.val), collate_fn=list)
    return train, val


def calibration_prompts(data, cfg: DictConfig) -> list[str]:
    """The train prompts a method's pre-training calibration may use: the first `prompts_per_step`
    of a fixed shuffle (seeded), so calibration never sees held-out prompts."""
    import random

    prompts = list(data.train)
    random.Random(cfg.seed).shuffle(prompts)
    return prompts[: cfg.train.prompts_per_step]


def train(cfg: DictConfig) -> dict[str, float]:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from flowrl.modules.grpo_module import GRPOModule, OptimConfig, ValConfig
    from flowrl.tracking import log_artifact_path, log_run_metadata, run_name

    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model)
    reward = instantiate(cfg.reward)
    eval_rewards = {name: instantiate(r) for name, r in cfg.eval_rewards.items()}
    data = instantiate(cfg.data)
    step_scheduler = instantiate(cfg.method.step_scheduler)
    optim = OptimConfig(
        lr=cfg.method.lr * cfg.train.lr_scale,
        weight_decay=cfg.train.weight_decay,
        grad_clip=cfg.train.grad_clip,
        optimizer_step=cfg.train.optimizer_step,
        clip_eps=cfg.method.clip_eps,
        adv_clip=cfg.method.adv_clip,
        kl_beta=cfg.method.kl_beta,
    )
    module = GRPOModule(
        model,
        reward,
        eval_rewards,
        step_scheduler,
        shift=cfg.method.shift,
        max_batch=cfg.train.max_batch,
        optim=optim,
        val=ValConfig(**cfg.val),
        seed=cfg.seed,
    )
    logger = instantiate(cfg.logger, run_name=cfg.logger.run_name or run_name(cfg))
    log_run_metadata(logger, cfg, seed=cfg.seed)
    trainer = instantiate(cfg.trainer, logger=logger)
    train_loader, val_loader = prompt_loaders(data, cfg)

    module.calibrate(calibration_prompts(data, cfg), logger)  # a no-op unless the method calibrates (DenseGRPO)
    before = trainer.validate(module, val_loader, verbose=False)[0]
    trainer.fit(module, train_loader, val_loader)
    after = trainer.validate(module, val_loader, verbose=False)[0]

    out = Path(cfg.paths.output_dir) / "final_model"
    model.save_pretrained(out) if hasattr(model, "save_pretrained") else torch.save(model.state_dict(), out / "model.pt")
    log_artifact_path(logger, out, "final_model")
    summary = {f"before/{k}": v for k, v in before.items()} | {f"after/{k}": v for k, v in after.items()}
    for key in sorted(before):
        print(f"{key:<22} before {before[key]:.4f}   after {after[key]:.4f}")
    logger.finalize("success")
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
