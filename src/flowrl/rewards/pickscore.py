"""`pickscore`: PickScore v1 (Kirstain et al. 2023, "Pick-a-Pic"), from a local directory.

The model is a transformers `CLIPModel` (a ViT-H-14 CLIP fine-tuned on Pick-a-Pic preferences),
the directory of huggingface.co/yuvalkirstain/PickScore_v1 (config.json + weights). The original
code takes the processor from laion/CLIP-ViT-H-14-laion2B-s32B-b79K; `processor` names that
directory (default: the model directory, when it also holds the processor files).

score = logit_scale.exp() * cos(image_embeds, text_embeds)       (PickScore's definition; ~20-23)

Images are preprocessed on tensors, as the processor's own settings say (resize the shorter side,
bicubic with antialiasing; centre crop; CLIP mean / std), so batches never leave the device;
prompts go through the processor's tokenizer (padding, truncation at 77) as in the original.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from flowrl.config.errors import CheckpointNotFound, require_path
from flowrl.rewards.base import RewardModel
from flowrl.rewards.clip import CLIP_MEAN, CLIP_STD, clip_preprocess
from flowrl.rewards.loading import CheckpointFormatError, in_batches, resolve_device, resolve_dtype

PICK_WHERE = "huggingface.co/yuvalkirstain/PickScore_v1"
PICK_HINT = "`hf download yuvalkirstain/PickScore_v1 --local-dir $FLOWRL_MODELS/PickScore_v1`, or set reward.checkpoint=<dir>"
PROC_WHERE = "huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PROC_HINT = (
    "`hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --include '*.json' '*.txt' --local-dir "
    "$FLOWRL_MODELS/CLIP-ViT-H-14-laion2B-s32B-b79K`, then set reward.processor=<dir>"
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_pickscore_dirs(checkpoint, processor) -> tuple[Path, Path]:
    """The model and processor directories, checked by their small files only (no import)."""
    model_dir = require_path("PickScore v1", checkpoint, PICK_WHERE, PICK_HINT, kind="dir")
    config = model_dir / "config.json"
    if not config.is_file():
        raise CheckpointNotFound("PickScore v1", model_dir, PICK_WHERE, f"no config.json in it; {PICK_HINT}")
    if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointNotFound(
            "PickScore v1", model_dir, PICK_WHERE, f"no model.safetensors or pytorch_model.bin in it; {PICK_HINT}"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise CheckpointFormatError("PickScore v1", config, f"not a JSON model config ({err})", PICK_WHERE) from err
    if model_type != "clip":
        raise CheckpointFormatError(
            "PickScore v1", model_dir, f"its config.json is a {model_type!r} model, PickScore is 'clip'", PICK_WHERE
        )
    proc_dir = require_path("PickScore processor", processor or model_dir, PROC_WHERE, PROC_HINT, kind="dir")
    if not any((proc_dir / f).is_file() for f in PROCESSOR_FILES):
        raise CheckpointNotFound("PickScore processor", proc_dir, PROC_WHERE, f"no preprocessor_config.json in it; {PROC_HINT}")
    return model_dir, proc_dir


def _field(d, key: str):
    if d is None:
        return None
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


class PickScoreReward(RewardModel):
    name = "pickscore"

    def __init__(
        self,
        checkpoint: str | Path | None,
        processor: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = 16,
    ):
        super().__init__()
        model_dir, proc_dir = check_pickscore_dirs(checkpoint, processor)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        from transformers import AutoProcessor, CLIPModel

        try:
            model, info = CLIPModel.from_pretrained(model_dir, dtype=dtype, output_loading_info=True)
        except Exception as err:  # wrong shapes, unreadable weights
            raise CheckpointFormatError("PickScore v1", model_dir, f"{type(err).__name__}: {err}", PICK_WHERE) from err
        if info.get("missing_keys") or info.get("mismatched_keys"):
            missing = sorted(info.get("missing_keys") or [])
            raise CheckpointFormatError(
                "PickScore v1",
                model_dir,
                f"its weights do not fit its config ({len(missing)} missing, e.g. {missing[:2]})",
                PICK_WHERE,
            )
        self.model = model.eval().requires_grad_(False).to(device)
        try:
            proc = AutoProcessor.from_pretrained(proc_dir)
        except Exception as err:
            raise CheckpointFormatError("PickScore processor", proc_dir, f"{type(err).__name__}: {err}", PROC_WHERE) from err
        self.tokenizer = proc.tokenizer
        ip = proc.image_processor
        crop = _field(ip, "crop_size")
        self.resize_to = _field(_field(ip, "size"), "shortest_edge") or int(self.model.config.vision_config.image_size)
        self.crop = (int(_field(crop, "height")), int(_field(crop, "width"))) if _field(crop, "height") else self.resize_to
        self.mean = tuple(_field(ip, "image_mean") or CLIP_MEAN)
        self.std = tuple(_field(ip, "image_std") or CLIP_STD)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> the processor's pixel_values, computed on tensors."""
        x = clip_preprocess(images.to(self.device, torch.float32), self.resize_to, self.mean, self.std, crop=self.crop)
        return x.to(self.model.dtype)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        img = _embeds(self.model.get_image_features(pixel_values=self.preprocess(images)))
        txt = _embeds(self.model.get_text_features(**text))
        cos = (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1)
        return self.model.logit_scale.float().exp() * cos

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return in_batches(self.score_batch, images, prompts, self.batch_size)


def _embeds(out) -> torch.Tensor:
    """get_*_features returns the projected embeddings (transformers 4) or an output whose
    pooler_output holds them (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
