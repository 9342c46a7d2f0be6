"""Reward models behind one interface (flowrl.rewards.base.RewardModel).

REGISTRY maps the names of the `reward/` config group to their classes, imported lazily
(open_clip costs ~9 s to import). `build_reward(name, **kwargs)` instantiates one by name.
"""

from __future__ import annotations

import importlib

from flowrl.rewards.base import RewardModel

REGISTRY: dict[str, str] = {
    "shapes": "flowrl.rewards.shapes:ShapesReward",
    "tiny_clip": "flowrl.rewards.clip:TinyClipReward",
    "jpeg": "flowrl.rewards.jpeg:JpegCompressibilityReward",
    "multi": "flowrl.rewards.multi:MultiReward",
}


def reward_class(name: str) -> type[RewardModel]:
    if name not in REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(REGISTRY)}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_reward(name: str, **kwargs) -> RewardModel:
    return reward_class(name)(**kwargs)


__all__ = ["REGISTRY", "RewardModel", "build_reward", "reward_class"]
