"""`shapes`: programmatic ground truth of prompt-following in the synthetic world, in [0, 1].

score = mean of three checks against the prompt "a {fg} {shape} on a {bg} background":
  bg    — the most common palette color on the image border is bg
  fg    — the most common non-background color inside is fg (and covers >= min_area pixels)
  shape — the largest connected region of that color has the fill ratio (area / bounding box)
          of the prompt's shape: square ~1, circle ~pi/4, triangle ~1/2
Every pixel is first snapped to the nearest palette color. Exact (1.0) on the data set's
own renderings; generated images with wrong colors or blobby shapes score lower.
"""

from __future__ import annotations

import numpy as np
import torch

from flowrl.data.shapes import COLORS, parse_prompt
from flowrl.rewards.base import RewardModel

COLOR_NAMES = list(COLORS)
# Fill-ratio boundaries between triangle (0.5) | circle (0.785) | square (1.0): midpoints.
TRIANGLE_CIRCLE, CIRCLE_SQUARE = 0.64, 0.89


def palette_labels(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, H, W] index of the nearest palette color."""
    palette = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32)  # [K, 3]
    px = images.float().permute(0, 2, 3, 1).unsqueeze(-2)  # [B, H, W, 1, 3]
    return ((px - palette) ** 2).sum(-1).argmin(-1)


def classify_fill(mask: np.ndarray) -> str | None:
    """Shape name from the largest 4-connected component of a boolean mask (None if empty)."""
    from scipy import ndimage

    labeled, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labeled.ravel())[1:]
    comp = labeled == (int(sizes.argmax()) + 1)
    rows, cols = np.nonzero(comp)
    bbox = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = comp.sum() / bbox
    if fill >= CIRCLE_SQUARE:
        return "square"
    return "circle" if fill >= TRIANGLE_CIRCLE else "triangle"


class ShapesReward(RewardModel):
    name = "shapes"

    def __init__(self, min_area: int = 8):
        super().__init__()
        self.min_area = min_area

    def attributes(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """{'bg', 'fg', 'shape'}: [B] 0/1 correctness of each attribute."""
        labels = palette_labels(images).cpu().numpy()
        out = {k: torch.zeros(len(prompts)) for k in ("bg", "fg", "shape")}
        for b, prompt in enumerate(prompts):
            spec = parse_prompt(prompt)
            lab = labels[b]
            border = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
            bg = int(np.bincount(border, minlength=len(COLOR_NAMES)).argmax())
            inner = lab[1:-1, 1:-1]
            counts = np.bincount(inner[inner != bg], minlength=len(COLOR_NAMES))
            out["bg"][b] = float(COLOR_NAMES[bg] == spec.bg)
            if counts.max() < self.min_area:
                continue  # nothing drawn: fg and shape both wrong
            fg = int(counts.argmax())
            out["fg"][b] = float(COLOR_NAMES[fg] == spec.fg)
            out["shape"][b] = float(classify_fill(lab == fg) == spec.shape)
        return out

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        a = self.attributes(images, prompts)
        return (a["bg"] + a["fg"] + a["shape"]) / 3
