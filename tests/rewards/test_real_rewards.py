"""The real reward loaders (hps, clipscore, pickscore, imagereward), each on a tiny random model
that the test saves in the real checkpoint's format, scored against a reference computed
independently (raw open_clip / transformers calls, or by hand from the original keys); plus the
one-line errors for missing and wrong files."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from flowrl.config.errors import CheckpointNotFound, UserFacingError
from flowrl.rewards.clip import CLIP_MEAN, CLIP_STD
from flowrl.rewards.loading import CheckpointFormatError, describe_mismatch, in_batches, resolve_dtype

PROMPTS = ["a red circle on a blue background", "cats", "A photo of a RED cat."]
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def _images(n=3, size=32, seed=0):
    """Images on the uint8 grid (so a PIL / processor round trip is exact)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    return msg


# --- HPS v2.1 and CLIP score: open_clip + a state-dict file ----------------------------------------
@pytest.fixture(scope="module")
def open_clip_ckpt(tmp_path_factory):
    """A random tiny open_clip model saved as HPS_v2.1_compressed.pt is: torch.save({'state_dict': sd})."""
    import open_clip

    d = tmp_path_factory.mktemp("hps")
    arch = d / "tiny-hps-clip.json"
    arch.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(arch)
    torch.manual_seed(1)
    model = open_clip.create_model("tiny-hps-clip", pretrained=None).eval()
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, d / "HPS_v2.1_compressed.pt")
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})  # what the fp16 file holds
    return arch, d / "HPS_v2.1_compressed.pt", model


def _open_clip_cosine(model, images, prompts):
    import open_clip

    x = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fi = model.encode_image(x)
        ft = model.encode_text(open_clip.tokenize(prompts, context_length=12))
    return (fi * ft).sum(-1) / (fi.norm(dim=-1) * ft.norm(dim=-1))


def test_hps_is_the_plain_cosine_batched(open_clip_ckpt):
    from flowrl.rewards.hps import HPSReward

    arch, ckpt, ref = open_clip_ckpt
    images, prompts = _images(5), PROMPTS + ["x", "a blue square"]
    reward = HPSReward(ckpt, arch=arch, device="cpu", batch_size=2)  # 5 rows in chunks of 2, 2, 1
    assert reward.name == "hps" and reward.dtype == torch.float32  # auto on cpu
    scores = reward(images, prompts)
    # HPS v2 reports the cosine itself: no logit-scale factor (the model's scale is exp(2.66) = 14.3).
    torch.testing.assert_close(scores, _open_clip_cosine(ref, images, prompts), atol=1e-5, rtol=1e-5)
    assert scores.abs().max() <= 1


def test_hps_bf16_weights_stay_close(open_clip_ckpt):
    from flowrl.rewards.hps import HPSReward

    arch, ckpt, ref = open_clip_ckpt
    reward = HPSReward(ckpt, arch=arch, device="cpu", dtype="bfloat16")
    assert reward.dtype == torch.bfloat16
    torch.testing.assert_close(reward(_images(), PROMPTS), _open_clip_cosine(ref, _images(), PROMPTS), atol=0.05, rtol=0)


def test_clipscore_formulas(open_clip_ckpt):
    from flowrl.rewards.clipscore import ClipScoreReward

    arch, ckpt, ref = open_clip_ckpt
    images = _images()
    cos = _open_clip_cosine(ref, images, PROMPTS)
    plain = ClipScoreReward(ckpt, arch=arch, device="cpu")
    torch.testing.assert_close(plain(images, PROMPTS), cos, atol=1e-5, rtol=1e-5)
    # Hessel et al.: CLIP-S = 2.5 * max(cos, 0), captions prefixed with "A photo depicts ".
    hessel = ClipScoreReward(ckpt, arch=arch, device="cpu", formula="clipscore", prefix="A photo depicts ")
    expected = 2.5 * _open_clip_cosine(ref, images, [f"A photo depicts {p}" for p in PROMPTS]).clamp(min=0)
    torch.testing.assert_close(hessel(images, PROMPTS), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="formula"):
        ClipScoreReward(ckpt, arch=arch, formula="logits")


