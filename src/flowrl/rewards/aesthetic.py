"""`aesthetic`: the LAION aesthetic predictor v2 ("improved aesthetic predictor", C. Schuhmann), from
local files: CLIP ViT-L/14 (OpenAI's weights) embeds the image, and a small MLP trained on AVA,
Simulacra Aesthetic Captions and LAION-Logos ratings (`sac+logos+ava1-l14-linearMSE.pth`, published
at github.com/christophschuhmann/improved-aesthetic-predictor) maps the L2-normalised image
embedding to a rating on a 1-10 scale. The prompt is not read.

    score = MLP(f_img / |f_img|)

The MLP file is a plain state dict of `layers = nn.Sequential(Linear(768, 1024), Dropout,
Linear(1024, 128), Dropout, Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1))`: keys
layers.{0,2,4,6,7}.{weight,bias}, no activation between the linear layers (the published model
has none). Its input size is read from the file and must be the CLIP's embedding size.

The CLIP loads as the other open_clip rewards do (`flowrl.rewards.clip.OpenClipReward`): an
open_clip architecture (`ViT-L-14-quickgelu`: OpenAI's CLIP uses QuickGELU) and a state-dict file
(`open_clip_pytorch_model.bin` of huggingface.co/timm/vit_large_patch14_clip_224.openai, open_clip's
own copy of OpenAI's ViT-L/14). The embedding is taken in the reward's dtype, the MLP runs in fp32.
Both files are checked before open_clip is imported; a missing one is one line naming it and
where it is published. Flow-GRPO's out-of-domain panel and DanceGRPO's evaluations report it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from flowrl.config.errors import require_path
from flowrl.rewards.clip import OpenClipReward
from flowrl.rewards.loading import CheckpointFormatError, describe_mismatch, load_weights_file, resolve_device

AESTHETIC_WHERE = "github.com/christophschuhmann/improved-aesthetic-predictor, file sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_HINT = (
    "download sac+logos+ava1-l14-linearMSE.pth from that repository into $FLOWRL_MODELS, or set reward.checkpoint=<file>"
)
CLIP_L14_WHERE = (
    "huggingface.co/timm/vit_large_patch14_clip_224.openai, file open_clip_pytorch_model.bin (OpenAI's CLIP ViT-L/14)"
)
CLIP_L14_HINT = (
    "`hf download timm/vit_large_patch14_clip_224.openai open_clip_pytorch_model.bin --local-dir "
    "$FLOWRL_MODELS/vit_large_patch14_clip_224.openai`, or set reward.clip_checkpoint=<file>"
)
HIDDEN = (1024, 128, 64, 16)  # the published MLP's widths (then 1)


def aesthetic_mlp(input_size: int = 768) -> nn.Sequential:
    """The predictor's head in the published module layout (so its state dict loads by name)."""
    widths = (input_size, *HIDDEN, 1)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < 3:
            layers.append(nn.Dropout((0.2, 0.2, 0.1)[i]))
    return nn.Sequential(*layers)


class AestheticHead(nn.Module):
    """`layers`: the MLP, named as in the published file."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = aesthetic_mlp(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_aesthetic_head(path: Path, embed_dim: int) -> AestheticHead:
    """The MLP from its .pth (weights_only) or .safetensors file, checked against the layout."""
    what = "aesthetic predictor"
    state = load_weights_file(path, what, AESTHETIC_WHERE)
    first = state.get("layers.0.weight")
    input_size = int(first.shape[1]) if first is not None and first.ndim == 2 else embed_dim
    head = AestheticHead(input_size)
    problem = describe_mismatch({k: v.shape for k, v in head.state_dict().items()}, state)
    if problem:
        raise CheckpointFormatError(what, path, f"not the published MLP layout: {problem}", AESTHETIC_WHERE)
    if input_size != embed_dim:
        raise CheckpointFormatError(
            what,
            path,
            f"its MLP takes {input_size}-d embeddings, the CLIP gives {embed_dim}-d (a ViT-L/14 gives 768)",
            AESTHETIC_WHERE,
        )
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval().requires_grad_(False)


class AestheticReward(OpenClipReward):
    name = "aesthetic"

    def __init__(
        self,
        checkpoint: str | Path | None,
        clip_checkpoint: str | Path | None,
        arch: str | Path = "ViT-L-14-quickgelu",
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = 16,
    ):
        # both files before open_clip's ~9 s import
        head_path = require_path("LAION aesthetic predictor", checkpoint, AESTHETIC_WHERE, AESTHETIC_HINT, kind="file")
        clip_path = require_path("CLIP ViT-L/14 (aesthetic)", clip_checkpoint, CLIP_L14_WHERE, CLIP_L14_HINT, kind="file")
        super().__init__(arch, clip_path, device=resolve_device(device), dtype=dtype, batch_size=batch_size, where=CLIP_L14_WHERE)
        self.head = load_aesthetic_head(head_path, int(self.model.visual.output_dim)).to(self.device)

    def score_batch(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.head(self.embed_images(images)).squeeze(-1)  # embed_images: L2-normalised, fp32
