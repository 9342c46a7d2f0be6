"""Image grids for humans (MLflow artifacts, sample dumps)."""

from __future__ import annotations

from pathlib import Path

import torch


def image_grid(images: torch.Tensor, nrow: int, upscale: int = 1) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> one [3, H', W'] grid, nearest-upscaled so 32 px stays crisp."""
    from torchvision.utils import make_grid

    if upscale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=upscale, mode="nearest")
    return make_grid(images.float().clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, upscale: int = 1) -> Path:
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow, upscale), str(path))
    return path
