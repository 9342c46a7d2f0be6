"""A protocol (conf/protocol/<name>.yaml): its prompts, sampler settings and rewards, and the paper
it comes from. This module reads its prompts and checks, without torch, what can be checked before
any model loads.

Prompts come from one of:
- `prompts.file`: a text file, one prompt per line (blank and # lines skipped), or a `.jsonl`
  file of {"prompt": ..., "category": ...} objects ("tag" is read as the category, as GenEval's
  metadata files name it); read from $FLOWRL_DATA (`paths.data`), never downloaded. A missing file
  is one line that names the file, what it holds and where it is published (`prompts.published`).
- `prompts.source` + `prompts.split`: an embedded world's prompt set (a `data` group target, e.g.
  flowrl.data.geneval.prompts) and which list of it (`val`: the held-out entries a training run
  evaluates on).
`max_prompts` keeps at most that many, evenly spaced, as a training run's `val.max_prompts` does
(`flowrl.training.build.held_out_prompts`), so a protocol and a run's evaluation take the same subset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flowrl.config.errors import ConfigError, UserFacingError

# what a protocol's sampler node may hold (conf/protocol/*.yaml `sampler:`)
SAMPLER_KEYS = (
    "num_steps",
    "shift",
    "sigma_grid",
    "samples_per_prompt",
    "seed",
    "batch_size",
    "full_precision",
    "guidance_scale",
    "height",
    "width",
)
MODEL_OVERRIDES = ("guidance_scale", "height", "width")  # sampler settings that are the model's knobs


class PromptFileMissing(UserFacingError):
    """A protocol's prompt file is not where it is read from (nothing is downloaded)."""


@dataclass
class PromptSet:
    prompts: list[str]
    categories: list[str] | None  # from a jsonl file; None: none given (a reward may still group them)


@dataclass
class Sampler:
    num_steps: int = 16
    shift: float = 3.0
    sigma_grid: str = "shifted_linspace"
    samples_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 64
    full_precision: bool = True
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None

    @classmethod
    def from_config(cls, node) -> Sampler:
        return cls(**{k: v for k, v in dict(node).items() if k in SAMPLER_KEYS})


def protocol_name(protocol) -> str:
    return str(protocol.get("name"))


def prompt_file(protocol) -> Path | None:
    file = (protocol.get("prompts") or {}).get("file")
    return Path(str(file)).expanduser() if file not in (None, "") else None


def check_protocol(protocol, key: str = "protocol") -> None:
    """What a protocol needs before any model loads: its sampler's keys and values, and its prompt
    file (present, readable, with a prompt). One line each (UserFacingError)."""
    name = protocol_name(protocol)
    sampler = protocol.get("sampler") or {}
    unknown = sorted(set(sampler) - set(SAMPLER_KEYS))
    if unknown:
        raise ConfigError(
            f"{key}.sampler.{unknown[0]}", sampler[unknown[0]], f"not a sampler setting (known: {', '.join(SAMPLER_KEYS)})"
        )
    for k in ("num_steps", "samples_per_prompt", "batch_size"):
        v = sampler.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{key}.sampler.{k}", v, "an integer >= 1")
    grid = sampler.get("sigma_grid", "shifted_linspace")
    if grid not in ("shifted_linspace", "flow_match_euler"):
        raise ConfigError(f"{key}.sampler.sigma_grid", grid, "shifted_linspace or flow_match_euler")
    if not protocol.get("rewards"):
        raise ConfigError(f"{key}.rewards", None, f"protocol {name} scores nothing: give it at least one reward")
    mp = protocol.get("max_prompts")
    if mp is not None and (not isinstance(mp, int) or isinstance(mp, bool) or mp < 1):
        raise ConfigError(f"{key}.max_prompts", mp, "null or an integer >= 1")
    prompts = protocol.get("prompts") or {}
    path = prompt_file(protocol)
    if path is None and prompts.get("source") is None:
        raise ConfigError(f"{key}.prompts", None, "a prompt file (prompts.file) or an embedded world's set (prompts.source)")
    if path is not None and not path.exists():
        raise PromptFileMissing(missing_file_message(protocol, path, key))
    if path is not None:
        from flowrl.config.schema import prompt_file_problem

        problem = prompt_file_problem(path)
        if problem:
            raise ConfigError(f"{key}.prompts.file", path, problem)
    from flowrl.evaluation.reward_files import check_reward_files

    check_reward_files(protocol.rewards)  # a missing reward checkpoint in a second, as its loader words it


def missing_file_message(protocol, path: Path, key: str = "protocol") -> str:
    prompts = protocol.get("prompts") or {}
    what = prompts.get("holds") or "the protocol's prompts, one per line"
    where = prompts.get("published") or "see conf/protocol/" + protocol_name(protocol) + ".yaml"
    return (
        f"protocol {protocol_name(protocol)}: prompt file not found: {path.absolute()}; it holds {what}, published at "
        f"{where}: put it there ($FLOWRL_DATA sets the folder) or set {key}.prompts.file=<file>"
    )


def read_prompts(protocol) -> PromptSet:
    """The protocol's prompts (and categories, when its file gives them), at most max_prompts of them."""
    path = prompt_file(protocol)
    if path is not None:
        if not path.exists():
            raise PromptFileMissing(missing_file_message(protocol, path))
        found = read_prompt_records(path)
    else:
        from hydra.utils import instantiate

        source = instantiate(protocol.prompts.source)
        found = PromptSet(list(getattr(source, protocol.prompts.get("split") or "val")), None)
    from flowrl.training.build import held_out_prompts

    keep = held_out_prompts(list(range(len(found.prompts))), protocol.get("max_prompts"))
    cats = [found.categories[i] for i in keep] if found.categories is not None else None
    return PromptSet([found.prompts[i] for i in keep], cats)


def read_prompt_records(path: Path) -> PromptSet:
    """A .jsonl file of {"prompt", "category" | "tag"} objects, or a text file of one prompt per line."""
    if path.suffix != ".jsonl":
        from flowrl.data.prompts import read_prompt_file

        return PromptSet(read_prompt_file(path), None)
    prompts, cats = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompts.append(str(record["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError("protocol.prompts.file", path, f'line {n} is not a JSON object with a "prompt"') from None
        cat = record.get("category", record.get("tag"))
        cats.append(None if cat is None else str(cat))
    if not prompts:
        raise ConfigError("protocol.prompts.file", path, "no prompt in the file")
    return PromptSet(prompts, cats if any(c is not None for c in cats) else None)
