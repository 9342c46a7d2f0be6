"""The reward interface: images [B, 3, H, W] in [0, 1] + prompts -> scores [B] (higher is better)."""

from __future__ import annotations

import torch
from torch import nn


class RewardModel(nn.Module):
    """A frozen scorer. Subclasses implement `score`; calling the module runs it without
    gradient, in eval mode, and checks shapes so a bad batch fails loudly at the border."""

    name: str = "reward"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def components(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-reward scores ({name: [B]}); a combined reward returns one entry per part,
        which is what methods that sum per-reward advantages (G²RPO) need."""
        return {self.name: self(images, prompts)}

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_batch(images, prompts)
        if self.training:  # e.g. a parent's .train(): a scorer's dropout (BLIP's) must stay off
            self.eval()
        scores = self.score(images, list(prompts))
        return scores.float().reshape(len(prompts))


def check_batch(images: torch.Tensor, prompts) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"rewards take images [B, 3, H, W], got shape {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
