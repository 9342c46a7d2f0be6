"""The one interface every flow model backend implements (tiny, FLUX.1, SD3.5).

The sampler, the rollout engine and the trainer only ever call these four things:
encode prompts -> embeddings; predict velocity for packed latents at sigma; decode to images;
draw initial noise. Shapes are in comments; latents are "packed" ([B, N, C] tokens).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import nn


@dataclass
class PromptEmbeds:
    """Text conditioning for a batch of prompts; crosses the model/sampler border."""

    prompt_embeds: torch.Tensor  # [B, L, D] per-token embeddings
    pooled_prompt_embeds: torch.Tensor  # [B, P] pooled embedding

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def _map(self, fn) -> PromptEmbeds:
        return type(self)(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __getitem__(self, idx) -> PromptEmbeds:
        """Select prompts: an int keeps the batch dim; slices/index tensors as usual."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self._map(lambda t: t[idx])

    def repeat_interleave(self, repeats: int) -> PromptEmbeds:
        """Each prompt `repeats` times in a row ([p0, p0, p1, p1, ...]): one group per prompt."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def to(self, *args, **kwargs) -> PromptEmbeds:
        return self._map(lambda t: t.to(*args, **kwargs))

    @classmethod
    def cat(cls, items: list[PromptEmbeds]) -> PromptEmbeds:
        return cls(**{f.name: torch.cat([getattr(i, f.name) for i in items]) for f in fields(cls)})


class FlowModel(nn.Module, ABC):
    """A rectified-flow text-to-image model: x_t = (1 - sigma) x_0 + sigma * noise, v = noise - x_0."""

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Per-sample packed latent shape, e.g. (N tokens, C channels)."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Text -> conditioning (no gradient needed; cached by real backends)."""

    @abstractmethod
    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        """x_t [B, *latent_shape], sigma [B] (or scalar) -> v [B, *latent_shape]."""

    @abstractmethod
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Packed clean latents [B, *latent_shape] -> images [B, 3, H, W] in [0, 1] (fp32)."""

    def initial_noise(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_1 ~ N(0, I): [B, *latent_shape] in fp32 on the model's device."""
        return torch.randn((batch_size, *self.latent_shape), generator=generator, device=self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- training hooks (generic: every backend keeps its policy network in `self.transformer`) ---
    @property
    def has_adapter(self) -> bool:
        """True when a LoRA adapter is attached to the transformer (only the adapter trains)."""
        from flowrl.models.lora import has_lora

        return has_lora(self.transformer)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the policy optimizer trains: the LoRA weights when an adapter is attached, else every
        transformer weight (full fine-tune). Decided by structure, not by the current requires_grad
        flags, so it stays right after a trainer's `model.requires_grad_(False)`."""
        if self.has_adapter:
            from flowrl.models.lora import lora_parameters

            return lora_parameters(self.transformer)
        return list(self.transformer.parameters())

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """Within the block the forwards run in full precision (flowrl.train's held-out
        evaluation). A no-op here: a model whose weights have one dtype has no other precision;
        the tiny model turns its bf16 autocast off."""
        yield

    @contextmanager
    def reference_policy(self) -> Iterator[bool]:
        """Within the block the model is the reference (initial) policy when that is free: the
        adapter is disabled and the block gets True. Without an adapter (full fine-tune) nothing
        changes and the block gets False: the caller keeps a frozen copy for the KL reference."""
        if not self.has_adapter:
            yield False
            return
        from flowrl.models.lora import reference_policy

        with reference_policy(self.transformer):
            yield True
