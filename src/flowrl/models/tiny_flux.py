"""The embedded model: a diffusers FluxTransformer2DModel, tiny, on packed 32x32 RGB pixels.

No VAE: the "latent" is the image itself in [-1, 1], cut into p x p patches (tokens of 3*p*p
channels), exactly how FLUX packs its 2x2 VAE-latent patches. Text conditioning is a learned
word-embedding table over the synthetic prompt language (trained jointly by flowrl.pretrain),
standing in for FLUX's T5 (per-token) and CLIP (pooled) encoders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from flowrl.models.base import FlowModel, PromptEmbeds

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_flux"
UNK, PAD = "<unk>", "<pad>"


@dataclass
class TinyFluxConfig:
    """Architecture of the embedded model. Defaults: the shipped checkpoint (see README)."""

    image_size: int = 32
    patch_size: int = 4  # 4x4 pixel patches -> 64 tokens of 48 channels
    num_layers: int = 2  # FLUX double-stream blocks
    num_single_layers: int = 4  # FLUX single-stream blocks
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)  # sums to attention_head_dim
    text_dim: int = 64  # joint_attention_dim and pooled_projection_dim
    max_text_len: int = 8
    vocab: list[str] = field(default_factory=list)

    @property
    def tokens_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def channels(self) -> int:
        return 3 * self.patch_size**2


def default_vocab() -> list[str]:
    from flowrl.data.shapes import COLORS, SHAPES

    return [PAD, UNK, "a", "on", "background", *COLORS, *SHAPES]


class WordTextEncoder(nn.Module):
    """Lower-cased whitespace words -> learned embeddings [B, L, D] + pooled mean [B, D]."""

    def __init__(self, vocab: list[str], dim: int, max_len: int):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len
        self.token = nn.Embedding(len(self.vocab), dim)
        self.position = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.token.weight, std=0.5)
        nn.init.normal_(self.position, std=0.1)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.full((len(prompts), self.max_len), self.index[PAD], dtype=torch.long)
        for b, p in enumerate(prompts):
            words = p.lower().split()[: self.max_len]
            ids[b, : len(words)] = torch.tensor([self.index.get(w, self.index[UNK]) for w in words], dtype=torch.long)
        return ids

    def forward(self, prompts: list[str]) -> PromptEmbeds:
        ids = self.tokenize(prompts).to(self.token.weight.device)
        tokens = self.token(ids) + self.position  # [B, L, D]
        mask = (ids != self.index[PAD]).unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1)  # [B, D]
        return PromptEmbeds(prompt_embeds=tokens, pooled_prompt_embeds=pooled)


def pack_images(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, (H/p)(W/p), 3 p p] (row-major patches, channel-major inside)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpack_images(tokens: torch.Tensor, patch_size: int, image_size: int) -> torch.Tensor:
    """Inverse of pack_images."""
    b = tokens.shape[0]
    p, s = patch_size, image_size // patch_size
    x = tokens.reshape(b, s, s, 3, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, image_size, image_size)


class Fp32AttentionProcessor:
    """diffusers' FluxAttnProcessor (diffusers 0.42.1, models/transformers/transformer_flux.py), with the
    scaled dot product itself in fp32 outside autocast. Deviation: under bf16 autocast on the CPU,
    torch's bf16 SDPA backward is slower than its fp32 one at this size (72 tokens, 4 heads of 32:
    batch 64, forward + backward 516 -> 366 ms, the forward alike, on the 2-core CPU, README
    "Performance");
    the projections, norms and rotary embedding are unchanged. In fp32 it is FluxAttnProcessor bit for
    bit (tests/models/test_tiny_flux.py checks it against the installed diffusers)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        # diffusers' own projections (plain or fused); [B, S, H*D] -> [B, S, H, D], text tokens first
        query, key, value, e_query, e_key, e_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            e_query = attn.norm_added_q(e_query.unflatten(-1, (-1, attn.head_dim)))
            e_key = attn.norm_added_k(e_key.unflatten(-1, (-1, attn.head_dim)))
            e_value = e_value.unflatten(-1, (-1, attn.head_dim))
            query, key, value = (torch.cat(pair, dim=1) for pair in ((e_query, query), (e_key, key), (e_value, value)))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        with torch.autocast(query.device.type, enabled=False):
            # SDPA wants [B, H, S, D]
            out = torch.nn.functional.scaled_dot_product_attention(
                *(t.transpose(1, 2).float() for t in (query, key, value)), attn_mask=attention_mask
            ).transpose(1, 2)
        out = out.flatten(2, 3).to(query.dtype)  # [B, S, H*D]
        if encoder_hidden_states is None:
            return out
        n_text = encoder_hidden_states.shape[1]
        encoder_out, out = out.split_with_sizes([n_text, out.shape[1] - n_text], dim=1)
        return attn.to_out[1](attn.to_out[0](out.contiguous())), attn.to_add_out(encoder_out.contiguous())


