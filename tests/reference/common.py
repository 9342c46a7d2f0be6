"""What the reference samplers share with the engine on purpose: the noise, the reward and the record
they fill. Nothing here samples.

The reference samplers (one file per official sampler in this folder) are written from the official
scripts with their own step math, loops and sigma grids. They import nothing from flowrl but the
model wrapper (`encode_prompts`, `velocity`, `decode`: the wrapper object is handed to them) and the
reward interface (`flowrl.rewards.base.RewardModel`, below).

Noise. Both sides must see the same noise, but they draw it in different orders (the engine up
front for all rows, the official scripts one sample at a time). So every draw is keyed by what it is
for and made from its own generator: `KeyedNoise.eps("x1", p, k)` is the initial noise k of prompt p
(k = 0 when the group shares it), `eps("step", p, g, i)` the noise of the stochastic step of sample
g of prompt p that leaves sigma index i. The references read those keys in their own loop order;
the engine gets the same tensors through the NoiseSource protocol (`initial`, `steps`,
flowrl.engine.noise), in its prompt-major row layout.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

from flowrl.rewards.base import RewardModel


class KeyedNoise:
    """Standard-normal latents keyed by (kind, prompt, sample[, sigma index]); see the module doc."""

    def __init__(self, latent_shape: tuple[int, ...], seed: int = 0):
        self.latent_shape = tuple(latent_shape)
        self.seed = seed
        self._cache: dict[tuple, torch.Tensor] = {}

    def eps(self, *key) -> torch.Tensor:
        """[*latent] fp32 on the CPU, the same tensor for the same key, independent across keys."""
        if key not in self._cache:
            g = torch.Generator().manual_seed(zlib.crc32(repr((self.seed, key)).encode()))
            self._cache[key] = torch.randn(self.latent_shape, generator=g)
        return self._cache[key]

    # ---- the engine's view (flowrl.engine.noise.NoiseSource), rows p*G + g ----------------------
    def initial(self, model, num_prompts: int, per_prompt: int) -> torch.Tensor:
        rows = [self.eps("x1", p, k) for p in range(num_prompts) for k in range(per_prompt)]
        return torch.stack(rows).to(model.device)

    def steps(self, model, starts, num_prompts: int, group_size: int) -> torch.Tensor:
        per_start = [
            torch.stack([self.eps("step", p, g, i) for p in range(num_prompts) for g in range(group_size)]) for i in starts
        ]
        return torch.stack(per_start).to(model.device)


class ProbeReward(RewardModel):
    """A continuous reward with a different value for every image: a fixed random weighting of the
    pixels (so no image region is blind to it), as a RewardModel (flowrl's reward interface)."""

    name = "probe"

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        g = torch.Generator().manual_seed(1234)
        w = torch.rand(images.shape[1:], generator=g)
        return (images.float() * w).flatten(1).mean(1)


def score_fn(reward: RewardModel):
    """The engine's score function for `reward` ({part: [B]})."""
    return lambda images, prompts: reward.components(images, prompts)


@dataclass
class Transition:
    """One stochastic jump of one sample: sigma index start -> stop, its states and its log-prob."""

    stop: int
    x: torch.Tensor  # [*latent] before the jump
    x_next: torch.Tensor  # [*latent] after it
    log_prob: torch.Tensor  # 0-d fp32, the rollout policy's log-density of x_next


@dataclass
class ReferenceRollout:
    """What a reference sampler produced, keyed in its own terms (not the engine's layout):
    transitions[(p, g, start)]             every stochastic jump
    images[key], rewards[key] ({part: 0-d}) every scored image, with key
      ("final", p, g)                      the sample's scored image (full trajectories)
      ("intermediate", p, g, i)            DenseGRPO: the ODE completion of x_i
      ("branch", p, g, start, granularity) E-GRPO / G²RPO: the completion of a branch
    """

    sigmas: torch.Tensor  # the grid it sampled on, [T+1]
    transitions: dict[tuple, Transition] = field(default_factory=dict)
    images: dict[tuple, torch.Tensor] = field(default_factory=dict)
    rewards: dict[tuple, dict[str, torch.Tensor]] = field(default_factory=dict)

    def score(self, key: tuple, image: torch.Tensor, reward: RewardModel, prompt: str) -> None:
        """Decode-side bookkeeping: keep the image [3, H, W] and its reward parts under `key`."""
        self.images[key] = image
        self.rewards[key] = {k: v[0] for k, v in reward.components(image.unsqueeze(0), [prompt]).items()}
