"""Several processes (Lightning DDP / FSDP): the rank helpers flowrl needs, and FSDP's strategy.

flowrl's rule under DDP: each rank rolls out whole groups of its own prompts (a group never spans
ranks), DDP averages the gradients at every optimizer step (the official scripts' FSDP average
over GPUs), and only scalars cross ranks, for logging.
"""

from __future__ import annotations

import os
import sys


def rank_and_world() -> tuple[int, int]:
    """(global rank, world size): torch.distributed's once initialised, else the launcher's env
    (torch is not imported for it: a config error is reported before torch loads)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))), int(os.environ.get("WORLD_SIZE", 1))


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def release_children(trainer) -> list:
    """The rank processes this one launched (Lightning's subprocess launcher, rank 0), taken away
    from Lightning's observer thread: it SIGKILLs rank 0 as soon as another rank exits with a
    non-zero status, which would cut rank 0 short while it ends the MLflow run. [] elsewhere."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    procs = getattr(launcher, "procs", None)
    children = list(procs or [])
    if children:
        procs.clear()  # the observer's own list: it now sees no child and stops watching
    return children


def leave_together(children: list, agreed: bool) -> None:
    """The end of a stopped run. `agreed` (a preemption every rank reached at the same point): wait
    until rank 0 has ended the MLflow run (a barrier), then rank 0 waits for the ranks it launched
    to exit (killing one still there after 60 s). Otherwise (a second signal: stop at once) rank 0
    kills the ranks it launched."""
    dist = sys.modules.get("torch.distributed")
    if agreed and dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        try:
            dist.barrier()
        except Exception:  # a rank that is gone (killed): nothing left to wait for
            pass
    for proc in children:
        try:
            proc.wait(timeout=60 if agreed else 0.1)
        except Exception:
            proc.kill()
            proc.wait()


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
