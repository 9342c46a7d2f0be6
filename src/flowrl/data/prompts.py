"""Prompt sets: what the trainer samples from (train) and evaluates on (val)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass
class PromptData:
    train: list[str]
    val: list[str]

    def __post_init__(self):
        if not self.train:
            raise ValueError("prompt data: the train set is empty")
        if not self.val:
            raise ValueError("prompt data: the val set is empty")


def evenly_spaced(items: Sequence[T], n: int) -> list[T]:
    """n of items at evenly spaced positions (items[i * len // n]), in order; all of them when
    n >= len. The one rule for a run's held-out subset (val.max_prompts, flowrl.training.build) and a
    world's held-out entries per category (flowrl.data.geneval.per_category)."""
    k = len(items)
    return list(items) if n >= k else [items[i * k // n] for i in range(n)]


def shapes_prompts(train_split: str = "train", val_split: str = "heldout") -> PromptData:
    from flowrl.data.shapes import split_specs

    return PromptData(train=[s.prompt for s in split_specs(train_split)], val=[s.prompt for s in split_specs(val_split)])


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    from flowrl.config.errors import ConfigError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("prompt file", path, "not found (one prompt per line: data.train_file, data.val_file)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def file_prompts(train_file: str, val_file: str) -> PromptData:
    return PromptData(train=read_prompt_file(train_file), val=read_prompt_file(val_file))
