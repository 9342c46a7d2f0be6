"""open_clip-based rewards: the shipped tiny_clip, and the generic loader HPS v2.1 / CLIP score use,
tested on a tiny random open_clip model saved in HPS's checkpoint format ({'state_dict': ...})."""

import json

import pytest
import torch
import torch.nn.functional as F

from flowrl.data.shapes import ShapeSpec, all_specs, render_batch
from flowrl.rewards.clip import CLIP_MEAN, CLIP_STD, OpenClipReward, TinyClipReward, clip_preprocess

TINY_ARCH = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def hps_format_checkpoint(tmp_path_factory):
    """A random tiny open_clip model saved as HPS_v2.1_compressed.pt is: torch.save({'state_dict': sd})."""
    import open_clip

    d = tmp_path_factory.mktemp("hps")
    arch = d / "tiny-test-clip.json"
    arch.write_text(json.dumps(TINY_ARCH))
    open_clip.add_model_config(arch)
    torch.manual_seed(1)
    model = open_clip.create_model("tiny-test-clip", pretrained=None).eval()
    torch.save({"state_dict": model.state_dict()}, d / "HPS_v2.1_compressed.pt")
    return arch, d / "HPS_v2.1_compressed.pt", model


def test_loader_scores_cosine_like_reference(hps_format_checkpoint):
    import open_clip

    arch, ckpt, ref = hps_format_checkpoint
    reward = OpenClipReward(arch, ckpt)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a blue square on a white background", "x"]
    # Reference, computed independently: normalise by hand, encode with the original model,
    # cosine = dot of unit vectors.
    x = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fi = ref.encode_image(x)
        ft = ref.encode_text(open_clip.tokenize(prompts, context_length=12))
    expected = (fi * ft).sum(-1) / (fi.norm(dim=-1) * ft.norm(dim=-1))
    torch.testing.assert_close(reward(images, prompts), expected, atol=1e-5, rtol=1e-5)


def test_loading_does_not_warn_that_the_model_is_random(hps_format_checkpoint, caplog):
    # open_clip.create_model(pretrained=None) logs "No pretrained weights loaded ... initialized
    # randomly"; the loader fills the weights from the checkpoint right after, so a user must not
    # see that line, and logging must work again afterwards.
    import logging

    arch, ckpt, _ = hps_format_checkpoint
    with caplog.at_level(logging.INFO):
        OpenClipReward(arch, ckpt)
        logging.getLogger("flowrl-test").warning("still logging")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("No pretrained weights" in m for m in messages), messages
    assert "still logging" in messages


def test_preprocess_resizes_like_open_clip_transform():
    # open_clip's eval transform (PIL bicubic resize of the shorter side, centre crop,
    # normalise) vs our tensor version on a smooth image: equal up to resampling differences.
    import open_clip
    from PIL import Image

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    img = torch.stack([xx, yy, (xx + yy) / 2])  # [3, 48, 64]
    pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    ref = open_clip.image_transform(32, is_train=False)(pil)
    ours = clip_preprocess(img.unsqueeze(0), 32)[0]
    assert ours.shape == ref.shape == (3, 32, 32)
    assert (ours - ref).abs().mean() < 0.05


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        TinyClipReward(checkpoint=tmp_path / "nope.safetensors")
    msg = str(e.value)
    assert "nope.safetensors" in msg and "train_tiny_clip" in msg and "\n" not in msg


def test_unknown_arch(tmp_path):
    f = tmp_path / "w.pt"
    torch.save({}, f)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        OpenClipReward("ViT-Nope-1", f)


def test_shipped_tiny_clip_prefers_the_true_caption(tiny_clip):
    # On fresh renderings, the true caption must outscore a caption with one attribute changed.
    # Colors are easy for it (measured 100%); shapes at 32 px less so (measured 80%): it is a
    # deliberately imperfect proxy, and this pins how imperfect.
    specs = all_specs()[::3]
    images = render_batch(specs, seed=99)
    true = tiny_clip(images, [s.prompt for s in specs])
    wrong_fg = [
        ShapeSpec(next(c for c in ("red", "green", "blue") if c not in (s.fg, s.bg)), s.shape, s.bg).prompt for s in specs
    ]
    wrong_shape = [ShapeSpec(s.fg, "square" if s.shape != "square" else "circle", s.bg).prompt for s in specs]
    assert (true > tiny_clip(images, wrong_fg)).float().mean() > 0.9
    assert (true > tiny_clip(images, wrong_shape)).float().mean() >= 0.7
    assert true.abs().max() <= 1.0 + 1e-5


def test_tiny_clip_prefers_renderings_to_noise(tiny_clip):
    specs = all_specs()[:16]
    clean = render_batch(specs, seed=5)
    noisy = (clean + 0.5 * torch.randn_like(clean)).clamp(0, 1)
    prompts = [s.prompt for s in specs]
    assert tiny_clip(clean, prompts).mean() > tiny_clip(noisy, prompts).mean()


def test_scores_are_unit_cosines(tiny_clip):
    img = render_batch(all_specs()[:2], seed=0)
    e = tiny_clip.embed_images(img)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(2))
    assert F.cosine_similarity(e, tiny_clip.embed_texts(["a", "b"])).shape == (2,)
