"""The evaluation before training, cached by what determines it (`val.before_cache=<dir>`).

Every run of a study starts from the same weights and evaluates the same held-out prompts with the
same fixed noises (val.seed), so its "before" numbers are the same for every method and seed; at
the study's final-evaluation size (val.final_samples_per_prompt) that one evaluation costs more
than a run's training on the tiny model. With a cache directory the first run computes it and the
others read it (a file lock makes a parallel run wait rather than compute it twice).

The key is a hash of what the numbers depend on: the weights evaluated (every tensor of the
model's state dict), the held-out prompts in order, the val config (sizes, noise seed, steps,
precision, bootstrap), the sampler shift, the model and eval-reward configs, and every file of the
flowrl package (its code and shipped weights), so that a code change cannot serve stale numbers.
Not covered: reward checkpoints outside the package changed in place (delete the folder then).
Off by default (null); every sweep sets it (sweeps/_common.sh). One process only: under DDP a rank
waiting on the lock would stall the others' collective, so several ranks evaluate as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def before_key(module, prompts: list[str], cfg) -> str:
    """sha256 of what the evaluation before training depends on (see the module docstring)."""
    import torch
    from omegaconf import OmegaConf

    h = hashlib.sha256()
    with module.evaluated_weights():
        for name, tensor in sorted(module.model.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    val = {k: v for k, v in OmegaConf.to_container(cfg.val, resolve=True).items() if k != "before_cache"}
    described = {
        "prompts": list(prompts),
        "val": val,
        "shift": float(module.shift),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "eval_rewards": OmegaConf.to_container(cfg.eval_rewards, resolve=True),
    }
    h.update(json.dumps(described, sort_keys=True, default=str).encode())
    h.update(package_fingerprint().encode())
    return h.hexdigest()


def package_fingerprint() -> str:
    """sha256 over every file of the installed flowrl package (code, configs, shipped weights; ~20 MB)."""
    import flowrl

    root = Path(flowrl.__file__).parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cached_evaluation(directory: str | os.PathLike, key: str, compute) -> tuple[dict, bool]:
    """(record, hit): the record stored under `key`, or `compute()`'s (a JSON-able dict), stored.
    The lock is held while computing, so a parallel run with the same key waits and then reads."""
    from filelock import FileLock

    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"before_{key[:32]}.json"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return json.loads(path.read_text()), True
        record = compute()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: a crash never leaves half a record to be read
        return record, False
