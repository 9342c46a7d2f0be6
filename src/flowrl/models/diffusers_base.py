"""What the real backends (FLUX.1, SD3.5) share: the local-directory check, options, latent
packing, VAE decode, LoRA / checkpointing / compile, saving.

Latents follow the FlowModel convention: x_t = (1 - sigma) x_0 + sigma * noise, v = noise - x_0,
x_0 the VAE latent already scaled and shifted ((z - shift_factor) * scaling_factor, what the
diffusers pipelines denoise), packed into [B, (h/2)(w/2), 4C] tokens of 2x2 latent patches
(FluxPipeline._pack_latents layout; SD3 latents are packed the same way so every backend hands
the sampler [B, N, C] tokens). Importing this module is cheap: diffusers / transformers are
imported by the loaders, after the directory check.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from flowrl.models.base import FlowModel, PromptEmbeds
from flowrl.models.text_cache import EmbeddingCache, PromptEncoder, model_cache_key

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPES |= {"float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: row-major 2x2 patches, channel-major inside."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of pack_latents for an [h, w] latent grid."""
    b, _, d = x.shape
    c = d // 4
    x = x.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def latent_image_ids(h2: int, w2: int) -> torch.Tensor:
    """FLUX RoPE positions of the packed tokens: [(h/2)(w/2), 3] = (0, row, col)."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3)


class DiffusersFlowModel(FlowModel):
    """A diffusers transformer + VAE behind FlowModel; text conditioning via a cached PromptEncoder.

    Subclasses set `pipeline_class` (the diffusers pipeline whose conventions they follow) and
    implement `velocity`. The text encoders are not submodules: they never reach the optimizer,
    `model.to()` or a deepcopy, and live wherever `text_encoders_offload` puts them.
    """

    pipeline_class = ""

    def __init__(
        self,
        path: Path,
        transformer,
        vae,
        prompt_encoder: PromptEncoder,
        height: int = 512,
        width: int = 512,
        dtype: torch.dtype = torch.bfloat16,
        autocast: bool = True,
        decode_batch_size: int = 8,
    ):
        super().__init__()
        self.path = Path(path)
        self.transformer = transformer
        self.vae = vae.requires_grad_(False).eval()
        self.prompt_encoder = prompt_encoder
        self.dtype = dtype
        self.autocast = autocast
        self.decode_batch_size = decode_batch_size
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(f"model.height/width ({height}x{width}) must be multiples of {multiple}")
        self.height, self.width = height, width
        self.latent_h, self.latent_w = height // self.vae_scale_factor, width // self.vae_scale_factor
        self.latent_channels = vae.config.latent_channels

    # --- shapes and latents ------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        return ((self.latent_h // 2) * (self.latent_w // 2), self.latent_channels * 4)

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        return pack_latents(z)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        return unpack_latents(x, self.latent_h, self.latent_w)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Packed scaled latents -> images in [0, 1] (fp32), `decode_batch_size` rows at a time."""
        cfg = self.vae.config
        shift = cfg.shift_factor or 0.0
        out = []
        for chunk in x0.split(self.decode_batch_size):
            z = self.unpack(chunk.float()) / cfg.scaling_factor + shift
            image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
            out.append((image.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # --- text ------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        d = self.prompt_encoder(list(prompts))
        embeds = PromptEmbeds(prompt_embeds=d["prompt_embeds"], pooled_prompt_embeds=d["pooled_prompt_embeds"])
        return embeds.to(device=self.device, dtype=self.dtype)

    def precompute_prompts(self, prompts: list[str]) -> int:
        """Encode and cache a whole prompt set now, then release the text encoders (call before
        training so no rollout waits for T5). Returns how many prompts were not cached yet."""
        return self.prompt_encoder.precompute(list(prompts))

    # --- forward helpers -------------------------------------------------------------------
    def _autocast(self):
        if self.autocast and self.dtype != torch.float32:
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return nullcontext()

    def _configure(self, lora=None, lora_weights=None, gradient_checkpointing=False, compile=False) -> None:
        """LoRA (new adapter, or a saved one to continue from), checkpointing, torch.compile."""
        from flowrl.models.lora import add_lora, load_lora, lora_options

        if lora_weights:
            load_lora(self.transformer, lora_weights)
        elif (opts := lora_options(lora)) is not None:
            add_lora(self.transformer, **opts)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if compile:
            self.transformer.compile()  # in place: keeps the diffusers/peft methods and state-dict keys

    # --- persistence -----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """LoRA: `pytorch_lora_weights.safetensors` (load with `<Pipeline>.load_lora_weights(path)`);
        full fine-tune: the transformer as a diffusers component in `path/transformer`."""
        import diffusers

        from flowrl.models.lora import save_lora

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.has_adapter:
            save_lora(self.transformer, path, getattr(diffusers, self.pipeline_class))
        else:
            self.transformer.save_pretrained(path / "transformer")
        info = {"pipeline": self.pipeline_class, "base": str(self.path), "lora": self.has_adapter}
        info |= {"height": self.height, "width": self.width}
        (path / "flowrl_model.json").write_text(json.dumps(info, indent=2) + "\n")


def make_prompt_encoder(path: Path, load, encode, device, dtype, cache_dir, offload, settings: tuple) -> PromptEncoder:
    cache = None
    if cache_dir not in (None, ""):
        cache = EmbeddingCache(cache_dir, model_cache_key(path, *settings, str(dtype)))
    return PromptEncoder(load, encode, device=device, cache=cache, offload=offload)


def build_model(model_cls, transformer_cls, root: Path, text_encoders, opts: dict, pipeline_class: str):
    """Shared tail of the backend loaders: load transformer + VAE from `root` in the requested
    dtype, wire the cached prompt encoder, apply LoRA / checkpointing / compile, move to device.
    `text_encoders(root, dtype, max_sequence_length) -> (load, encode)` is the backend's own."""
    from diffusers import AutoencoderKL

    dev, dt = resolve_device(opts["device"]), resolve_dtype(opts["dtype"])
    transformer = transformer_cls.from_pretrained(root, subfolder="transformer", torch_dtype=dt)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dt)
    load, encode = text_encoders(root, dt, opts["max_sequence_length"])
    prompt_encoder = make_prompt_encoder(
        root,
        load,
        encode,
        dev,
        dt,
        opts["cache_dir"],
        opts["text_encoders_offload"],
        (pipeline_class, opts["max_sequence_length"]),
    )
    model = model_cls(
        root,
        transformer,
        vae,
        prompt_encoder,
        height=opts["height"],
        width=opts["width"],
        dtype=dt,
        autocast=opts["autocast"],
        decode_batch_size=opts["decode_batch_size"],
        guidance_scale=opts["guidance_scale"],
    )
    model._configure(opts["lora"], opts["lora_weights"], opts["gradient_checkpointing"], opts["compile"])
    return model.to(dev)