class TinyFluxModel(FlowModel):
    """FluxTransformer2DModel (tiny config) + word text encoder, on packed pixels."""

    def __init__(self, config: TinyFluxConfig | None = None):
        super().__init__()
        from diffusers import FluxTransformer2DModel  # lazy: diffusers costs ~6 s to import

        cfg = config or TinyFluxConfig()
        if not cfg.vocab:
            cfg.vocab = default_vocab()
        if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
            raise ValueError(f"axes_dims_rope {cfg.axes_dims_rope} must sum to attention_head_dim {cfg.attention_head_dim}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} not divisible by patch_size {cfg.patch_size}")
        self.config = cfg
        self.source: Path | None = None  # the checkpoint directory loaded (None: built or shipped)
        self.text_encoder = WordTextEncoder(cfg.vocab, cfg.text_dim, cfg.max_text_len)
        self.transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=cfg.channels,
            out_channels=cfg.channels,
            num_layers=cfg.num_layers,
            num_single_layers=cfg.num_single_layers,
            attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads,
            joint_attention_dim=cfg.text_dim,
            pooled_projection_dim=cfg.text_dim,
            guidance_embeds=False,
            axes_dims_rope=tuple(cfg.axes_dims_rope),
        )
        self.use_attention("fp32")
        s = cfg.tokens_per_side
        img_ids = torch.zeros(s, s, 3)
        img_ids[..., 1] = torch.arange(s)[:, None]
        img_ids[..., 2] = torch.arange(s)[None, :]
        self.register_buffer("img_ids", img_ids.reshape(s * s, 3), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(cfg.max_text_len, 3), persistent=False)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.tokens_per_side**2, self.config.channels)

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        return self.text_encoder(list(prompts))

    precision = "fp32"  # "bf16-autocast": the transformer's matmuls in bf16 (load_tiny_flux(precision=...))

    def use_attention(self, attention: str) -> None:
        """The transformer's attention processor (`model.attention`, one of ATTENTIONS): fp32 =
        Fp32AttentionProcessor, autocast = diffusers' FluxAttnProcessor."""
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        processor = {"fp32": Fp32AttentionProcessor, "autocast": FluxAttnProcessor}[attention]
        self.transformer.set_attn_processor(processor())

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        saved, self.precision = self.precision, "fp32"
        try:
            yield
        finally:
            self.precision = saved

    def velocity(self, x_t: torch.Tensor, sigma, embeds: PromptEmbeds) -> torch.Tensor:
        """v [B, *latent] in x_t's dtype. Under bf16 autocast only the transformer's forward runs in
        bf16; the step and log-prob math that follows stays fp32, and rollout and training call
        this same function, so the ratio before the first update is still exactly 1."""
        b = x_t.shape[0]
        sigma = torch.as_tensor(sigma, device=x_t.device, dtype=x_t.dtype).reshape(-1).expand(b)
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-autocast"):
            # FLUX scales the timestep by 1000 internally, so it takes sigma itself.
            v = self.transformer(
                hidden_states=x_t,
                encoder_hidden_states=embeds.prompt_embeds.to(x_t.dtype),
                pooled_projections=embeds.pooled_prompt_embeds.to(x_t.dtype),
                timestep=sigma,
                img_ids=self.img_ids,
                txt_ids=self.txt_ids,
                return_dict=False,
            )[0]
        return v.to(x_t.dtype)

    def forward_flops(self, batch: int) -> float:
        """Model FLOPs of `velocity` on `batch` rows (flowrl.models.flux.flux_forward_flops): the
        text is always max_text_len tokens (padded)."""
        from flowrl.models.flux import flux_forward_flops

        return batch * flux_forward_flops(self.transformer.config, self.latent_shape[0], self.config.max_text_len)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> clean packed latents x_0 in [-1, 1]."""
        return pack_images(images * 2 - 1, self.config.patch_size)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        images = unpack_images(x0.float(), self.config.patch_size, self.config.image_size)
        return ((images + 1) / 2).clamp(0, 1)

    # --- persistence: diffusers format for the transformer, safetensors for the text table ---
    def save_pretrained(self, path: str | Path) -> None:
        """Full weights: `transformer/` (diffusers) + the text table + the config json. With a LoRA
        adapter: `pytorch_lora_weights.safetensors` (FluxPipeline.load_lora_weights format) instead
        of `transformer/`, and the json names the base checkpoint it applies to."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        if self.has_adapter:
            from diffusers import FluxPipeline

            from flowrl.models.lora import save_lora

            save_lora(self.transformer, path, FluxPipeline)
            cfg["lora_base"] = str(self.source) if self.source else None
        else:
            self.transformer.save_pretrained(path / "transformer")
        save_file({k: v.contiguous() for k, v in self.text_encoder.state_dict().items()}, str(path / "text_encoder.safetensors"))
        (path / "flowrl_tiny_flux.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> TinyFluxModel:
        """Load a directory written by save_pretrained (default: the shipped weights); a LoRA
        directory loads its base checkpoint, then the adapter (trainable)."""
        from diffusers import FluxTransformer2DModel
        from safetensors.torch import load_file

        path = Path(path) if path else WEIGHTS_DIR
        cfg_file = path / "flowrl_tiny_flux.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"tiny_flux checkpoint not found: {cfg_file} (regenerate it with `python -m flowrl.pretrain --out {path}`)"
            )
        raw = json.loads(cfg_file.read_text())
        if "lora_base" in raw:
            from flowrl.models.lora import load_lora

            base = raw.pop("lora_base")
            model = cls.from_pretrained(base)
            if json.loads(json.dumps(asdict(model.config))) != raw:
                raise ValueError(f"LoRA in {path} was trained on another architecture than its base {base or WEIGHTS_DIR}")
            load_lora(model.transformer, path)
        else:
            raw["axes_dims_rope"] = tuple(raw["axes_dims_rope"])
            model = cls(TinyFluxConfig(**raw))
            model.transformer = FluxTransformer2DModel.from_pretrained(path / "transformer")
            model.use_attention("fp32")
        model.text_encoder.load_state_dict(load_file(str(path / "text_encoder.safetensors")))
        model.source = path if path != WEIGHTS_DIR else None
        return model.eval()


