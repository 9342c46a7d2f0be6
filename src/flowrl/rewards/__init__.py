"""Reward models behind one interface (flowrl.rewards.base.RewardModel).

REGISTRY maps the names of the `reward/` config group to their classes, imported lazily
(open_clip costs ~9 s to import). The real ones (hps, clipscore, pickscore, imagereward) load
local checkpoints; a missing file is a one-line CheckpointNotFound raised before any heavy
import, a wrong one a one-line CheckpointFormatError (flowrl.rewards.loading).
`build_reward(name, **kwargs)` instantiates one by name.
"""

from __future__ import annotations

import importlib

from flowrl.rewards.base import RewardModel

REGISTRY: dict[str, str] = {
    "shapes": "flowrl.rewards.shapes:ShapesReward",
    "tiny_clip": "flowrl.rewards.clip:TinyClipReward",
    "jpeg": "flowrl.rewards.jpeg:JpegCompressibilityReward",
    "multi": "flowrl.rewards.multi:MultiReward",
    # Real reward models from local checkpoints (never downloaded at run time).
    "hps": "flowrl.rewards.hps:HPSReward",
    "clipscore": "flowrl.rewards.clipscore:ClipScoreReward",
    "pickscore": "flowrl.rewards.pickscore:PickScoreReward",
    "imagereward": "flowrl.rewards.imagereward:ImageRewardModel",
    "hps_clip": "flowrl.rewards.multi:MultiReward",  # E-GRPO's 0.7 * HPS + 0.3 * CLIP score
}


def reward_class(name: str) -> type[RewardModel]:
    if name not in REGISTRY:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(REGISTRY)}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_reward(name: str, **kwargs) -> RewardModel:
    return reward_class(name)(**kwargs)


__all__ = ["REGISTRY", "RewardModel", "build_reward", "reward_class"]