def test_open_clip_wrong_files_are_one_line(open_clip_ckpt, tmp_path):
    from flowrl.rewards.hps import HPSReward

    arch, _, _ = open_clip_ckpt
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointFormatError) as e:
        HPSReward(other, arch=arch, device="cpu")
    msg = _one_line(e.value)
    assert str(other) in msg and "missing" in msg and "1 unexpected (e.g. foo.weight)" in msg and "xswu/HPSv2" in msg

    bigger = dict(TINY_OPEN_CLIP, embed_dim=24)  # same layout, other projection size
    (tmp_path / "tiny-hps-clip-24.json").write_text(json.dumps(bigger))
    with pytest.raises(CheckpointFormatError, match="of another shape than open_clip tiny-hps-clip-24") as e:
        HPSReward(open_clip_ckpt[1], arch=tmp_path / "tiny-hps-clip-24.json", device="cpu")
    _one_line(e.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint\n" * 10)
    with pytest.raises(CheckpointFormatError, match="could not be loaded") as e:
        HPSReward(garbage, arch=arch, device="cpu")
    assert isinstance(e.value, UserFacingError)
    _one_line(e.value)


# --- PickScore: a transformers CLIPModel + processor directory ------------------------------------
def _clip_bpe_files(d):
    """A valid CLIP byte-level BPE vocabulary: the 256 byte symbols (with and without </w>), two merges."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in bs] + [chr(256 + i) for i in range(256 - len(bs))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["re", "red</w>"])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    return vocab


@pytest.fixture(scope="module")
def pick_dir(tmp_path_factory):
    """A tiny CLIPModel + CLIPProcessor saved with save_pretrained, the PickScore_v1 layout."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("pickscore")
    vocab = _clip_bpe_files(d)
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    (d / "vocab.json").unlink()
    (d / "merges.txt").unlink()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    text |= {
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(2)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(d)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    processor.save_pretrained(d)
    return d, model, processor


def _pickscore_reference(model, processor, images, prompts):
    """PickScore's published scoring snippet, on PIL images through the processor."""
    from PIL import Image

    pil = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    with torch.no_grad():
        image_inputs = processor(images=pil, return_tensors="pt")
        text_inputs = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = model.get_image_features(**image_inputs)
        txt = model.get_text_features(**text_inputs)
        img, txt = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (img, txt))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (img * txt).sum(-1), image_inputs["pixel_values"]


def test_pickscore_matches_the_original_snippet(pick_dir):
    from flowrl.rewards.pickscore import PickScoreReward

    d, model, processor = pick_dir
    images = _images()
    reward = PickScoreReward(d, device="cpu", batch_size=2)
    expected, _ = _pickscore_reference(model, processor, images, PROMPTS)
    torch.testing.assert_close(reward(images, PROMPTS), expected, atol=1e-4, rtol=1e-5)
    assert model.logit_scale.exp() > 10  # the scale is in the score: PickScore is not a cosine


def test_pickscore_tensor_preprocessing_matches_the_processor(pick_dir):
    # A smooth 48 x 64 image: the processor (resize the short side to 32 bicubic, centre crop,
    # normalise) vs ours on tensors: equal up to resampling differences.
    from flowrl.rewards.pickscore import PickScoreReward

    d, model, processor = pick_dir
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    img = ((torch.stack([xx, yy, (xx + yy) / 2]) * 255).round() / 255).unsqueeze(0)
    reward = PickScoreReward(d, processor=d, device="cpu")
    expected, pixels = _pickscore_reference(model, processor, img, PROMPTS[:1])
    ours = reward.preprocess(img)
    assert ours.shape == pixels.shape == (1, 3, 32, 32)
    assert (ours - pixels).abs().mean() < 0.02
    torch.testing.assert_close(reward(img, PROMPTS[:1]), expected, atol=0.05, rtol=0)


def test_pickscore_missing_and_wrong_dirs(pick_dir, tmp_path):
    from flowrl.rewards.pickscore import PickScoreReward

    d, _, _ = pick_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="no config.json in it") as e:
        PickScoreReward(tmp_path / "empty")
    assert "huggingface.co/yuvalkirstain/PickScore_v1" in _one_line(e.value)
    with pytest.raises(CheckpointNotFound, match="no preprocessor_config.json") as e:
        PickScoreReward(d, processor=tmp_path / "empty")
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in _one_line(e.value)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="'bert' model, PickScore is 'clip'"):
        PickScoreReward(bert)


