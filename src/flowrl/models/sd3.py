"""Stable Diffusion 3.5 (Medium) behind FlowModel: diffusers SD3Transformer2DModel + AutoencoderKL,
two CLIP text encoders (L and bigG, with projection) and T5-XXL, from a local diffusers directory.

Conventions (checked against StableDiffusion3Pipeline by tests/models/test_real_models.py):
- latents: 16-channel VAE latents at 1/8 resolution, scaled `(z - shift) * scale`; packed here in
  2x2 patches like FLUX ([B, (H/16)(W/16), 64]) and unpacked to [B, 16, H/8, W/8] for the
  transformer (which patchifies by itself).
- timestep: the transformer takes sigma * 1000 (the scheduler's timestep, passed as is).
- text: both CLIPs' penultimate hidden states concatenated on features, zero-padded to the T5
  width and stacked before the T5 tokens ([B, 77 + max_sequence_length, 4096]); pooled = both
  CLIPs' projected embeddings concatenated ([B, 2048]). Without a text_encoder_3 folder the T5
  part is zeros (as the pipeline does when T5 is dropped).
- classifier-free guidance (`guidance_scale` > 1; Flow-GRPO trains SD3.5 with 4.5): velocity =
  v_uncond + s * (v_cond - v_uncond), the unconditional branch on the empty prompt. Each velocity
  call then runs the transformer on 2B rows (both branches in one forward): count it when sizing
  `train.max_batch`. guidance_scale 1 = no CFG, one row per sample.
- `cfg_detach_uncond` (default true): the unconditional prediction is detached, so a training
  forward's gradient flows through the conditional branch only, as yifan123/flow_grpo
  scripts/train_sd3.py@ac4c86e `compute_log_prob` does (the detach came in 2d76907; the first
  commits, 39d3d2c and fc412d2, let the gradient through both: cfg_detach_uncond=false). It changes
  no value (rollout and reference run without grad), only the policy gradient.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flowrl.config.model_files import check_sd3
from flowrl.models.base import PromptEmbeds
from flowrl.models.diffusers_base import (
    DiffusersFlowModel,
    build_model,
)

NEGATIVE_PROMPT = ""


class SD3Model(DiffusersFlowModel):
    pipeline_class = "StableDiffusion3Pipeline"

    def __init__(self, *args, guidance_scale: float = 4.5, cfg_detach_uncond: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_scale = guidance_scale
        self.cfg_detach_uncond = cfg_detach_uncond
        self._negative: PromptEmbeds | None = None  # the empty prompt's embeddings, [1, ...]

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        if self.do_cfg and self._negative is None:  # one encoder pass for both
            both = super().encode_prompts([NEGATIVE_PROMPT, *prompts])
            self._negative = both[0]
            return both[1:]
        return super().encode_prompts(prompts)

    def negative_embeds(self) -> PromptEmbeds:
        if self._negative is None:
            self._negative = super().encode_prompts([NEGATIVE_PROMPT])
        return self._negative

    def velocity(self, x_t: torch.Tensor, sigma, embeds: PromptEmbeds) -> torch.Tensor:
        b = x_t.shape[0]
        timestep = torch.as_tensor(sigma, device=x_t.device, dtype=torch.float32).reshape(-1).expand(b) * 1000
        text = embeds.prompt_embeds.to(device=x_t.device, dtype=self.dtype)
        pooled = embeds.pooled_prompt_embeds.to(device=x_t.device, dtype=self.dtype)
        latents = self.unpack(x_t.to(self.dtype))
        if self.do_cfg:  # [uncond rows, cond rows] in one forward, as the pipeline
            neg = self.negative_embeds().to(device=x_t.device, dtype=self.dtype)
            text = torch.cat([neg.prompt_embeds.expand(b, -1, -1), text])
            pooled = torch.cat([neg.pooled_prompt_embeds.expand(b, -1), pooled])
            latents, timestep = torch.cat([latents, latents]), torch.cat([timestep, timestep])
        with self._autocast():
            out = self.transformer(
                hidden_states=latents,
                timestep=timestep,  # SD3: timestep = sigma * 1000
                encoder_hidden_states=text,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
        v = self.pack(out)
        if self.do_cfg:
            v_uncond, v_cond = v.chunk(2)
            if self.cfg_detach_uncond:
                v_uncond = v_uncond.detach()
            v = v_uncond + self.guidance_scale * (v_cond - v_uncond)
        return v.to(x_t.dtype)


def _text_encoders(path: Path, dtype: torch.dtype, max_sequence_length: int):
    """(load, encode) for the PromptEncoder: CLIP-L + CLIP-G + T5, as StableDiffusion3Pipeline."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    tokenizers = [CLIPTokenizer.from_pretrained(path / "tokenizer"), CLIPTokenizer.from_pretrained(path / "tokenizer_2")]
    has_t5 = (path / "text_encoder_3").is_dir()
    tokenizer_3 = T5TokenizerFast.from_pretrained(path / "tokenizer_3") if has_t5 else None
    t5_width = json.loads((path / "transformer" / "config.json").read_text())["joint_attention_dim"]

    def load() -> torch.nn.ModuleDict:
        from transformers import CLIPTextModelWithProjection, T5EncoderModel

        mods = {
            "clip_l": CLIPTextModelWithProjection.from_pretrained(path / "text_encoder", torch_dtype=dtype),
            "clip_g": CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", torch_dtype=dtype),
        }
        if has_t5:
            mods["t5"] = T5EncoderModel.from_pretrained(path / "text_encoder_3", torch_dtype=dtype)
        return torch.nn.ModuleDict(mods).requires_grad_(False).eval()

    def encode(enc: torch.nn.ModuleDict, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        tokens, pooled = [], []
        for tok, name in zip(tokenizers, ("clip_l", "clip_g")):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            out = enc[name](ids.input_ids.to(device), output_hidden_states=True)
            tokens.append(out.hidden_states[-2])
            pooled.append(out[0])  # text_embeds (projected)
        clip = torch.cat(tokens, dim=-1)
        if has_t5:
            ids = tokenizer_3(prompts, padding="max_length", max_length=max_sequence_length, truncation=True, return_tensors="pt")
            t5 = enc["t5"](ids.input_ids.to(device))[0]
        else:
            t5 = torch.zeros(len(prompts), max_sequence_length, t5_width, device=clip.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"prompt_embeds": torch.cat([clip, t5], dim=-2), "pooled_prompt_embeds": torch.cat(pooled, dim=-1)}

    return load, encode


def load_sd3(
    path: str | None = None,
    device: str = "auto",
    dtype: str = "bfloat16",
    height: int = 512,
    width: int = 512,
    guidance_scale: float = 4.5,
    cfg_detach_uncond: bool = True,
    max_sequence_length: int = 256,
    lora=None,
    lora_weights: str | None = None,
    gradient_checkpointing: bool = False,
    compile: bool = False,
    autocast: bool = True,
    cache_dir: str | None = None,
    text_encoders_offload: str = "cpu",
    decode_batch_size: int = 8,
) -> SD3Model:
    """Hydra entry point (`model=sd35_medium`). `path`: a local diffusers SD3 / SD3.5 directory;
    checked (CheckpointNotFound) before diffusers is imported. See conf/model/sd35_medium.yaml."""
    root = check_sd3(path)
    from diffusers import SD3Transformer2DModel

    opts = {k: v for k, v in locals().items() if k not in ("path", "root", "cfg_detach_uncond")}
    model = build_model(SD3Model, SD3Transformer2DModel, root, _text_encoders, opts, "StableDiffusion3Pipeline")
    model.cfg_detach_uncond = bool(cfg_detach_uncond)
    return model
