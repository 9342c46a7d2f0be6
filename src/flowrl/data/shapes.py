"""The synthetic text-to-image world of the embedded model: "a {color} {shape} on a {color} background".

Everything here is pure numpy/torch and deterministic given a seed, so the same renderings feed
pretraining (flowrl.pretrain), the tiny_clip reward's training, and the `shapes` reward's tests.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import torch

# Palette: far apart in RGB so nearest-color classification of a rendering is exact.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "yellow": (0.95, 0.85, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.2, 0.9),
    "purple": (0.6, 0.1, 0.7),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PROMPT_TEMPLATE = "a {fg} {shape} on a {bg} background"
IMAGE_SIZE = 32
# One in 5 combinations is held out. all_specs() lists, for each (fg, shape), its 5 backgrounds
# in a block of 5; the held-out position rotates from block to block, so every color occurs in
# every role in both splits and held-out prompts test composition, not new words.
HELD_OUT_EVERY = 5


def is_held_out(index: int) -> bool:
    """Combination `index` of all_specs() is held out: position (4 - block) mod 5 of its block."""
    block, position = divmod(index, HELD_OUT_EVERY)
    return position == (HELD_OUT_EVERY - 1 - block) % HELD_OUT_EVERY


@dataclass(frozen=True)
class ShapeSpec:
    """What a prompt asks for."""

    fg: str
    shape: str
    bg: str

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(fg=self.fg, shape=self.shape, bg=self.bg)


def all_specs() -> list[ShapeSpec]:
    """All (fg, shape, bg) with fg != bg, in a fixed order (90 for 6 colors x 3 shapes)."""
    return [ShapeSpec(fg, sh, bg) for fg, sh, bg in itertools.product(COLORS, SHAPES, COLORS) if fg != bg]


def split_specs(split: str) -> list[ShapeSpec]:
    """'train' (72 prompts), 'heldout' (18 prompts) or 'all' (90)."""
    specs = all_specs()
    if split == "all":
        return specs
    if split == "train":
        return [s for i, s in enumerate(specs) if not is_held_out(i)]
    if split == "heldout":
        return [s for i, s in enumerate(specs) if is_held_out(i)]
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def parse_prompt(prompt: str) -> ShapeSpec:
    """Inverse of ShapeSpec.prompt; a clear error for prompts outside the synthetic language."""
    words = prompt.strip().lower().split()
    if len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"not a synthetic shapes prompt ('{PROMPT_TEMPLATE}'): {prompt!r}")
    fg, shape, bg = words[1], words[2], words[5]
    for word, vocab in ((fg, COLORS), (shape, SHAPES), (bg, COLORS)):
        if word not in vocab:
            raise ValueError(f"unknown word {word!r} in {prompt!r}; known: {sorted(vocab)}")
    return ShapeSpec(fg, shape, bg)


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean [size, size] mask of an axis-aligned shape centred at (cx, cy) with half-size r.

    circle: radius r; square: side 2r; triangle: apex up, base 2r and height 2r, so the fill
    ratios (area / bounding box) are pi/4, 1 and 1/2 — what the `shapes` reward tells apart.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    if shape == "triangle":
        top, bottom = cy - r, cy + r
        half_width = (yy - top) / 2.0  # width grows from 0 at the apex to 2r at the base
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(spec: ShapeSpec, rng: random.Random, size: int = IMAGE_SIZE) -> np.ndarray:
    """Float32 [3, size, size] image in [0, 1]: random half-size in [size/6, size/3] and a
    random centre that keeps the shape inside the canvas."""
    r = rng.uniform(size / 6, size / 3)
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    img = np.empty((3, size, size), dtype=np.float32)
    img[:] = np.asarray(COLORS[spec.bg], dtype=np.float32)[:, None, None]
    mask = shape_mask(spec.shape, cx, cy, r, size)
    img[:, mask] = np.asarray(COLORS[spec.fg], dtype=np.float32)[:, None]
    return img


def render_batch(specs: list[ShapeSpec], seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """[B, 3, size, size] renderings of specs, deterministic given seed."""
    rng = random.Random(seed)
    return torch.from_numpy(np.stack([render(s, rng, size) for s in specs]))


def sample_specs(split: str, batch_size: int, rng: random.Random, distinct: bool = False) -> list[ShapeSpec]:
    """batch_size specs from a split; distinct=True draws without replacement (needs
    batch_size <= split size), as contrastive training wants no duplicate captions."""
    pool = split_specs(split)
    if distinct:
        if batch_size > len(pool):
            raise ValueError(f"distinct batch of {batch_size} > {len(pool)} prompts in split {split!r}")
        return rng.sample(pool, batch_size)
    return [rng.choice(pool) for _ in range(batch_size)]
