"""`hps`: HPS v2.1 (Wu et al. 2023, "Human Preference Score v2"), from a local checkpoint.

HPS v2.1 is open_clip's ViT-H-14 with a fine-tuned state dict: HPS_v2.1_compressed.pt, a dict
{'state_dict': ...} published at huggingface.co/xswu/HPSv2. Its score is the image-text cosine
cos(f_img, f_txt) -- the number HPS v2's `score()` reports (about 0.2-0.35 for real images), NOT
multiplied by the CLIP logit scale (100 x cosine would be the contrastive logit, not the score).

Loading and scoring are `flowrl.rewards.clip.OpenClipReward` (the class the shipped tiny_clip
uses); this file adds the checkpoint check before open_clip is imported, and HPS's defaults.
`arch` may be an open_clip model-config JSON, which is how the tests use a tiny architecture.
"""

from __future__ import annotations

from pathlib import Path

from flowrl.config.errors import require_path
from flowrl.rewards.clip import OpenClipReward
from flowrl.rewards.loading import resolve_device

HPS_WHERE = "huggingface.co/xswu/HPSv2, file HPS_v2.1_compressed.pt"
HPS_HINT = "`hf download xswu/HPSv2 HPS_v2.1_compressed.pt --local-dir $FLOWRL_MODELS`, or set reward.checkpoint=<file>"


class HPSReward(OpenClipReward):
    name = "hps"

    def __init__(
        self,
        checkpoint: str | Path | None,
        arch: str | Path = "ViT-H-14",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = 16,
    ):
        path = require_path("HPS v2.1", checkpoint, HPS_WHERE, HPS_HINT, kind="file")  # before open_clip's ~9 s import
        super().__init__(arch, path, device=resolve_device(device), dtype=dtype, batch_size=batch_size, where=HPS_WHERE)
