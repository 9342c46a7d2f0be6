"""`multi`: a weighted sum of per-reward z-scores, e.g. 0.7 * HPS + 0.3 * CLIP (E-GRPO).

Each part is standardised over the batch before weighting, so a reward with a larger
numeric range (jpeg kB vs a cosine) does not silently dominate: r = sum_i w_i (r_i - mean_i) / std_i.
`normalize: none` takes the raw weighted sum instead. `components()` returns each part's raw
score, for methods that combine per-reward advantages (G²RPO sums them) and for logging.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from flowrl.rewards.base import RewardModel


def batch_zscore(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / std over the batch; a constant batch (or B = 1) gives zeros."""
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + eps)


class MultiReward(RewardModel):
    name = "multi"

    def __init__(self, rewards: Mapping[str, RewardModel], weights: Mapping[str, float], normalize: str = "batch"):
        super().__init__()
        rewards, weights = dict(rewards), {k: float(v) for k, v in dict(weights).items()}
        if set(rewards) != set(weights):
            raise ValueError(f"multi reward: weights {sorted(weights)} must name exactly the rewards {sorted(rewards)}")
        if normalize not in ("batch", "none"):
            raise ValueError(f"multi reward: normalize must be 'batch' or 'none', got {normalize!r}")
        self.rewards = nn.ModuleDict(rewards)
        self.weights = weights
        self.normalize = normalize

    def components(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {name: reward(images, prompts) for name, reward in self.rewards.items()}

    def combine(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        norm = batch_zscore if self.normalize == "batch" else (lambda x: x)
        return sum(self.weights[name] * norm(parts[name].float()) for name in self.weights)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.combine(self.components(images, prompts))
