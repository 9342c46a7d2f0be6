"""`jpeg`: JPEG compressibility (DDPO's classic reward): minus the JPEG size in kB.

Quality 95 as DDPO. Flat, simple images score higher; detail and noise cost bytes.
"""

from __future__ import annotations

import io

import torch

from flowrl.rewards.base import RewardModel


def jpeg_size_kb(image: torch.Tensor, quality: int = 95) -> float:
    """[3, H, W] in [0, 1] -> size of its JPEG encoding in kB (1 kB = 1000 bytes)."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


class JpegCompressibilityReward(RewardModel):
    name = "jpeg"

    def __init__(self, quality: int = 95):
        super().__init__()
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
        self.quality = quality

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -torch.tensor([jpeg_size_kb(img, self.quality) for img in images])
