"""Reward models behind one interface (flowrl.rewards.base.RewardModel), each instantiated from
its `reward/` config (`_target_`). The real ones (hps, clipscore, pickscore, imagereward) load
local checkpoints; a missing file is a one-line CheckpointNotFound raised before any heavy import
(open_clip costs ~9 s to import), a wrong one a one-line CheckpointFormatError
(flowrl.rewards.loading).
"""

from flowrl.rewards.base import RewardModel

__all__ = ["RewardModel"]
