"""Image-text cosine rewards on open_clip models: `tiny_clip` now; HPS v2.1 and CLIP score
load through the same class (an open_clip architecture + a state-dict file).

score = cos(f_img(preprocess(image)), f_txt(tokenize(prompt)))   (HPS v2.1 is exactly this with
ViT-H-14 and its fine-tuned state dict). Preprocessing is done on tensors (resize shorter side
with bicubic antialiasing, centre crop, CLIP mean/std), so batches never leave the device.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from flowrl.rewards.base import RewardModel
from flowrl.rewards.loading import CheckpointFormatError, describe_mismatch, in_batches, resolve_device, resolve_dtype

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_CLIP_DIR = ASSETS / "tiny_clip"
TINY_CLIP_ARCH = TINY_CLIP_DIR / "flowrl-tiny-clip.json"
TINY_CLIP_WEIGHTS = TINY_CLIP_DIR / "flowrl-tiny-clip.safetensors"
# The same architecture trained on flowrl.data.geneval (32 px). Its own file stem: open_clip
# registers a config JSON under its stem, so two worlds' files of one name would shadow each other.
TINY_CLIP_GENEVAL_DIR = ASSETS / "tiny_clip_geneval"
TINY_CLIP_FILES: dict[str, tuple[Path, Path]] = {
    "shapes": (TINY_CLIP_ARCH, TINY_CLIP_WEIGHTS),
    "geneval": (
        TINY_CLIP_GENEVAL_DIR / "flowrl-tiny-clip-geneval.json",
        TINY_CLIP_GENEVAL_DIR / "flowrl-tiny-clip-geneval.safetensors",
    ),
}
# The reward's name per world: the key of its component scores (and of the reward=<option> yaml).
TINY_CLIP_NAMES = {"shapes": "tiny_clip", "geneval": "geneval_clip"}
# CLIP's normalisation (open_clip OPENAI_DATASET_MEAN / STD); a config's preprocess_cfg wins.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_arch(arch: str | Path) -> tuple[str, dict]:
    """An open_clip model name ('ViT-H-14') or a path to an open_clip model-config JSON ->
    (name to create, its config). A JSON file is registered with open_clip under its stem."""
    import open_clip

    path = Path(arch)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        open_clip.add_model_config(path)
        name = path.stem
    else:
        name = str(arch)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r} (a model name like 'ViT-H-14' or a config .json)")
    return name, cfg


def clip_preprocess(
    images: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD, crop: int | tuple[int, int] | None = None
) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, crop_h, crop_w] normalised, as CLIP's eval transform
    (torchvision Resize(size) bicubic on the shorter side, CenterCrop(crop), Normalize; crop
    defaults to size). Bicubic overshoot is clamped to [0, 1], as PIL / uint8 pipelines do."""
    ch, cw = (crop, crop) if isinstance(crop, int) else tuple(crop) if crop is not None else (size, size)
    h, w = images.shape[-2:]
    if min(h, w) != size:
        # torchvision / transformers: the short side becomes size, the long side int(size * long / short)
        nh, nw = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        h, w = nh, nw
    if (h, w) != (ch, cw):
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        images = images[..., top : top + ch, left : left + cw]
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s