# --- ImageReward: BLIP ViT + cross-attending BERT + MLP, original key layout ---------------------
IR_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "on", "blue", "background", "photo"]
IR_VOCAB += ["of", "cat", "##s", ",", "."] + list("bdefghijklmnopqrstuvwxyz")
IR_MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 48,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": len(IR_VOCAB) + 2,  # + [DEC], [ENC], as 30522 + 2 = 30524 in the real one
    "encoder_width": 32,
    "add_cross_attention": True,
}
IR_VISION = {"width": 24, "depth": 2, "heads": 2, "patch": 8, "image": 32, "mlp": 40}


def original_imagereward_state_dict(seed=3) -> dict[str, torch.Tensor]:
    """Random weights under ImageReward.pt's key names (BLIP's timm-style ViT, BLIP's med BERT,
    the MLP as an nn.Sequential), including keys the scorer ignores."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    def ln(prefix, n):
        return {f"{prefix}.weight": 1 + rnd(n, std=0.1), f"{prefix}.bias": rnd(n, std=0.1)}

    def lin(prefix, n_in, n_out, std=0.2):
        return {f"{prefix}.weight": rnd(n_out, n_in, std=std), f"{prefix}.bias": rnd(n_out, std=0.05)}

    v, m = IR_VISION, IR_MED
    w, h, n_pos = v["width"], m["hidden_size"], (v["image"] // v["patch"]) ** 2 + 1
    sd = {"blip.visual_encoder.cls_token": rnd(1, 1, w), "blip.visual_encoder.pos_embed": rnd(1, n_pos, w)}
    sd |= {"blip.visual_encoder.patch_embed.proj.weight": rnd(w, 3, v["patch"], v["patch"], std=0.05)}
    sd |= {"blip.visual_encoder.patch_embed.proj.bias": rnd(w)}
    for i in range(v["depth"]):
        b = f"blip.visual_encoder.blocks.{i}"
        sd |= ln(f"{b}.norm1", w) | lin(f"{b}.attn.qkv", w, 3 * w) | lin(f"{b}.attn.proj", w, w)
        sd |= ln(f"{b}.norm2", w) | lin(f"{b}.mlp.fc1", w, v["mlp"]) | lin(f"{b}.mlp.fc2", v["mlp"], w)
    sd |= ln("blip.visual_encoder.norm", w)
    t = "blip.text_encoder"
    sd |= {f"{t}.embeddings.word_embeddings.weight": rnd(m["vocab_size"], h, std=0.5)}
    sd |= {f"{t}.embeddings.position_embeddings.weight": rnd(m["max_position_embeddings"], h, std=0.5)}
    sd |= {f"{t}.embeddings.position_ids": torch.arange(m["max_position_embeddings"]).unsqueeze(0)}
    sd |= ln(f"{t}.embeddings.LayerNorm", h)
    for i in range(m["num_hidden_layers"]):
        lay = f"{t}.encoder.layer.{i}"
        for att, kv_width in (("attention", h), ("crossattention", w)):
            sd |= lin(f"{lay}.{att}.self.query", h, h) | lin(f"{lay}.{att}.self.key", kv_width, h)
            sd |= lin(f"{lay}.{att}.self.value", kv_width, h) | lin(f"{lay}.{att}.output.dense", h, h)
            sd |= ln(f"{lay}.{att}.output.LayerNorm", h)
        sd |= lin(f"{lay}.intermediate.dense", h, m["intermediate_size"]) | lin(f"{lay}.output.dense", m["intermediate_size"], h)
        sd |= ln(f"{lay}.output.LayerNorm", h)
    sd |= lin("blip.vision_proj", w, 16) | lin("blip.text_proj", h, 16)  # BLIP_Pretrain's, unused by the score
    for idx, (n_in, n_out) in zip((0, 2, 4, 6, 7), [(h, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)], strict=True):
        sd |= lin(f"mlp.layers.{idx}", n_in, n_out, std=n_in**-0.5)
    return sd


@pytest.fixture(scope="module")
def ir_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("imagereward")
    sd = original_imagereward_state_dict()
    torch.save(sd, d / "ImageReward.pt")
    (d / "med_config.json").write_text(json.dumps(IR_MED))
    tok = d / "bert-base-uncased"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(IR_VOCAB) + "\n")
    return d / "ImageReward.pt", tok, sd


def _ir_token_ids(prompt: str, vocab=IR_VOCAB, max_length=35) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand tokenization for prompts made of whole vocabulary words (plus 'cats' = cat ##s):
    [CLS] words [SEP], truncated and padded to 35 as ImageReward does."""
    ids = []
    for word in prompt.lower().replace(".", " .").split():
        ids += [vocab.index("cat"), vocab.index("##s")] if word == "cats" else [vocab.index(word)]
    ids = [vocab.index("[CLS]"), *ids[: max_length - 2], vocab.index("[SEP]")]
    mask = [1] * len(ids) + [0] * (max_length - len(ids))
    return torch.tensor(ids + [0] * (max_length - len(ids))), torch.tensor(mask)


