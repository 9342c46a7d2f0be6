"""FLUX.1-dev behind FlowModel: diffusers FluxTransformer2DModel + AutoencoderKL, CLIP-L (pooled)
and T5-XXL (per-token) text encoders, from a local diffusers directory.

Conventions (checked against FluxPipeline by tests/models/test_real_models.py on a tiny random FLUX):
- latents: 16-channel VAE latents at 1/8 resolution, scaled `(z - shift) * scale`, packed in 2x2
  patches -> [B, (H/16)(W/16), 64]; RoPE ids (0, row, col) per token, zeros for text tokens.
- timestep: the transformer takes sigma itself (it multiplies by 1000 inside; the pipeline
  passes its scheduler timestep / 1000 = sigma). `integer_timesteps` (model=flux_dev: on) feeds
  int(sigma * 1000) / 1000 instead, as every official FLUX GRPO script does (DanceGRPO
  fastvideo/train_grpo_flux.py@15cc71d `timestep_value = int(sigma * 1000)` ... `timesteps / 1000`;
  MixGRPO and E-GRPO's flux_sampler.py alike); the step math keeps the exact sigma.
- guidance: FLUX.1-dev is guidance-distilled: the scale (3.5, DanceGRPO / E-GRPO) enters through
  the transformer's guidance embedding, one row per sample, no CFG.
- text: CLIP-L pooler output (77 tokens) -> pooled_projections; T5 last hidden state padded to
  `max_sequence_length` (512, the pipeline default) -> encoder_hidden_states.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowrl.config.model_files import check_flux
from flowrl.models.base import PromptEmbeds
from flowrl.models.diffusers_base import (
    DiffusersFlowModel,
    build_model,
    latent_image_ids,
)


def flux_forward_flops(config, image_tokens: int, text_tokens: int) -> float:
    """Model FLOPs of one FluxTransformer2DModel forward of one row (multiply-add = 2), as nanoGPT's
    estimate_mfu counts a transformer's: the matmuls only. `config`: the transformer's config (or
    its dict). Width j = heads x head_dim; every token passes 12 j^2 matmul parameters per block (a
    joint block's stream: qkv 3j^2 + out j^2 + MLP 8j^2; a single block: fused qkv + MLP-in 7j^2,
    out 5j^2), and attention adds QK^T and AV, 4 tokens^2 j per block, over image + text tokens.
    Embeddings and the AdaLN modulation are left out (under 1% at FLUX.1-dev's size)."""
    j = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = image_tokens + text_tokens
    blocks = config["num_layers"] + config["num_single_layers"]
    return float(blocks * (2 * 12 * j * j * tokens + 4 * tokens * tokens * j))


class FluxModel(DiffusersFlowModel):
    pipeline_class = "FluxPipeline"

    def __init__(self, *args, guidance_scale: float = 3.5, integer_timesteps: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_scale = guidance_scale
        self.integer_timesteps = integer_timesteps
        self.register_buffer("img_ids", latent_image_ids(self.latent_h // 2, self.latent_w // 2), persistent=False)

    def velocity(self, x_t: torch.Tensor, sigma, embeds: PromptEmbeds) -> torch.Tensor:
        b = x_t.shape[0]
        sigma = torch.as_tensor(sigma, device=x_t.device, dtype=torch.float32).reshape(-1).expand(b)
        if self.integer_timesteps:  # the FLUX scripts' int(sigma * 1000) / 1000 (fp32, truncated)
            sigma = torch.floor(sigma * 1000) / 1000
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(self.guidance_scale), device=x_t.device, dtype=torch.float32)
        text = embeds.prompt_embeds.to(device=x_t.device, dtype=self.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=x_t.device, dtype=self.img_ids.dtype)
        with self._autocast():
            v = self.transformer(
                hidden_states=x_t.to(self.dtype),
                timestep=sigma,  # FLUX: timestep = sigma (x1000 inside the transformer)
                guidance=guidance,
                pooled_projections=embeds.pooled_prompt_embeds.to(device=x_t.device, dtype=self.dtype),
                encoder_hidden_states=text,
                txt_ids=txt_ids,
                img_ids=self.img_ids,
                return_dict=False,
            )[0]
        return v.to(x_t.dtype)

    def forward_flops(self, batch: int, text_tokens: int) -> float:
        """Model FLOPs of `velocity` on `batch` rows (flux_forward_flops); the caller says the text
        length, which the prompt encoder's max_sequence_length sets (512 by default)."""
        return batch * flux_forward_flops(self.transformer.config, self.latent_shape[0], text_tokens)


def _text_encoders(path: Path, dtype: torch.dtype, max_sequence_length: int):
    """(load, encode) for the PromptEncoder: CLIP-L pooled + T5 per-token, as FluxPipeline."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    tokenizer_2 = T5TokenizerFast.from_pretrained(path / "tokenizer_2")

    def load() -> torch.nn.ModuleDict:
        from transformers import CLIPTextModel, T5EncoderModel

        clip = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype)
        t5 = T5EncoderModel.from_pretrained(path / "text_encoder_2", torch_dtype=dtype)
        return torch.nn.ModuleDict({"clip": clip, "t5": t5}).requires_grad_(False).eval()

    def encode(enc: torch.nn.ModuleDict, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        pooled = enc["clip"](ids.input_ids.to(device), output_hidden_states=False).pooler_output
        ids2 = tokenizer_2(prompts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt")
        tokens = enc["t5"](ids2.input_ids.to(device), output_hidden_states=False)[0]
        return {"prompt_embeds": tokens, "pooled_prompt_embeds": pooled}

    return load, encode


def load_flux(
    path: str | None = None,
    device: str = "auto",
    dtype: str = "bfloat16",
    height: int = 512,
    width: int = 512,
    guidance_scale: float = 3.5,
    integer_timesteps: bool = False,
    max_sequence_length: int = 512,
    lora=None,
    lora_weights: str | None = None,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    autocast: bool = True,
    cache_dir: str | None = None,
    text_encoders_offload: str = "cpu",
    decode_batch_size: int = 8,
) -> FluxModel:
    """Hydra entry point (`model=flux_dev`). `path`: a local diffusers FLUX.1 directory; checked
    (CheckpointNotFound) before diffusers is imported. See conf/model/flux_dev.yaml for the options."""
    root = check_flux(path)
    from diffusers import FluxTransformer2DModel

    opts = {k: v for k, v in locals().items() if k not in ("path", "root", "integer_timesteps")}
    model = build_model(FluxModel, FluxTransformer2DModel, root, _text_encoders, opts, "FluxPipeline")
    model.integer_timesteps = bool(integer_timesteps)
    return model