class OpenClipReward(RewardModel):
    """Cosine similarity of open_clip image and text embeddings.

    arch: open_clip model name or model-config JSON; checkpoint: state-dict file (.pt/.bin with
    or without a 'state_dict' key, or .safetensors). Missing files fail before any model is built;
    a file that does not fit the architecture is a one-line CheckpointFormatError. dtype: the
    weights' dtype ('auto' = bf16 on CUDA, fp32 on CPU); embeddings are compared in fp32.
    batch_size: rows per forward (None = the whole batch at once).
    """

    name = "clip"

    def __init__(
        self,
        arch: str | Path,
        checkpoint: str | Path,
        device: str = "cpu",
        source_hint: str = "",
        dtype: str | torch.dtype = "float32",
        batch_size: int | None = None,
        where: str = "",
    ):
        super().__init__()
        import open_clip

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            hint = f" ({source_hint})" if source_hint else ""
            raise FileNotFoundError(f"{self.name} reward checkpoint not found: {checkpoint}{hint}")
        model_name, cfg = resolve_arch(arch)
        device = resolve_device(device)
        # open_clip logs "No pretrained weights loaded ... initialized randomly" for pretrained=None;
        # the weights come from the checkpoint on the next line, so that warning would only mislead.
        logging.disable(logging.WARNING)
        try:
            self.model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        finally:
            logging.disable(logging.NOTSET)
        # HPS v2.1's own code loads HPS_v2.1_compressed.pt into ViT-H-14 with a strict load_state_dict;
        # so do we (through open_clip's loader, which unwraps 'state_dict' and fixes old layouts).
        load_open_clip_checkpoint(self.model, checkpoint, f"{self.name} reward", where or source_hint, model_name)
        self.model.eval().requires_grad_(False).to(device=device, dtype=resolve_dtype(dtype, device))
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.image_size = int(cfg["vision_cfg"]["image_size"])
        pcfg = cfg.get("preprocess_cfg", {})
        self.mean, self.std = tuple(pcfg.get("mean", CLIP_MEAN)), tuple(pcfg.get("std", CLIP_STD))
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        x = clip_preprocess(images.to(self.device, torch.float32), self.image_size, self.mean, self.std)
        return F.normalize(self.model.encode_image(x.to(self.dtype)).float(), dim=-1)  # [B, E]

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)  # [B, E]

    def cosine(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The score of one chunk of at most batch_size rows (subclasses change the formula here)."""
        return self.cosine(images, prompts)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return in_batches(self.score_batch, images, prompts, self.batch_size)


def load_open_clip_checkpoint(model, path: Path, what: str, where: str, arch: str) -> None:
    """open_clip.load_checkpoint, strict, with every failure turned into one CheckpointFormatError line."""
    import open_clip

    try:
        incompatible = open_clip.load_checkpoint(model, str(path), strict=False)
    except Exception as err:
        sizes = SIZE_MISMATCH.findall(str(err))
        if sizes:
            name, found, expected = sizes[0]
            problem = f"{len(sizes)} tensors of another shape than open_clip {arch} (e.g. {name}: {found} in the file, {expected} expected)"
        else:
            first = (str(err).strip().splitlines() or ["no message"])[0]
            problem = f"could not be loaded into open_clip {arch} ({type(err).__name__}: {first})"
        raise CheckpointFormatError(what, path, problem, where or "see the reward's config") from err
    if incompatible.missing_keys or incompatible.unexpected_keys:
        expected = {k: () for k in model.state_dict()}
        found = {k: () for k in set(expected) - set(incompatible.missing_keys)} | {k: () for k in incompatible.unexpected_keys}
        problem = f"it does not fit open_clip {arch}: {describe_mismatch(expected, found)}"
        raise CheckpointFormatError(what, path, problem, where or "see the reward's config")


SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) from checkpoint, "
    r"the shape in current model is (torch\.Size\(\[[^\]]*\]\))"
)


class TinyClipReward(OpenClipReward):
    """The shipped tiny open_clip models (python -m flowrl.rewards.train_tiny_clip --world W), a
    learned, hackable proxy of a world's rule reward. world "shapes": `tiny_clip`, proxy of
    `shapes` (assets/tiny_clip); world "geneval": `geneval_clip`, proxy of `geneval`
    (assets/tiny_clip_geneval). An explicit checkpoint / arch wins over the world's files."""

    name = "tiny_clip"

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        arch: str | Path | None = None,
        device: str = "cpu",
        world: str = "shapes",
    ):
        if world not in TINY_CLIP_FILES:
            raise ValueError(f"tiny_clip world must be one of {sorted(TINY_CLIP_FILES)}, got {world!r}")
        self.name = TINY_CLIP_NAMES[world]  # set first: the loader's error messages name the reward
        self.world = world
        default_arch, default_weights = TINY_CLIP_FILES[world]
        command = "python -m flowrl.rewards.train_tiny_clip" + ("" if world == "shapes" else f" --world {world}")
        super().__init__(
            arch or default_arch,
            checkpoint or default_weights,
            device=device,
            source_hint=f"regenerate it with `{command}`",
        )


def tiny_clip_config(world: str = "shapes") -> dict:
    """The tiny open_clip architecture (written next to the weights as an open_clip model config):
    32 px, 4 px patches, for both worlds (each is rendered at 32 px)."""
    vision = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 4}
    if world not in ("shapes", "geneval"):
        raise ValueError(f"tiny_clip world must be one of {sorted(TINY_CLIP_FILES)}, got {world!r}")
    return {
        "embed_dim": 64,
        "vision_cfg": vision,
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def write_tiny_clip_config(path: Path, world: str = "shapes") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tiny_clip_config(world), indent=2) + "\n")