PRECISIONS = ("fp32", "bf16-autocast")
ATTENTIONS = ("fp32", "autocast")


def load_tiny_flux(
    path: str | None = None,
    device: str = "cpu",
    lora=None,
    precision: str = "fp32",
    world: str = "shapes",
    attention: str = "fp32",
) -> TinyFluxModel:
    """Hydra entry point (`model=tiny_flux`): the shipped weights of `world` (one per embedded
    world, `python -m flowrl.pretrain --world <w>`; flowrl.config.model_files.TINY_WORLDS), or a
    directory given by path.
    `lora` ({rank, alpha, target_modules}) attaches a fresh LoRA adapter (flowrl.models.lora).
    `precision`: fp32 | bf16-autocast (the transformer's forwards, rollout and training alike).
    `attention`: fp32 (Fp32AttentionProcessor: SDPA in fp32 whatever the precision) | autocast
    (diffusers' FluxAttnProcessor: SDPA in bf16 under bf16-autocast, the runs before 2026-12-06's
    seventh session); the two are identical in fp32."""
    from flowrl.models.lora import add_lora, lora_options

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    from flowrl.config.model_files import tiny_flux_dir

    model = TinyFluxModel.from_pretrained(tiny_flux_dir(path, world))
    model.precision = precision
    model.use_attention(attention)
    if (opts := lora_options(lora)) is not None:
        add_lora(model.transformer, **opts)
    return model.to(device)
