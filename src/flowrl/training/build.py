"""Building a run from its config: the prompt loaders, the module (model, rewards, step scheduler,
optimizer, lr_scheduler, loss), the RNG seeding. Cheap, fail-fast parts first, Lightning last."""

from __future__ import annotations

from omegaconf import DictConfig

from flowrl.data.prompts import evenly_spaced
from flowrl.utils.seeds import mix_seed

STREAM_BLOCK = 256  # prompts per seeded block of the stream


def prompt_stream(prompts: list[str], seed: int, start: int, count: int) -> list[str]:
    """Items start .. start+count-1 of the run's prompt stream: one endless sequence of prompts
    drawn with replacement, fixed by the seed alone (block b of STREAM_BLOCK draws comes from a
    generator seeded by (seed, b)). Common random numbers: every method and config of a seed sees
    the same sequence, whatever it takes per iteration."""
    import torch

    out, block, cached = [], None, None
    for k in range(start, start + count):
        if k // STREAM_BLOCK != block:
            block = k // STREAM_BLOCK
            g = torch.Generator().manual_seed(mix_seed("prompt-stream", seed, block))
            cached = torch.randint(len(prompts), (STREAM_BLOCK,), generator=g).tolist()
        out.append(prompts[cached[k % STREAM_BLOCK]])
    return out


class PromptBatches:
    """The train prompts of iterations start, start+1, ..., iterations-1, taken in order from the
    seed's prompt stream (`prompt_stream`): iteration i on rank r of W takes the P prompts at
    (i * W + r) * P. A method with P prompts per iteration takes the next P of the same sequence,
    so methods compared at one seed see the same prompts in the same order (common random
    numbers); the iteration count alone is the position (a resumed run draws what the
    uninterrupted one would have) and every DDP rank has prompts of its own."""

    def __init__(self, prompts, per_step: int, iterations: int, seed: int, start: int = 0, rank=None, world=None):
        self.prompts, self.per_step, self.iterations, self.seed, self.start = list(prompts), per_step, iterations, seed, start
        # None: this process's rank / world size, read when a batch is drawn (under DDP, at fit time)
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)

    def __getitem__(self, i: int) -> list[str]:
        from flowrl.training.distributed import rank_and_world

        rank, world = rank_and_world()  # under DDP each rank draws its own prompts
        rank = rank if self.rank is None else self.rank
        world = world if self.world is None else self.world
        position = ((self.start + i) * world + rank) * self.per_step
        return prompt_stream(self.prompts, self.seed, position, self.per_step)


def _identity(batch):
    return batch


def prompt_loaders(data, cfg: DictConfig, iterations: int, val_prompts: list[str], start: int = 0):
    """Train: the prompt batches of iterations start..iterations-1; val: the held-out prompts the
    run evaluates (`held_out_prompts`) at once."""
    from torch.utils.data import DataLoader

    batches = PromptBatches(data.train, cfg.train.prompts_per_step, iterations, cfg.seed, start)
    train = DataLoader(batches, batch_size=None, collate_fn=_identity)
    val = DataLoader(val_prompts, batch_size=len(val_prompts), collate_fn=list)
    return train, val


def held_out_prompts(prompts: list[str], max_prompts: int | None) -> list[str]:
    """All held-out prompts, or `val.max_prompts` of them evenly spaced through the list (which
    the worlds order category by category, so each category keeps about its share; one with fewer
    prompts than the spacing may drop out): the same subset for every method and seed."""
    return list(prompts) if max_prompts is None else evenly_spaced(prompts, max_prompts)


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

    from flowrl.config.schema import check_config

    # every value that cannot run fails here, in a second, before any model loads (the schema
    # also builds a throwaway step scheduler and lays out its first update)
    check_config(cfg)
    data = instantiate(cfg.data)
    step_scheduler = instantiate(cfg.method.step_scheduler)
    # rewards before the model: a missing reward checkpoint is reported before FLUX (24 GB) loads
    reward = instantiate(cfg.reward)
    eval_rewards = {name: instantiate(r) for name, r in cfg.eval_rewards.items()}
    model = instantiate(cfg.model)

    from flowrl.training.module import GRPOModule, OptimConfig, ValConfig

    ema = cfg.method.get("ema") or {}
    optim = OptimConfig(
        lr=cfg.method.lr * cfg.train.lr_scale,
        grad_clip=cfg.train.grad_clip,
        ema_decay=ema.get("decay", 0.0),
        ema_every=ema.get("every", 1),
        ema_warmup=ema.get("warmup", False),
    )
    module = GRPOModule(
        model,
        reward,
        eval_rewards,
        step_scheduler,
        shift=cfg.method.shift,
        max_batch=cfg.train.max_batch,
        optim=optim,
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler),
        loss=instantiate(cfg.loss),
        val=ValConfig(**cfg.val),
        seed=cfg.seed,
        max_consecutive_skips=cfg.train.max_consecutive_skips,
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
    # bf16 autocast (model.precision): diffusers' RMSNorm keeps fp32 weights, torch says so every forward
    warnings.filterwarnings("ignore", message=r"Mismatch dtype between input and weight")
    # fit gets no val loader on purpose: flowrl.training.run_control evaluates inside the loop
    warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`")
    # Lightning's lines once: its own console handler ("INFO: ..."), not again through Hydra's root one
    logging.getLogger("lightning").propagate = False
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_litlogger_tip not in rank_zero.filters:
        rank_zero.addFilter(_drop_litlogger_tip)


def _drop_litlogger_tip(record) -> bool:
    """A logging filter (a callable works as one): False drops the record. Also Lightning's
    "Detected KeyboardInterrupt" on a second signal: flowrl says what happened in one line."""
    message = record.getMessage()
    return "litlogger" not in message and "Detected KeyboardInterrupt" not in message
