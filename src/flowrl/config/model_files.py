"""The checks on a model's checkpoint files that `flowrl.config.schema` runs before anything heavy.

Torch-free on purpose (and outside `flowrl.models`, whose package import loads torch): a
missing checkpoint is reported in about half a second, not after the 2-3 s torch import. Each
loader module in `flowrl.models` calls its check here again before it reads a file, and
`CHECKS` maps the loader module a model yaml's `_target_` names to its check.
"""

from __future__ import annotations

import json
from pathlib import Path

from flowrl.config.errors import CheckpointNotFound

FLUX_REPO = "black-forest-labs/FLUX.1-dev"
SD3_REPO = "stabilityai/stable-diffusion-3.5-medium"
# the sub-folders both pipelines read: the transformer, the VAE, CLIP-L and T5 with their tokenizers
PIPELINE_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def check_pipeline_dir(path, what: str, repo: str, pipeline_class: str, components: tuple[str, ...]) -> Path:
    """The directory of a diffusers pipeline (model_index.json naming `pipeline_class` and the
    `components` sub-folders), else CheckpointNotFound naming the directory and where to get it.
    Reads two small files only."""
    where = f"huggingface.co/{repo}"
    hint = f"`hf download {repo} --local-dir <dir>`, then set model.path=<dir> or FLOWRL_MODELS"
    if path in (None, ""):
        raise CheckpointNotFound(what, path, where, hint)
    p = Path(path).expanduser()
    index = p / "model_index.json"
    if not index.is_file():
        reason = "no model_index.json in it" if p.is_dir() else "no such directory"
        raise CheckpointNotFound(what, p, where, f"{reason}; {hint}")
    found = json.loads(index.read_text()).get("_class_name")
    if found != pipeline_class:
        raise CheckpointNotFound(what, p, where, f"its model_index.json is a {found}, expected a {pipeline_class}")
    missing = [c for c in components if not (p / c).is_dir()]
    if missing:
        raise CheckpointNotFound(what, p, where, f"incomplete: no {', '.join(missing)} folder")
    return p


def check_flux(path) -> Path:
    """The FLUX.1-dev directory `flowrl.models.flux.load_flux` reads."""
    return check_pipeline_dir(path, "FLUX.1-dev", FLUX_REPO, "FluxPipeline", PIPELINE_COMPONENTS)


def check_sd3(path) -> Path:
    """The SD3.5-Medium directory `flowrl.models.sd3.load_sd3` reads."""
    return check_pipeline_dir(path, "SD3.5-Medium", SD3_REPO, "StableDiffusion3Pipeline", PIPELINE_COMPONENTS)


# The shipped tiny checkpoints, one per embedded world: the text table knows only its world's words.
TINY_WORLDS = {"shapes": "tiny_flux", "geneval": "tiny_flux_geneval"}
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def tiny_flux_dir(path, world: str | None) -> Path:
    """The directory `flowrl.models.tiny_flux.load_tiny_flux(path, world=...)` reads."""
    if path not in (None, ""):
        return Path(path).expanduser()
    world = world or "shapes"
    if world not in TINY_WORLDS:
        raise ValueError(f"model.world must be one of {sorted(TINY_WORLDS)}, got {world!r}")
    return ASSETS / TINY_WORLDS[world]


def check_tiny_flux(path, world: str | None = None) -> None:
    """A directory written by flowrl.pretrain --out, when one is given (null: the world's shipped weights)."""
    found = tiny_flux_dir(path, world)
    if not (found / "transformer").is_dir():
        raise CheckpointNotFound("tiny_flux", found, "python -m flowrl.pretrain --out <dir>", "no transformer/ folder in it")


def tiny_flux_vocabulary(path, world: str | None = None) -> set[str]:
    """The words the tiny model's text table knows (its json; a LoRA directory names no vocab and
    gives the empty set: its base's is checked when it loads)."""
    cfg = tiny_flux_dir(path, world) / "flowrl_tiny_flux.json"
    return set(json.loads(cfg.read_text()).get("vocab", [])) if cfg.is_file() else set()


CHECKS = {
    "flowrl.models.flux": check_flux,
    "flowrl.models.sd3": check_sd3,
    "flowrl.models.tiny_flux": check_tiny_flux,
}
