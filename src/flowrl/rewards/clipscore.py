"""`clipscore`: CLIP image-text similarity (Hessel et al. 2021, "CLIPScore"), from a local checkpoint.

The model is an open_clip architecture + its state dict; by default ViT-H-14 trained on
LAION-2B (open_clip_pytorch_model.bin from huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K),
the CLIP the flow-GRPO papers (DanceGRPO, E-GRPO) score with. `arch: ViT-L-14` with an open_clip
ViT-L-14 state dict (e.g. laion/CLIP-ViT-L-14-laion2B-s32B-b82K) works the same way.

formula:
  cosine     cos(f_img, f_txt)                   (default; what the GRPO papers report as "CLIP score")
  clipscore  w * max(cos, 0), w = 2.5            (Hessel et al.'s CLIP-S; they also prefix every
                                                  caption with "A photo depicts": prefix="A photo depicts ")
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowrl.config.errors import require_path
from flowrl.rewards.clip import OpenClipReward
from flowrl.rewards.loading import resolve_device

CLIP_WHERE = "huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K, file open_clip_pytorch_model.bin"
CLIP_HINT = (
    "`hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_pytorch_model.bin --local-dir "
    "$FLOWRL_MODELS/CLIP-ViT-H-14-laion2B-s32B-b79K`, or set reward.checkpoint=<file>"
)
FORMULAS = ("cosine", "clipscore")


class ClipScoreReward(OpenClipReward):
    name = "clipscore"

    def __init__(
        self,
        checkpoint: str | Path | None,
        arch: str | Path = "ViT-H-14",
        formula: str = "cosine",
        weight: float = 2.5,
        prefix: str = "",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = 16,
    ):
        if formula not in FORMULAS:
            raise ValueError(f"clipscore formula must be one of {FORMULAS}, got {formula!r}")
        path = require_path("CLIP score (open_clip)", checkpoint, CLIP_WHERE, CLIP_HINT, kind="file")
        super().__init__(arch, path, device=resolve_device(device), dtype=dtype, batch_size=batch_size, where=CLIP_WHERE)
        self.formula, self.weight, self.prefix = formula, float(weight), prefix

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        cos = self.cosine(images, [self.prefix + p for p in prompts])
        return self.weight * cos.clamp(min=0) if self.formula == "clipscore" else cos
