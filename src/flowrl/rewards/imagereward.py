"""`imagereward`: ImageReward v1.0 (Xu et al. 2023, "ImageReward"), from a local checkpoint.

Files: ImageReward.pt (the state dict of the original `ImageReward` module) and med_config.json,
both published at huggingface.co/THUDM/ImageReward; a bert-base-uncased tokenizer directory
(huggingface.co/google-bert/bert-base-uncased, vocab.txt is enough).

Why reimplemented: the `image-reward` 1.5 package does not import with transformers 5 (its BLIP
copy imports helpers that moved), so the model is rebuilt here from transformers' BLIP blocks,
which port the same BLIP code (salesforce/BLIP) ImageReward copied:
  image   BLIP ViT (ViT-L/16 at 224 px: width 1024, 24 blocks, 16 heads; LayerNorm eps 1e-6)
          -> all tokens after the final LayerNorm             = transformers BlipVisionModel
  text    BERT-base with cross-attention to the image tokens in every layer (med_config.json;
          prompt tokenized to max_length 35, padded, [CLS] first)   = transformers BlipTextModel
  head    [CLS] feature (768) -> Linear 1024 -> Linear 128 -> Linear 64 -> Linear 16 -> Linear 1,
          with dropout between and no activation (as the original: its ReLUs are commented out)
  score   (head - 0.16717362830052426) / 1.0333394966054072
The original checkpoint's keys are mapped to these modules by `map_original_key`. The vision
encoder's width / depth / patch / image size are read from the checkpoint's shapes; its number of
heads (16 for ViT-L) is a parameter, as it cannot be read from shapes.
Differences from the original: images are resized on tensors (bicubic with antialiasing) instead
of by PIL; the self-attention padding mask is -inf (transformers) instead of -10000 (BLIP), which
gives the same probabilities; the tokenizer is transformers 5's BertTokenizer (the Rust
WordPiece) with [DEC] / [ENC] added as BLIP's init_tokenizer does.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from flowrl.config.errors import require_path
from flowrl.rewards.base import RewardModel
from flowrl.rewards.clip import clip_preprocess
from flowrl.rewards.loading import (
    CheckpointFormatError,
    describe_mismatch,
    in_batches,
    load_weights_file,
    resolve_device,
    resolve_dtype,
)

IR_WHERE = "huggingface.co/THUDM/ImageReward"
IR_HINT = "`hf download THUDM/ImageReward ImageReward.pt med_config.json --local-dir $FLOWRL_MODELS/ImageReward`"
TOK_WHERE = "huggingface.co/google-bert/bert-base-uncased"
TOK_HINT = "`hf download google-bert/bert-base-uncased --include '*.txt' '*.json' --local-dir $FLOWRL_MODELS/bert-base-uncased`"
# ImageReward's normalisation of the MLP output (ImageReward.py: self.mean, self.std).
IR_MEAN, IR_STD = 0.16717362830052426, 1.0333394966054072
MAX_LENGTH = 35  # the original tokenizes prompts with padding='max_length', truncation, max_length 35
MLP_SIZES = (1024, 128, 64, 16, 1)
MLP_DROPOUT = (0.2, 0.2, 0.1)
# Original keys the scorer does not use: BLIP's contrastive projections, position-id buffers.
IGNORED = re.compile(r"^blip\.(vision_proj|text_proj)\.|position_ids$")
# Original key -> this module's key (applied in order, first match wins).
KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^blip\.visual_encoder\.cls_token$", "vision.embeddings.class_embedding"),
    (r"^blip\.visual_encoder\.pos_embed$", "vision.embeddings.position_embedding"),
    (r"^blip\.visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embedding."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision.encoder.layers.\1.layer_norm1."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision.encoder.layers.\1.layer_norm2."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision.encoder.layers.\1.self_attn.qkv."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision.encoder.layers.\1.self_attn.projection."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.", r"vision.encoder.layers.\1.mlp.\2."),
    (r"^blip\.visual_encoder\.norm\.", "vision.post_layernorm."),
    (r"^blip\.text_encoder\.", "text."),  # BLIP's med BertModel and BlipTextModel share key names
    (r"^mlp\.layers\.", "mlp."),  # nn.Sequential indices 0, 2, 4, 6, 7 kept
)


def map_original_key(key: str) -> str | None:
    """An ImageReward.pt key -> this module's key; None for keys the scorer does not use."""
    if IGNORED.search(key):
        return None
    for pattern, repl in KEY_MAP:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key  # unknown: reported as unexpected