def _ir_reference(sd, images, prompts):
    """ImageReward's score computed by hand from the original keys: BLIP ViT (pre-norm blocks,
    LayerNorm eps 1e-6, exact GELU), BERT with cross-attention in every layer (post-norm, eps
    1e-12, BLIP's -10000 padding bias), [CLS] -> linear MLP, (r - mean) / std."""
    v, m = IR_VISION, IR_MED
    b_, w, heads = images.shape[0], v["width"], v["heads"]
    p = "blip.visual_encoder."
    x = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=v["patch"])
    x = torch.cat([sd[p + "cls_token"].expand(b_, 1, w), x.flatten(2).transpose(1, 2)], 1) + sd[p + "pos_embed"]

    def lin(t, k):
        return F.linear(t, sd[k + ".weight"], sd[k + ".bias"])

    def norm(t, k, eps):
        return F.layer_norm(t, t.shape[-1:], sd[k + ".weight"], sd[k + ".bias"], eps)

    def heads_of(t, n):
        return t.view(t.shape[0], t.shape[1], n, -1).transpose(1, 2)

    for i in range(v["depth"]):
        k = f"{p}blocks.{i}."
        q, kk, vv = lin(norm(x, k + "norm1", 1e-6), k + "attn.qkv").chunk(3, dim=-1)
        att = torch.softmax(heads_of(q, heads) @ heads_of(kk, heads).transpose(-1, -2) / (w // heads) ** 0.5, -1)
        x = x + lin((att @ heads_of(vv, heads)).transpose(1, 2).reshape(x.shape), k + "attn.proj")
        x = x + lin(F.gelu(lin(norm(x, k + "norm2", 1e-6), k + "mlp.fc1")), k + "mlp.fc2")
    image_tokens = norm(x, p + "norm", 1e-6)

    ids, mask = map(torch.stack, zip(*[_ir_token_ids(pr) for pr in prompts], strict=True))
    t, nh, eps = "blip.text_encoder.", m["num_attention_heads"], m["layer_norm_eps"]
    e = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    hs = norm(e, t + "embeddings.LayerNorm", eps)
    pad_bias = (1 - mask[:, None, None, :].float()) * -10000.0

    def attention(k, q_in, kv_in, bias):
        q, kk, vv = (heads_of(lin(src, k + f"self.{n}"), nh) for n, src in (("query", q_in), ("key", kv_in), ("value", kv_in)))
        probs = torch.softmax(q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias, -1)
        ctx = (probs @ vv).transpose(1, 2).reshape(q_in.shape)
        return norm(lin(ctx, k + "output.dense") + q_in, k + "output.LayerNorm", eps)

    for i in range(m["num_hidden_layers"]):
        k = f"{t}encoder.layer.{i}."
        hs = attention(k + "attention.", hs, hs, pad_bias)
        hs = attention(k + "crossattention.", hs, image_tokens, 0.0)
        hs = norm(lin(F.gelu(lin(hs, k + "intermediate.dense")), k + "output.dense") + hs, k + "output.LayerNorm", eps)
    r = hs[:, 0]
    for idx in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{idx}")
    return (r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


def test_imagereward_matches_a_hand_written_blip(ir_files):
    from flowrl.rewards.imagereward import ImageRewardModel

    ckpt, tok, sd = ir_files
    long = " ".join(["a red circle on a blue background"] * 8)  # 48 words: truncated to 35 tokens
    prompts = [*PROMPTS, long]
    images = _images(4, seed=4)
    reward = ImageRewardModel(ckpt, tokenizer=tok, vision_heads=IR_VISION["heads"], device="cpu", batch_size=3)
    # the tokenizer: lower-cased WordPiece, [CLS] first, padded / truncated to 35, as by hand
    tokens = reward.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    for row, prompt in enumerate(prompts):
        ids, mask = _ir_token_ids(prompt)
        assert tokens.input_ids[row].tolist() == ids.tolist() and tokens.attention_mask[row].tolist() == mask.tolist()
    scores = reward(images, prompts)
    expected = _ir_reference(sd, images, prompts)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    assert scores.std() > 0.05  # a scorer that ignored its inputs would not pass by luck


def test_imagereward_key_map():
    from flowrl.rewards.imagereward import map_original_key

    assert (
        map_original_key("blip.visual_encoder.blocks.23.attn.proj.weight")
        == "vision.encoder.layers.23.self_attn.projection.weight"
    )
    assert map_original_key("blip.visual_encoder.norm.bias") == "vision.post_layernorm.bias"
    assert map_original_key("blip.visual_encoder.cls_token") == "vision.embeddings.class_embedding"
    assert map_original_key("blip.text_encoder.encoder.layer.11.crossattention.self.key.weight") == (
        "text.encoder.layer.11.crossattention.self.key.weight"
    )
    assert map_original_key("mlp.layers.7.bias") == "mlp.7.bias"
    assert map_original_key("blip.text_proj.weight") is None
    assert map_original_key("blip.text_encoder.embeddings.position_ids") is None


def test_imagereward_wrong_files(ir_files, tmp_path, open_clip_ckpt):
    from flowrl.rewards.imagereward import ImageRewardModel

    ckpt, tok, sd = ir_files
    (tmp_path / "med_config.json").write_text(json.dumps(IR_MED))
    hps_like = tmp_path / "ImageReward.pt"
    hps_like.write_bytes(open_clip_ckpt[1].read_bytes())  # another model's checkpoint under the right name
    with pytest.raises(CheckpointFormatError, match="no BLIP vision encoder") as e:
        ImageRewardModel(hps_like, tokenizer=tok, vision_heads=2, device="cpu")
    assert str(hps_like) in _one_line(e.value) and "THUDM/ImageReward" in str(e.value)

    torch.save({k: v for k, v in sd.items() if k != "mlp.layers.7.weight"}, hps_like)
    with pytest.raises(CheckpointFormatError, match=r"1 of \d+ expected tensors missing \(e.g. mlp.7.weight\)") as e:
        ImageRewardModel(hps_like, tokenizer=tok, vision_heads=2, device="cpu")
    _one_line(e.value)

    (tmp_path / "med_config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointFormatError, match="med_config.json .* not a BERT config") as e:
        ImageRewardModel(ckpt, med_config=tmp_path / "med_config.json", tokenizer=tok, vision_heads=2, device="cpu")
    _one_line(e.value)
    with pytest.raises(CheckpointNotFound, match="bert-base-uncased") as e:
        ImageRewardModel(ckpt, tokenizer=tmp_path / "no-tokenizer", device="cpu")
    _one_line(e.value)


# --- missing files: one line, before any heavy import ---------------------------------------------
def test_missing_checkpoints_fail_fast_before_heavy_imports(tmp_path):
    nope = tmp_path / "nope"
    code = f"""
import importlib, sys, time
import flowrl.rewards  # the package (torch, via RewardModel) outside the timed span
from flowrl.config.errors import CheckpointNotFound
cases = [  # each class imported inside the timed span, as Hydra's instantiate of reward/<name>.yaml does
    ("flowrl.rewards.hps:HPSReward", dict(checkpoint={str(nope / "HPS_v2.1_compressed.pt")!r})),
    ("flowrl.rewards.clipscore:ClipScoreReward", dict(checkpoint={str(nope / "open_clip_pytorch_model.bin")!r})),
    ("flowrl.rewards.pickscore:PickScoreReward", dict(checkpoint={str(nope / "PickScore_v1")!r})),
    ("flowrl.rewards.imagereward:ImageRewardModel", dict(checkpoint={str(nope / "ImageReward.pt")!r}, tokenizer={str(nope)!r})),
    ("flowrl.rewards.hps:HPSReward", dict(checkpoint=None)),
]
for target, kwargs in cases:
    t = time.perf_counter()
    module, name = target.split(":")
    try:
        getattr(importlib.import_module(module), name)(**kwargs)
    except CheckpointNotFound as e:
        print(f"{{time.perf_counter() - t:.3f}} {{e}}")
print([m for m in ("open_clip", "transformers") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    *lines, heavy = out.stdout.strip().splitlines()
    assert heavy == "[]", "open_clip / transformers imported before the checkpoint check"
    assert len(lines) == 5
    expected = [
        ("HPS_v2.1_compressed.pt", "huggingface.co/xswu/HPSv2"),
        ("open_clip_pytorch_model.bin", "huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
        ("PickScore_v1", "huggingface.co/yuvalkirstain/PickScore_v1"),
        ("ImageReward.pt", "huggingface.co/THUDM/ImageReward"),
        ("<not set>", "huggingface.co/xswu/HPSv2"),
    ]
    for line, (file, where) in zip(lines, expected, strict=True):
        seconds, msg = line.split(" ", 1)
        assert float(seconds) < 0.5, line
        assert "checkpoint not found" in msg and file in msg and where in msg, msg


# --- shared helpers ---------------------------------------------------------------------------------
def test_dtype_device_batching_helpers():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    calls = []

    def fn(images, prompts):
        calls.append(len(prompts))
        return images.flatten(1).sum(1)

    x = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 1, 1)
    torch.testing.assert_close(in_batches(fn, x, list("abcde"), 2), x.flatten(1).sum(1))
    assert calls == [2, 2, 1]
    assert describe_mismatch({"a": (2,), "b": (3,)}, {"a": torch.zeros(2), "b": torch.zeros(3)}) is None
    msg = describe_mismatch({"a": (2,), "b": (3,)}, {"a": torch.zeros(4), "c": torch.zeros(1)})
    assert (
        msg
        == "1 of 2 expected tensors missing (e.g. b); 1 unexpected (e.g. c); 1 of another shape (e.g. a: [4] in the file, [2] expected)"
    )


def test_scorers_stay_in_eval_mode(ir_files):
    # A parent module's .train() must not switch on BLIP's dropout: scores stay deterministic.
    from flowrl.rewards.imagereward import ImageRewardModel

    ckpt, tok, _ = ir_files
    reward = ImageRewardModel(ckpt, tokenizer=tok, vision_heads=IR_VISION["heads"], device="cpu")
    images = _images(2)
    first = reward(images, PROMPTS[:2])
    reward.train()
    torch.testing.assert_close(reward(images, PROMPTS[:2]), first)
    assert not reward.training and not reward.text.training


def test_bf16_vs_fp32_deviation_of_every_real_reward(open_clip_ckpt, pick_dir, ir_files, capsys):
    # What bf16 costs each reward model on a tiny random checkpoint in the published layout (the
    # README's table: `pytest -s -k bf16_vs_fp32`). The held-out evaluation rewards are fp32 by
    # default (conf/eval_rewards/real.yaml); the trained reward may run bf16 (dtype auto on CUDA).
    from flowrl.rewards.clipscore import ClipScoreReward
    from flowrl.rewards.hps import HPSReward
    from flowrl.rewards.imagereward import ImageRewardModel
    from flowrl.rewards.pickscore import PickScoreReward

    arch, ckpt, _ = open_clip_ckpt
    ir_ckpt, ir_tok, _ = ir_files
    builders = {
        "hps": lambda dt: HPSReward(ckpt, arch=arch, device="cpu", dtype=dt),
        "clipscore": lambda dt: ClipScoreReward(ckpt, arch=arch, device="cpu", dtype=dt),
        "pickscore": lambda dt: PickScoreReward(pick_dir[0], device="cpu", dtype=dt),
        "imagereward": lambda dt: ImageRewardModel(
            ir_ckpt, tokenizer=ir_tok, vision_heads=IR_VISION["heads"], device="cpu", dtype=dt
        ),
    }
    images, prompts = _images(8, seed=5), [PROMPTS[i % len(PROMPTS)] for i in range(8)]
    lines = []
    for name, build in builders.items():
        fp32, bf16 = build("float32")(images, prompts), build("bfloat16")(images, prompts)
        dev = (bf16 - fp32).abs()
        rel = (dev / fp32.abs().clamp_min(1e-6)).max().item()
        lines.append(
            f"{name}: max |bf16 - fp32| {dev.max().item():.4f}, max relative {100 * rel:.1f}%, fp32 range [{fp32.min().item():.3f}, {fp32.max().item():.3f}]"
        )
        assert dev.max().item() < 0.1 * max(1.0, fp32.abs().max().item()), lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
