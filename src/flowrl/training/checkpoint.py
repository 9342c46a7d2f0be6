"""Checkpoints that resume a run exactly: `<run output dir>/checkpoints/iter_<NNNNNN>/`.

What the next iteration depends on, each in a format that loads without unpickling code:
  trainable.safetensors   the trained weights (the LoRA, or the full transformer), by name
  optimizer.pt            the optimizer's state_dict (tensors and numbers: torch.load weights_only=True)
  ema.safetensors         the EMA's averaged weights (when method.ema.decay > 0)
  rng.safetensors         the module's rollout generator and torch's global generator states
  state.json              iterations / optimizer steps / budget spent, the step scheduler's
                          state_dict (e.g. a calibrated noise table, a moving window), python's and
                          numpy's RNG states, the MLflow run id, the config the run was started with

The prompt sampler needs no state of its own: batch i on rank r is the seed's prompt stream at
position (i * W + r) * P (flowrl.training.build.PromptBatches), so the iteration count is its position.

A checkpoint is written to `iter_<N>.tmp/` and renamed into place, so a crash while writing (a
full disk, a kill) leaves the previous checkpoints as they were; only the last `keep` are kept.

Why not Lightning's checkpointing: its .ckpt is one pickle of the whole module (the frozen reward
models and text encoders included, tens of GB for FLUX + HPS) loaded with unpickling, and a
mid-epoch restart replays a plain DataLoader from the start; flowrl's runs are one epoch long.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
PREFIX = "iter_"
FORMAT = 1


@dataclass
class Checkpoint:
    path: Path
    state: dict

    @property
    def iteration(self) -> int:
        return int(self.state["iteration"])

    @property
    def run_id(self) -> str | None:
        return self.state.get("mlflow_run_id")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a `.tmp` one was never finished)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp")]
    return sorted((p for p in done if (p / "state.json").is_file()), key=lambda p: p.name)


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    found = list_checkpoints(output_dir)
    if not found:
        return None
    path = found[-1]
    return Checkpoint(path, json.loads((path / "state.json").read_text()))


def _trainable(module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.model.named_parameters() if p.requires_grad}


def save_checkpoint(
    module,
    optimizer,
    output_dir: str | Path,
    run_id: str | None,
    config: dict,
    keep: int = 2,
    config_unresolved: dict | None = None,
    trainable: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write the module's training state after `module.iteration` iterations; returns its path.
    Raises OSError (e.g. a full disk) with the earlier checkpoints untouched."""
    from safetensors.torch import save_file

    root = checkpoint_dir(output_dir)
    final = root / f"{PREFIX}{module.iteration:06d}"
    tmp = root / f"{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        weights = trainable if trainable is not None else _trainable(module)  # FSDP: gathered by the caller
        save_file({n: p.detach().cpu().contiguous() for n, p in weights.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        if module.ema is not None:
            save_file({str(i): s.contiguous() for i, s in enumerate(module.ema.shadow)}, str(tmp / "ema.safetensors"))
        save_file(
            {"module_generator": module.generator.get_state(), "torch": torch.get_rng_state()},
            str(tmp / "rng.safetensors"),
        )
        np_state = np.random.get_state()
        state = {
            "format": FORMAT,
            **module.progress_state(),
            "step_scheduler": module.step_scheduler.state_dict(),
            "python_random": _jsonable(random.getstate()),
            "numpy_random": {
                "name": np_state[0],
                "keys": np_state[1].tolist(),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "mlflow_run_id": run_id,
            "config": config,
            "config_unresolved": config_unresolved,
        }
        (tmp / "state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore_module(module, ckpt: Checkpoint) -> None:
    """Everything but the optimizer (which Lightning builds at fit start): weights, EMA, RNGs,
    counters, the step scheduler's state."""
    from safetensors.torch import load_file

    weights = load_file(str(ckpt.path / "trainable.safetensors"))
    params = _trainable(module)
    if set(weights) != set(params):
        missing, extra = sorted(set(params) - set(weights))[:3], sorted(set(weights) - set(params))[:3]
        raise ValueError(
            f"checkpoint {ckpt.path} does not match this model's trainable weights (missing {missing}, extra {extra})"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    if module.ema is not None:
        shadow = load_file(str(ckpt.path / "ema.safetensors"))
        module.ema.shadow = [shadow[str(i)].to(s.device) for i, s in enumerate(module.ema.shadow)]
    rng = load_file(str(ckpt.path / "rng.safetensors"))
    module.generator.set_state(rng["module_generator"])
    torch.set_rng_state(rng["torch"])
    s = ckpt.state
    random.setstate(_tuples(s["python_random"]))
    n = s["numpy_random"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    module.load_progress_state(s)
    module.step_scheduler.load_state_dict(s["step_scheduler"])


def load_optimizer_state(ckpt: Checkpoint) -> dict:
    return torch.load(ckpt.path / "optimizer.pt", map_location="cpu", weights_only=True)


def _jsonable(obj):
    return [_jsonable(o) for o in obj] if isinstance(obj, (tuple, list)) else obj


def _tuples(obj):
    return tuple(_tuples(o) for o in obj) if isinstance(obj, list) else obj
