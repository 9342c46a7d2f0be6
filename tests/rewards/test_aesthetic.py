"""`aesthetic`: the LAION aesthetic predictor (CLIP image embedding -> MLP) on a tiny random CLIP and
a random MLP saved in the published layout (`sac+logos+ava1-l14-linearMSE.pth`: a plain state dict of
`layers.{0,2,4,6,7}`), scored against a reference computed by hand from the file's tensors; bf16
against fp32; missing and wrong files in one line."""

import json
import time

import pytest
import torch
import torch.nn.functional as F

from flowrl.config.errors import CheckpointNotFound
from flowrl.rewards.clip import CLIP_MEAN, CLIP_STD
from flowrl.rewards.loading import CheckpointFormatError

TINY = {
    "embed_dim": 16,
    "quick_gelu": True,  # OpenAI's CLIP (the published predictor's) uses QuickGELU
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}
WIDTHS = (16, 1024, 128, 64, 16, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("aesthetic")
    arch = d / "tiny-aesthetic-clip.json"
    arch.write_text(json.dumps(TINY))
    open_clip.add_model_config(arch)
    torch.manual_seed(3)
    clip = open_clip.create_model("tiny-aesthetic-clip", pretrained=None).eval()
    torch.save(clip.state_dict(), d / "open_clip_pytorch_model.bin")
    # the published file: torch.save(model.state_dict()) of the MLP, whose Linear layers sit at 0, 2, 4, 6, 7
    mlp = {}
    for index, (a, b) in zip((0, 2, 4, 6, 7), zip(WIDTHS[:-1], WIDTHS[1:])):
        mlp[f"layers.{index}.weight"] = torch.randn(b, a) / a**0.5
        mlp[f"layers.{index}.bias"] = torch.randn(b) * 0.1
    torch.save(mlp, d / "sac+logos+ava1-l14-linearMSE.pth")
    return arch, d / "sac+logos+ava1-l14-linearMSE.pth", d / "open_clip_pytorch_model.bin", clip, mlp


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g).float() / 255


def _reference(clip, mlp, images):
    """By hand: CLIP normalisation, the image embedding L2-normalised, the five linear layers."""
    x = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        e = clip.encode_image(x)
    h = e / e.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):
        h = h @ mlp[f"layers.{index}.weight"].T + mlp[f"layers.{index}.bias"]
    return h.squeeze(-1)


def test_aesthetic_is_the_mlp_on_the_normalised_clip_embedding(files):
    from flowrl.rewards.aesthetic import AestheticReward

    arch, head, clip_file, clip, mlp = files
    reward = AestheticReward(head, clip_file, arch=arch, device="cpu", batch_size=3)  # 5 rows: chunks of 3 and 2
    images = _images(5)
    scores = reward(images, ["ignored"] * 5)
    assert reward.name == "aesthetic" and reward.dtype == torch.float32 and scores.shape == (5,)
    torch.testing.assert_close(scores, _reference(clip, mlp, images), atol=1e-5, rtol=1e-5)
    assert torch.equal(reward(images, ["other prompts"] * 5), scores)  # the prompt is not read


def test_aesthetic_bf16_against_fp32(files):
    from flowrl.rewards.aesthetic import AestheticReward

    arch, head, clip_file, _, _ = files
    images = _images(8, seed=1)
    fp32 = AestheticReward(head, clip_file, arch=arch, device="cpu", dtype="float32")(images, [""] * 8)
    bf16_reward = AestheticReward(head, clip_file, arch=arch, device="cpu", dtype="bfloat16")
    assert bf16_reward.dtype == torch.bfloat16 and bf16_reward.head.layers[0].weight.dtype == torch.float32
    bf16 = bf16_reward(images, [""] * 8)
    dev = (bf16 - fp32).abs().max().item()
    print(f"aesthetic max |bf16 - fp32| {dev:.4f} over fp32 range [{fp32.min():.3f}, {fp32.max():.3f}]")
    assert dev < 0.05 * (1 + fp32.abs().max().item())


def test_missing_aesthetic_files_are_one_line_and_fast(files, tmp_path):
    from flowrl.rewards.aesthetic import AestheticReward

    arch, head, clip_file, _, _ = files
    for missing, other, where in (
        (tmp_path / "sac+logos+ava1-l14-linearMSE.pth", clip_file, "christophschuhmann/improved-aesthetic-predictor"),
        (tmp_path / "open_clip_pytorch_model.bin", None, "timm/vit_large_patch14_clip_224.openai"),
    ):
        start = time.perf_counter()
        with pytest.raises(CheckpointNotFound) as err:
            if other is None:
                AestheticReward(head, missing, arch=arch)
            else:
                AestheticReward(missing, other, arch=arch)
        msg = str(err.value)
        assert "\n" not in msg and str(missing) in msg and where in msg, msg
        assert time.perf_counter() - start < 5


def test_aesthetic_wrong_mlp_file_is_one_line(files, tmp_path):
    from flowrl.rewards.aesthetic import AestheticReward

    arch, _, clip_file, _, mlp = files
    wrong = tmp_path / "relu.pth"
    torch.save({k.replace("layers.7", "layers.8"): v for k, v in mlp.items()}, wrong)
    with pytest.raises(CheckpointFormatError, match="not the published MLP layout") as err:
        AestheticReward(wrong, clip_file, arch=arch, device="cpu")
    assert "\n" not in str(err.value) and "layers.8" in str(err.value)
    other_dim = tmp_path / "l14.pth"
    torch.save({k: (F.pad(v, (0, 752)) if k == "layers.0.weight" else v) for k, v in mlp.items()}, other_dim)
    with pytest.raises(CheckpointFormatError, match="768-d embeddings, the CLIP gives 16-d"):
        AestheticReward(other_dim, clip_file, arch=arch, device="cpu")
