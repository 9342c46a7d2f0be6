"""Where a rollout's randomness comes from: the initial noise x_1 and the noise of every stochastic
step. The engine asks a NoiseSource for both and nothing else draws, so a test or a benchmark can
hand the engine the noise it hands another sampler (tests/reference: the official samplers
transcribed; benchmarks/peers.py: the peer-structured loop) and compare the images element-wise.

The default, GeneratorNoise, is the engine's draw order since the first rollout, kept bit-exact so
that seeds, checkpoints and recorded results stay valid (tests/engine/test_noise.py pins it):
  "sde" plans:    x_1 = model.initial_noise(P * per_prompt), then randn([T, P*G, *latent]) for the T steps;
  "anchor" plans: x_1 = model.initial_noise(P), the ODE anchor (no draws), then randn([B, P*G, *latent])
                  for the B branch points.
Rows are prompt-major (row p*G + g), as everywhere in the engine (flowrl.contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class NoiseSource(Protocol):
    """The two kinds of draw a rollout makes, each asked for once per rollout."""

    def initial(self, model, num_prompts: int, per_prompt: int) -> torch.Tensor:
        """x_1 [P * per_prompt, *model.latent_shape] (fp32, on model.device): per_prompt = 1 when the
        samples of a prompt share their initial noise (DanceGRPO, MixGRPO) or start from one anchor
        (E-GRPO, G²RPO); per_prompt = G for independent noise (Flow-GRPO, DenseGRPO)."""
        ...

    def steps(self, model, starts: Sequence[int], num_prompts: int, group_size: int) -> torch.Tensor:
        """Standard-normal noise [len(starts), P*G, *model.latent_shape] (fp32, on model.device): entry
        [k, p*G + g] is the noise of the stochastic step that leaves sigma index starts[k] for sample g
        of prompt p. "sde" plans ask for every step 0..T-1 (ODE steps leave theirs unused), "anchor"
        plans for their branch points' starts."""
        ...


@dataclass
class GeneratorNoise:
    """The engine's default: everything from one torch.Generator (or torch's global RNG when None),
    in the order and shapes the engine has always drawn, so a seed gives the same rollout as before
    noise sources existed."""

    generator: torch.Generator | None = None

    def initial(self, model, num_prompts: int, per_prompt: int) -> torch.Tensor:
        return model.initial_noise(num_prompts * per_prompt, self.generator)

    def steps(self, model, starts: Sequence[int], num_prompts: int, group_size: int) -> torch.Tensor:
        # drawn on the CPU in one call, then moved: how many rows a forward takes cannot change a sample
        shape = (len(starts), num_prompts * group_size, *model.latent_shape)
        return torch.randn(shape, generator=self.generator).to(model.device)


def noise_source(noise: NoiseSource | None, generator: torch.Generator | None) -> NoiseSource:
    """The rollout's noise: `noise` when given (then no generator may be), else GeneratorNoise(generator)."""
    if noise is None:
        return GeneratorNoise(generator)
    if generator is not None:
        raise ValueError("give the rollout a generator or a noise source, not both (GeneratorNoise(generator) is the default)")
    if not isinstance(noise, NoiseSource):
        raise TypeError(f"noise must implement flowrl.engine.noise.NoiseSource (initial, steps), got {type(noise).__name__}")
    return noise
