"""What `checkpoint=` names, and loading it onto the configured model (`model=`).

    none | null | base             the model as configured (the base model)
    <run output dir>               its final_model/ (the evaluated weights: the EMA when the run kept
                                   one), else its newest intact checkpoint
    <final_model dir>              what a run saved: the tiny model's directory (full weights or a
                                   LoRA over its base), a LoRA (pytorch_lora_weights.safetensors), a
                                   full fine-tune's transformer/, or FSDP's trainable.safetensors
    <checkpoints/iter_N dir>       a checkpoint's trainable weights (its EMA when it has one)
    <file>.safetensors             a LoRA file (diffusers / peft keys), attached to the model

`resolve` checks the path and says what it is without torch (before any model loads);
`load_model` builds the model and puts the weights in. A path that is none of these is one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flowrl.config.errors import ConfigError

BASE_NAMES = ("none", "null", "base", "")
KINDS = ("base", "tiny_dir", "lora_dir", "lora_file", "transformer_dir", "trainable", "checkpoint")
WHAT = (
    "a run output directory, a final_model directory, a checkpoints/iter_<N> directory, "
    "a LoRA .safetensors file, or none (the base model)"
)


@dataclass
class Weights:
    kind: str  # one of KINDS
    path: Path | None
    given: str  # as the command line gave it (the MLflow tag `checkpoint`)
    label: str  # its column in the tables


def resolve(spec, key: str = "checkpoint") -> Weights:
    """The weights `spec` names (see the module docstring); ConfigError (one line) if none."""
    if spec is None or str(spec).strip().lower() in BASE_NAMES:
        return Weights("base", None, "none", "base")
    given = str(spec)
    path = Path(given).expanduser()
    if not path.exists():
        raise ConfigError(key, path, f"no such file or directory ({WHAT})")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ConfigError(key, path, f"a file must be a LoRA .safetensors ({WHAT})")
        return Weights("lora_file", path, given, path.stem)
    label = path.name
    if (path / "final_model").is_dir():
        path = path / "final_model"
    elif (path / "checkpoints").is_dir():
        from flowrl.training.checkpoint import latest_intact

        ckpt, damaged = latest_intact(path)
        if ckpt is None:
            found = "; ".join(f"{p.name}: {why}" for p, why in damaged) or "none written"
            raise ConfigError(key, path, f"a run directory without final_model/ and without an intact checkpoint ({found})")
        return Weights("checkpoint", ckpt.path, given, f"{label}@{ckpt.path.name}")
    elif path.name == "final_model":
        label = path.parent.name
    if (path / "flowrl_tiny_flux.json").is_file():
        return Weights("tiny_dir", path, given, label)
    if (path / "state.json").is_file() and (path / "trainable.safetensors").is_file():
        return Weights("checkpoint", path, given, f"{path.parent.parent.name}@{path.name}")
    if (path / "pytorch_lora_weights.safetensors").is_file():
        return Weights("lora_dir", path, given, label)
    if (path / "transformer").is_dir():
        return Weights("transformer_dir", path, given, label)
    if (path / "trainable.safetensors").is_file():
        return Weights("trainable", path, given, label)
    raise ConfigError(key, path, f"holds no weights flowrl wrote ({WHAT})")


def resolve_all(spec, key: str = "checkpoint") -> list[Weights]:
    """`checkpoint=x` or `checkpoint=[base, run_dir, ...]`: each resolved, labels made unique."""
    from omegaconf import ListConfig

    specs = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    if not specs:
        specs = [None]
    out = [resolve(s, key) for s in specs]
    seen: dict[str, int] = {}
    for w in out:
        n = seen[w.label] = seen.get(w.label, 0) + 1
        if n > 1:
            w.label = f"{w.label}#{n}"
    return out


def load_model(model_cfg, weights: Weights, overrides: dict | None = None):
    """The configured model with `weights` in it, in eval mode and frozen. `overrides`: model knobs
    the protocol sets (resolution, guidance), applied where the model has that knob."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    with open_dict(cfg):
        for k, v in (overrides or {}).items():
            if v is not None and k in cfg:
                cfg[k] = v
        tiny = str(cfg.get("_target_", "")).endswith("load_tiny_flux")
        if weights.kind == "tiny_dir":
            if not tiny:
                raise ConfigError(
                    "checkpoint",
                    weights.path,
                    f"a tiny model's directory, but model is {cfg.get('_target_')}: use model=tiny_flux",
                )
            cfg.path, cfg.lora = str(weights.path), None
        elif weights.kind == "lora_dir":
            if "lora_weights" not in cfg:
                raise ConfigError(
                    "checkpoint", weights.path, f"a LoRA directory, but {cfg.get('_target_')} takes no lora_weights"
                )
            cfg.lora_weights, cfg.lora = str(weights.path), None
        elif weights.kind in ("lora_file", "transformer_dir", "trainable", "base"):
            if "lora" in cfg:
                cfg.lora = None
            if "lora_weights" in cfg and weights.kind != "base":
                cfg.lora_weights = None
        elif weights.kind == "checkpoint":  # the run's own adapter layout (its saved config), filled from the file
            saved = json.loads((weights.path / "state.json").read_text()).get("config") or {}
            if "lora" in cfg:
                cfg.lora = (saved.get("model") or {}).get("lora")
            if "lora_weights" in cfg:
                cfg.lora_weights = None
    model = instantiate(cfg)
    if weights.kind == "lora_file":
        from flowrl.models.lora import load_lora

        load_lora(model.transformer, weights.path, trainable=False)
    elif weights.kind == "transformer_dir":
        _load_transformer_dir(model, weights.path / "transformer")
    elif weights.kind in ("trainable", "checkpoint"):
        _load_trainable(model, weights.path)
    return model.eval().requires_grad_(False)


def _load_transformer_dir(model, folder: Path) -> None:
    """A full fine-tune's `transformer/` (diffusers save_pretrained: safetensors shards) into the model's transformer."""
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state |= load_file(str(shard))
    if not state:
        raise ConfigError("checkpoint", folder, "no .safetensors weights in the transformer folder")
    _copy(model.transformer, state, folder)


def _load_trainable(model, folder: Path) -> None:
    """`trainable.safetensors` (parameter names of the model: a LoRA's or the transformer's), then a
    checkpoint's EMA (`ema.safetensors`, in the order of the model's trainable parameters), which is
    what the run evaluated and would have saved."""
    from safetensors.torch import load_file

    _copy(model, load_file(str(folder / "trainable.safetensors")), folder)
    ema = folder / "ema.safetensors"
    if ema.is_file():
        import torch

        shadow = load_file(str(ema))
        params = (
            list(model.trainable_parameters()) if hasattr(model, "trainable_parameters") else list(model.transformer.parameters())
        )
        if len(shadow) != len(params):
            raise ConfigError("checkpoint", ema, f"{len(shadow)} averaged tensors for {len(params)} trainable parameters")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(shadow[str(i)].to(p.device, p.dtype))


def _copy(module, state: dict, where: Path) -> None:
    import torch

    params = dict(module.named_parameters()) | dict(module.named_buffers())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ConfigError(
            "checkpoint",
            where,
            f"{len(missing)} tensors this model does not have (e.g. {missing[0]}): another model= than the run's?",
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