def check_imagereward_files(checkpoint, med_config, tokenizer) -> tuple[Path, Path, Path]:
    """The three inputs, checked by existence only (no import, no read)."""
    ckpt = require_path("ImageReward", checkpoint, f"{IR_WHERE}, file ImageReward.pt", IR_HINT, kind="file")
    med = require_path(
        "ImageReward med_config.json",
        med_config or ckpt.parent / "med_config.json",
        f"{IR_WHERE}, file med_config.json",
        IR_HINT,
        kind="file",
    )
    tok = require_path("ImageReward tokenizer (bert-base-uncased)", tokenizer, TOK_WHERE, TOK_HINT, kind="dir")
    if not (tok / "vocab.txt").is_file() and not (tok / "tokenizer.json").is_file():
        require_path("ImageReward tokenizer (bert-base-uncased)", tok / "vocab.txt", TOK_WHERE, TOK_HINT, kind="file")
    return ckpt, med, tok


class ImageRewardModel(RewardModel):
    name = "imagereward"

    def __init__(
        self,
        checkpoint: str | Path | None,
        tokenizer: str | Path | None,
        med_config: str | Path | None = None,
        vision_heads: int = 16,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = 16,
    ):
        super().__init__()
        ckpt, med_path, tok_dir = check_imagereward_files(checkpoint, med_config, tokenizer)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        where = f"{IR_WHERE}, file ImageReward.pt"
        med = read_med_config(med_path)  # small file first: its errors come before the 1.7 GB read
        original = load_weights_file(ckpt, "ImageReward", where)
        state = {new: v for k, v in original.items() if (new := map_original_key(k)) is not None}

        from transformers import BertTokenizer
        from transformers.models.blip.configuration_blip import BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.tokenizer = BertTokenizer.from_pretrained(str(tok_dir))
        # BLIP's init_tokenizer adds these two (ids 30522, 30523 with bert-base-uncased's vocab).
        self.tokenizer.add_tokens(["[DEC]", "[ENC]"], special_tokens=True)
        vision_cfg = BlipVisionConfig(**vision_dims(state, ckpt, vision_heads), hidden_act="gelu", layer_norm_eps=1e-6)
        text_cfg = BlipTextConfig(
            vocab_size=med["vocab_size"],
            hidden_size=med["hidden_size"],
            encoder_hidden_size=vision_cfg.hidden_size,  # BLIP sets encoder_width = vision width
            intermediate_size=med["intermediate_size"],
            num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"],
            max_position_embeddings=med["max_position_embeddings"],
            hidden_act=med.get("hidden_act", "gelu"),
            layer_norm_eps=med.get("layer_norm_eps", 1e-12),
            pad_token_id=med.get("pad_token_id", 0),
            bos_token_id=self.tokenizer.convert_tokens_to_ids("[DEC]"),
            sep_token_id=self.tokenizer.sep_token_id,
            is_decoder=True,  # builds the cross-attention layers; forward runs bidirectionally
        )
        if len(self.tokenizer) > text_cfg.vocab_size:
            raise CheckpointFormatError(
                "ImageReward tokenizer",
                tok_dir,
                f"{len(self.tokenizer)} tokens but med_config has vocab_size {text_cfg.vocab_size}",
                TOK_WHERE,
            )
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        layers: list[nn.Module] = []
        sizes = (text_cfg.hidden_size, *MLP_SIZES)
        for i in range(len(MLP_SIZES)):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(MLP_DROPOUT):
                layers.append(nn.Dropout(MLP_DROPOUT[i]))
        self.mlp = nn.Sequential(*layers)  # indices 0, 2, 4, 6, 7 hold the Linear layers, as the original

        expected = {k: v.shape for k, v in self.state_dict().items() if not k.endswith("position_ids")}
        problem = describe_mismatch(expected, {k: v for k, v in state.items() if k in expected})
        if problem:
            raise CheckpointFormatError("ImageReward", ckpt, f"it does not fit ImageReward: {problem}", where)
        unexpected = sorted(k for k in original if (new := map_original_key(k)) is not None and new not in expected)
        if unexpected:  # the original loads with strict=False: extra keys are ignored there too
            warnings.warn(f"ImageReward: {len(unexpected)} unused keys in {ckpt} (e.g. {unexpected[:2]})", stacklevel=2)
        self.load_state_dict({k: state[k] for k in expected}, strict=False)
        self.eval().requires_grad_(False)
        self.vision.to(device=device, dtype=dtype)
        self.text.to(device=device, dtype=dtype)
        self.mlp.to(device=device, dtype=torch.float32)  # the original runs the head on .float() features
        self.image_size = vision_cfg.image_size
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.mlp[0].weight.device

    def features(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The [CLS] state of the text encoder cross-attending to the image: [B, 768] fp32."""
        dtype = self.vision.embeddings.patch_embedding.weight.dtype
        x = clip_preprocess(images.to(self.device, torch.float32), self.image_size).to(dtype)
        image_embeds = self.vision(pixel_values=x).last_hidden_state  # [B, 1 + patches, width]
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        out = self.text(
            input_ids=tokens.input_ids.to(self.device),
            attention_mask=tokens.attention_mask.to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device),
            is_decoder=False,
        )
        return out.last_hidden_state[:, 0].float()

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self.mlp(self.features(images, prompts)).squeeze(-1) - IR_MEAN) / IR_STD

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return in_batches(self.score_batch, images, prompts, self.batch_size)


MED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)


def read_med_config(path: Path) -> dict:
    """BLIP's med_config.json (a BERT config with add_cross_attention), checked."""
    try:
        med = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointFormatError("ImageReward med_config.json", path, f"not JSON ({err})", IR_WHERE) from err
    missing = [k for k in MED_KEYS if not isinstance(med, dict) or k not in med]
    if missing:
        raise CheckpointFormatError("ImageReward med_config.json", path, f"not a BERT config (no {', '.join(missing)})", IR_WHERE)
    if not med.get("add_cross_attention", False):
        raise CheckpointFormatError("ImageReward med_config.json", path, "add_cross_attention is not true", IR_WHERE)
    return med


def vision_dims(state: dict[str, torch.Tensor], ckpt: Path, heads: int) -> dict:
    """BlipVisionConfig sizes read from the (mapped) checkpoint's shapes; heads is given."""
    where = f"{IR_WHERE}, file ImageReward.pt"
    need = (
        "vision.embeddings.class_embedding",
        "vision.embeddings.patch_embedding.weight",
        "vision.embeddings.position_embedding",
    )
    missing = [k for k in need if k not in state]
    if missing:
        problem = "no BLIP vision encoder in it (no blip.visual_encoder.{cls_token,pos_embed,patch_embed} keys)"
        raise CheckpointFormatError("ImageReward", ckpt, problem, where)
    width = state["vision.embeddings.class_embedding"].shape[-1]
    patch = state["vision.embeddings.patch_embedding.weight"].shape[-1]
    grid = round((state["vision.embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"vision\.encoder\.layers\.(\d+)\.", k))})
    fc1 = state.get("vision.encoder.layers.0.mlp.fc1.weight")
    if depth == 0 or fc1 is None or width % heads:
        raise CheckpointFormatError(
            "ImageReward", ckpt, f"its vision encoder is incomplete or not divisible into {heads} heads", where
        )
    return {
        "hidden_size": width,
        "intermediate_size": fc1.shape[0],
        "num_hidden_layers": depth,
        "num_attention_heads": heads,
        "image_size": grid * patch,
        "patch_size": patch,
    }
