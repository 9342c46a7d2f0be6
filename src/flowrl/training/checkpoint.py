"""Checkpoints that resume a run exactly: `<run output dir>/checkpoints/iter_<NNNNNN>/`.

What the next iteration depends on, each in a format that loads without unpickling code:
  trainable.safetensors   the trained weights (the LoRA, or the full transformer), by name
  optimizer.pt            the optimizer's state_dict (tensors and numbers: torch.load weights_only=True)
  ema.safetensors         the EMA's averaged weights (when method.ema.decay > 0)
  policies.safetensors    the plan's policy copies (when its objective keeps any)
  rng.safetensors         the module's rollout generator and torch's global generator states
  state.json              iterations / optimizer steps / budget spent, the step scheduler's
                          state_dict (e.g. a calibrated noise table, a moving window), python's and
                          numpy's RNG states, the MLflow run id, the config the run was started with

The prompt sampler needs no state of its own: batch i on rank r is the seed's prompt stream at
position (i * W + r) * P (flowrl.training.build.PromptBatches), so the iteration count is its position.

A checkpoint is written to `iter_<N>.tmp/` and renamed into place, so a crash while writing (a
full disk, a kill) leaves the previous checkpoints as they were; only the last `keep` are kept.
Its last file is `manifest.json`: every other file's size and sha256. A resume verifies the
checkpoint before loading it (`verify`: the manifest, each safetensors header against its file's
size, the optimizer file's zip CRCs) and falls back to the newest intact one (`latest_intact`), so a
checkpoint damaged after it was written (a truncated copy, a disk error) costs its iterations, not
the run.

Why not Lightning's checkpointing: its .ckpt is one pickle of the whole module (the frozen reward
models and text encoders included, tens of GB for FLUX + HPS) loaded with unpickling, and a
mid-epoch restart replays a plain DataLoader from the start; flowrl's runs are one epoch long.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
PREFIX = "iter_"
FORMAT = 1
MANIFEST = "manifest.json"


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
    """The checkpoints of a run, oldest first (a `.tmp` one was never finished; `verify` says
    whether one is intact)."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: p.name)


def latest_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    """The newest intact checkpoint (see `latest_intact`), or None."""
    return latest_intact(output_dir)[0]


def latest_intact(output_dir: str | Path) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """(the newest checkpoint that passes `verify`, [(newer damaged one, what is wrong), ...])."""
    damaged = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = verify(path)
        if problem is None:
            return Checkpoint(path, json.loads((path / "state.json").read_text())), damaged
        damaged.append((path, problem))
    return None, damaged


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    """manifest.json, written last: {file: {"bytes": size, "sha256": hex}} of every other file."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}))


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header (None: consistent): the 8-byte header
    length, the JSON header, and the data end it declares against the file's size."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than a safetensors header"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            return f"header of {n} bytes in a {size}-byte file"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "unreadable safetensors header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        return f"{size} bytes, its header says {8 + n + max(ends, default=0)}"
    return None


def verify(path: Path) -> str | None:
    """None if checkpoint `path` is intact, else what is wrong, in a few words: state.json parses;
    every file of the manifest is there with its size and sha256 (a checkpoint written before the
    manifest existed is checked without); safetensors headers match their files; the optimizer
    file's zip CRCs hold."""
    try:
        json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return "state.json unreadable"
    needed = ["trainable.safetensors", "rng.safetensors", "optimizer.pt"]
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError, KeyError):
            return f"{MANIFEST} unreadable"
        for name, want in files.items():
            f = path / name
            if not f.is_file():
                return f"{name} missing"
            if f.stat().st_size != want["bytes"]:
                return f"{name}: {f.stat().st_size} bytes, written as {want['bytes']}"
            if _sha256(f) != want["sha256"]:
                return f"{name}: content differs from what was written (sha256)"
    for name in needed:
        if not (path / name).is_file():
            return f"{name} missing"
    for f in sorted(path.glob("*.safetensors")):
        problem = _safetensors_problem(f)
        if problem is not None:
            return f"{f.name}: {problem}"
    try:
        with zipfile.ZipFile(path / "optimizer.pt") as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile):
        return "optimizer.pt: not a readable torch.save file"
    if bad is not None:
        return f"optimizer.pt: {bad} fails its CRC"
    return None


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
        if (
            getattr(module, "copies", None) is not None and module.copies.shadow
        ):  # the plan's policy copies (DiffusionNFT's old policy, AWM's KL EMA)
            save_file(module.copies.state_dict(), str(tmp / "policies.safetensors"))
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
        _write_manifest(tmp)  # last: a checkpoint without one was never finished
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
    if (ckpt.path / "policies.safetensors").exists():
        module.copies.load_state_dict(load_file(str(ckpt.path / "policies.safetensors")))
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
