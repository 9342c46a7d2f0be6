"""Several processes (Lightning DDP / FSDP): the rank helpers flowrl needs, and FSDP's strategy.

flowrl's rule under DDP: each rank rolls out whole groups of its own prompts (a group never spans
ranks), DDP averages the gradients at every optimizer step (the official scripts' FSDP average
over GPUs), and only scalars cross ranks, for logging.
"""

from __future__ import annotations

import os


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size): torch.distributed's once initialised, else the launcher's env."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))), int(os.environ.get("WORLD_SIZE", 1))


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def mean_over_ranks(values: dict[str, float], strategy) -> dict[str, float]:
    """Scalar metrics averaged over the ranks (one all-reduce of one small tensor); as is alone."""
    _, world = rank_and_world()
    if world == 1 or not values:
        return values
    import torch

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=strategy.root_device)
    t = strategy.reduce(t, reduce_op="mean")
    return dict(zip(keys, t.tolist(), strict=True))


def fsdp_strategy(wrap: list[str], **kwargs):
    """Lightning's FSDPStrategy with `wrap` (dotted class paths, e.g. FLUX's transformer blocks) as
    the auto-wrap set: each such block is one shard unit."""
    from hydra.utils import get_class
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy={get_class(path) for path in wrap}, **kwargs)


def is_fsdp(trainer) -> bool:
    return trainer is not None and type(trainer.strategy).__name__ == "FSDPStrategy"


def full_trainable_state(module, trainer) -> dict | None:
    """Under FSDP: the full (unsharded) trainable weights, gathered on every rank by FSDP's own
    state-dict API (a collective: every rank must call it), returned on rank 0 (CPU), None on the
    others. Not under FSDP: None (callers read the module's parameters). Untested on GPUs."""
    if not is_fsdp(trainer):
        return None
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    root = trainer.strategy.model
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True, rank0_only=True)):
        full = root.state_dict()
    if not trainer.is_global_zero:
        return None
    wanted = {n for n, p in module.model.named_parameters() if p.requires_grad}
    out = {}
    for key, value in full.items():
        name = key.split("model.", 1)[1] if key.startswith("model.") or ".model." in key else key
        name = name.replace("_fsdp_wrapped_module.", "")
        if name in wanted:
            out[name] = value
    return out
