"""The real backends (FLUX.1, SD3.5) on tiny RANDOM pipelines built from the real component
classes and saved by the test (no hub, no weights): loading, conventions checked against the
diffusers pipelines themselves, the prompt-embedding cache, LoRA, configs, errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowrl.config.errors import CheckpointNotFound
from flowrl.sampling.ode import generate

HW = 32  # image side: tiny VAE (scale factor 2) -> 16x16 latents -> 64 packed tokens
MSL = 16  # T5 max_sequence_length
PROMPTS = ["a red circle on a blue background", "a photo of a cat"]
WORDS = "a red green blue white circle square triangle on background photo of cat dog".split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# --- tiny pipelines, built once per module -------------------------------------------------------
def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS:  # character-level BPE without merges: enough to tokenize any lower-case prompt
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    pieces += [(c, -5.0) for c in LETTERS] + [("\u2581", -3.0)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def _clip_config(tok, hidden=16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=len(tok),
        max_position_embeddings=77,
        projection_dim=hidden,
    )


def _t5(tok):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8)
    return T5EncoderModel(cfg)


def _vae(scaling, shift):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=HW,
        scaling_factor=scaling,
        shift_factor=shift,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Fixed shift 3 (flowrl's flow_sigmas): the pipeline then walks exactly our sigma grid.
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)


def build_flux(out: Path) -> Path:
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tok, tok2 = _clip_tokenizer(), _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    pipe = FluxPipeline(
        scheduler=_scheduler(),
        vae=_vae(0.3611, 0.1159),  # FLUX.1 VAE factors
        text_encoder=CLIPTextModel(_clip_config(tok)),
        tokenizer=tok,
        text_encoder_2=_t5(tok2),
        tokenizer_2=tok2,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    return out


def build_sd3(out: Path) -> Path:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(1)
    tok, tok2, tok3 = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=HW // 2,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=16,
        dual_attention_layers=(0,),  # SD3.5-Medium: MMDiT-X blocks, RMS qk-norm
        qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_scheduler(),
        vae=_vae(1.5305, 0.0609),  # SD3.5 VAE factors
        text_encoder=CLIPTextModelWithProjection(_clip_config(tok)),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok2)),
        tokenizer_2=tok2,
        text_encoder_3=_t5(tok3),
        tokenizer_3=tok3,
    )
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("models") / "FLUX.1-dev")


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_sd3(tmp_path_factory.mktemp("models") / "stable-diffusion-3.5-medium")


def _load(kind, path, **kw):
    from flowrl.models.flux import load_flux
    from flowrl.models.sd3 import load_sd3

    opts = dict(device="cpu", dtype="float32", height=HW, width=HW, max_sequence_length=MSL) | kw
    return (load_flux if kind == "flux" else load_sd3)(str(path), **opts)


@pytest.fixture(scope="module")
def flux(flux_dir):
    return _load("flux", flux_dir).eval()


@pytest.fixture(scope="module")
def sd3(sd3_dir):
    return _load("sd3", sd3_dir).eval()


def _pipe(kind, path):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    pipe = (FluxPipeline if kind == "flux" else StableDiffusion3Pipeline).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_velocity(kind, pipe, x, sigma, guidance_scale):
    """The transformer called exactly as the diffusers pipeline calls it, on packed x."""
    from flowrl.models.diffusers_base import pack_latents, unpack_latents

    b = x.shape[0]
    t = sigma * 1000  # the scheduler's timesteps
    if kind == "flux":
        pe, pooled, text_ids = pipe.encode_prompt(PROMPTS, prompt_2=None, max_sequence_length=MSL)
        img_ids = pipe._prepare_latent_image_ids(b, HW // 4, HW // 4, x.device, x.dtype)
        guidance = torch.full([b], guidance_scale, dtype=torch.float32)
        return pipe.transformer(
            hidden_states=x,
            timestep=t / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=pe,
            txt_ids=text_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
    pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=True, max_sequence_length=MSL)
    lat = unpack_latents(x, HW // 2, HW // 2)
    out = pipe.transformer(
        hidden_states=torch.cat([lat, lat]),
        timestep=torch.cat([t, t]),
        encoder_hidden_states=torch.cat([npe, pe]),
        pooled_projections=torch.cat([npooled, pooled]),
        return_dict=False,
    )[0]
    uncond, cond = out.chunk(2)
    return pack_latents(uncond + guidance_scale * (cond - uncond))


# --- errors: before any heavy import ------------------------------------------------------------
def test_missing_path_is_one_line_and_fast(tmp_path):
    code = (
        "import sys, time; t = time.time()\n"
        "from flowrl.config.errors import CheckpointNotFound\n"
        "from flowrl.models.flux import load_flux\n"
        "from flowrl.models.sd3 import load_sd3\n"
        "for f in (load_flux, load_sd3):\n"
        "    try:\n"
        f"        f({str(tmp_path / 'nope')!r})\n"
        "    except CheckpointNotFound as e:\n"
        "        print(e)\n"
        "assert 'diffusers' not in sys.modules, 'diffusers imported before the path check'\n"
        "print(round(time.time() - t, 2))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    flux_line, sd3_line, seconds = out.stdout.strip().splitlines()
    assert "FLUX.1-dev checkpoint not found" in flux_line and "huggingface.co/black-forest-labs/FLUX.1-dev" in flux_line
    assert str(tmp_path / "nope") in flux_line
    assert "huggingface.co/stabilityai/stable-diffusion-3.5-medium" in sd3_line
    assert float(seconds) < 10


def test_wrong_directories(tmp_path, flux_dir, sd3_dir):
    from flowrl.models.flux import load_flux
    from flowrl.models.sd3 import load_sd3

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound, match="no model_index.json"):
        load_flux(str(tmp_path / "empty"))
    with pytest.raises(CheckpointNotFound, match="StableDiffusion3Pipeline, expected a FluxPipeline"):
        load_flux(str(sd3_dir))
    with pytest.raises(CheckpointNotFound, match="FluxPipeline, expected a StableDiffusion3Pipeline"):
        load_sd3(str(flux_dir))
    with pytest.raises(CheckpointNotFound, match="<not set>"):
        load_flux(None)


# --- conventions, checked against diffusers ----------------------------------------------------
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_shapes(kind, request):
    model = request.getfixturevalue(kind)
    e = model.encode_prompts(PROMPTS)
    text_len = MSL if kind == "flux" else 77 + MSL
    assert e.prompt_embeds.shape == (2, text_len, 32)
    assert e.pooled_prompt_embeds.shape == (2, 16 if kind == "flux" else 32)
    assert model.latent_shape == (64, 16)
    x = model.initial_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = model.velocity(x, torch.tensor([0.9, 0.2]), e)
        v_scalar = model.velocity(x, 0.9, e)
        images = model.decode(x)
    assert v.shape == x.shape and v.dtype == x.dtype
    torch.testing.assert_close(v_scalar[0], v[0])
    assert images.shape == (2, 3, HW, HW) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("kind,guidance", [("flux", 3.5), ("sd3", 4.5)])
def test_velocity_equals_the_pipelines_transformer_call(kind, guidance, request):
    model = request.getfixturevalue(kind)
    pipe = _pipe(kind, request.getfixturevalue(f"{kind}_dir"))
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.8, 0.35])
    with torch.no_grad():
        expected = _pipeline_velocity(kind, pipe, x, sigma, guidance)
        v = model.velocity(x, sigma, model.encode_prompts(PROMPTS))
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,guidance", [("flux", 3.5), ("sd3", 4.5)])
def test_ode_sample_matches_the_diffusers_pipeline(kind, guidance, request):
    """flowrl's Euler ODE + decode == the pipeline's own loop + VAE decode, same initial noise."""
    from flowrl.models.diffusers_base import unpack_latents

    model = request.getfixturevalue(kind)
    pipe = _pipe(kind, request.getfixturevalue(f"{kind}_dir"))
    ours = generate(model, PROMPTS, num_steps=4, shift=3.0, seed=5)
    noise = torch.randn((len(PROMPTS), *model.latent_shape), generator=torch.Generator().manual_seed(5))  # as generate
    latents = noise if kind == "flux" else unpack_latents(noise, HW // 2, HW // 2)
    with torch.no_grad():
        theirs = pipe(
            PROMPTS,
            height=HW,
            width=HW,
            num_inference_steps=4,
            sigmas=[1.0, 0.75, 0.5, 0.25],  # unshifted grid, as flow_sigmas (SD3's default grid differs)
            guidance_scale=guidance,
            latents=latents,
            max_sequence_length=MSL,
            output_type="pt",
        ).images
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)


def test_sd3_without_cfg_is_one_row_per_sample(sd3_dir):
    model = _load("sd3", sd3_dir, guidance_scale=1.0).eval()
    calls = []
    model.transformer.register_forward_hook(lambda m, a, kw, out: calls.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    with torch.no_grad():
        model.velocity(model.initial_noise(2), 0.5, model.encode_prompts(PROMPTS))
    assert calls == [2]


# --- prompt-embedding cache ---------------------------------------------------------------------
def test_text_cache_writes_safetensors_and_hits(flux_dir, tmp_path):
    model = _load("flux", flux_dir, cache_dir=str(tmp_path / "embeds"), text_encoders_offload="delete")
    first = model.encode_prompts(PROMPTS + PROMPTS[:1])  # a repeated prompt is encoded once
    files = sorted((tmp_path / "embeds").rglob("*.safetensors"))
    assert len(files) == 2 and files[0].parent.parent.name.startswith("FLUX.1-dev-")
    enc = model.prompt_encoder
    assert enc.loads == 1 and enc.encoded == 2 and enc.encoders is None  # freed after the fill
    # A second encode and a fresh model on the same cache never touch the encoders.
    fresh = _load("flux", flux_dir, cache_dir=str(tmp_path / "embeds"))
    for m in (model, fresh):
        m.prompt_encoder._load = m.prompt_encoder._encode = None  # calling either would raise
        again = m.encode_prompts(PROMPTS[::-1])
        torch.testing.assert_close(again.prompt_embeds, first.prompt_embeds[[1, 0]])
        torch.testing.assert_close(again.pooled_prompt_embeds, first.pooled_prompt_embeds[[1, 0]])
    assert fresh.prompt_encoder.loads == 0 and fresh.prompt_encoder.hits == 2


def test_text_cache_miss_reloads_and_precompute(flux_dir, tmp_path):
    model = _load("flux", flux_dir, cache_dir=str(tmp_path), text_encoders_offload="delete")
    assert model.precompute_prompts(PROMPTS) == 2 and model.precompute_prompts(PROMPTS) == 0
    model.encode_prompts(["a dog"])  # a miss after the encoders were freed: re-loaded lazily
    assert model.prompt_encoder.loads == 2 and model.prompt_encoder.encoders is None
    with pytest.raises(ValueError, match="text_encoders_offload"):
        _load("flux", flux_dir, text_encoders_offload="gpu")


# --- LoRA ---------------------------------------------------------------------------------------
def _randomize_lora(model, seed=0):
    from flowrl.models.lora import lora_parameters

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model.transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_lora_save_loads_in_the_pipeline_and_reference_is_base(kind, request, tmp_path):
    path = request.getfixturevalue(f"{kind}_dir")
    base = request.getfixturevalue(kind)
    model = _load(kind, path, lora={"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}).eval()
    assert model.has_adapter and not base.has_adapter
    params = model.trainable_parameters()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names) and len(params) == len(names)
    assert all(p.dtype == torch.float32 for p in params)

    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    e = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        v_base = base.velocity(x, 0.6, e)
        torch.testing.assert_close(model.velocity(x, 0.6, e), v_base)  # B = 0 at init: starts at the base
        _randomize_lora(model)
        v_lora = model.velocity(x, 0.6, e)
        assert not torch.allclose(v_lora, v_base, atol=1e-4)
        with model.reference_policy() as disabled:
            v_ref = model.velocity(x, 0.6, e)
        torch.testing.assert_close(v_ref, v_base)
        torch.testing.assert_close(model.velocity(x, 0.6, e), v_lora)  # adapter back on
    assert disabled is True

    model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "lora" / "transformer").exists()
    pipe = _pipe(kind, path)
    pipe.load_lora_weights(tmp_path / "lora")
    guidance = 3.5 if kind == "flux" else 4.5
    with torch.no_grad():
        torch.testing.assert_close(
            _pipeline_velocity(kind, pipe, x, torch.full((2,), 0.6), guidance), v_lora, atol=1e-5, rtol=1e-5
        )
    # ... and flowrl continues from it (lora_weights=)
    resumed = _load(kind, path, lora_weights=str(tmp_path / "lora")).eval()
    with torch.no_grad():
        torch.testing.assert_close(resumed.velocity(x, 0.6, e), v_lora)
    assert len(resumed.trainable_parameters()) == len(params)


def test_full_finetune_options_and_gradients(flux_dir, tmp_path):
    model = _load("flux", flux_dir, gradient_checkpointing=True)
    assert model.transformer.is_gradient_checkpointing and not model.has_adapter
    assert len(model.trainable_parameters()) == len(list(model.transformer.parameters()))
    with model.reference_policy() as disabled:
        assert disabled is False  # no adapter: the trainer keeps a frozen copy instead
    model.requires_grad_(False)
    for p in model.trainable_parameters():  # how the trainer is meant to use it
        p.requires_grad_(True)
    model.train()
    x = model.initial_noise(2)
    model.velocity(x, 0.5, model.encode_prompts(PROMPTS)).square().mean().backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is None for p in model.vae.parameters())
    model.save_pretrained(tmp_path / "full")
    assert (tmp_path / "full" / "transformer" / "config.json").is_file()


def test_lora_gradients_reach_only_the_adapter(sd3_dir):
    model = _load("sd3", sd3_dir, lora={"rank": 2, "alpha": 4}, gradient_checkpointing=True).train()
    _randomize_lora(model)
    model.velocity(model.initial_noise(2), 0.5, model.encode_prompts(PROMPTS)).square().mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_bf16_weights_return_the_latent_dtype(flux_dir, flux):
    model = _load("flux", flux_dir, dtype="bfloat16").eval()
    assert model.transformer.dtype == torch.bfloat16
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v16 = model.velocity(x, 0.5, model.encode_prompts(PROMPTS))
        v32 = flux.velocity(x, 0.5, flux.encode_prompts(PROMPTS))
    assert v16.dtype == torch.float32
    assert (v16 - v32).abs().max() < 0.1 * v32.abs().max()


# --- Hydra configs --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,config", [("flux", "flux_dev"), ("sd3", "sd35_medium")])
def test_hydra_config_instantiates(make_cfg, kind, config, request, tmp_path):
    from hydra.utils import instantiate

    from flowrl.models.flux import FluxModel
    from flowrl.models.sd3 import SD3Model

    path = request.getfixturevalue(f"{kind}_dir")
    overrides = [f"model={config}", f"model.path={path}", "model.device=cpu", "model.dtype=float32"]
    overrides += [f"model.height={HW}", f"model.width={HW}", f"model.max_sequence_length={MSL}", "model.lora.rank=2"]
    overrides += [f"paths.cache_dir={tmp_path}"]
    cfg = make_cfg(*overrides)
    assert cfg.train.lr_scale == 1.0 and cfg.train.max_batch > 0
    model = instantiate(cfg.model)
    assert isinstance(model, FluxModel if kind == "flux" else SD3Model) and model.has_adapter
    model.encode_prompts(PROMPTS[:1])
    assert list(tmp_path.rglob("*.safetensors"))  # cache_dir defaults under paths.cache_dir


def test_hydra_config_missing_path_names_the_directory(make_cfg, tmp_path, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("FLOWRL_MODELS", str(tmp_path))
    cfg = make_cfg("model=flux_dev")
    with pytest.raises(Exception, match="FLUX.1-dev checkpoint not found") as info:
        instantiate(cfg.model)
    assert str(tmp_path / "FLUX.1-dev") in str(info.value)


@pytest.mark.slow
def test_compiled_transformer_matches_eager_and_saves(flux_dir, flux, tmp_path):
    # ~40 s on 2 CPU cores (inductor C++ compile); on a GPU it is the point of model.compile.
    model = _load("flux", flux_dir, compile=True, lora={"rank": 2, "alpha": 4}).eval()
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(4))
    e = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(model.velocity(x, 0.5, e), flux.velocity(x, 0.5, e), atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path)  # compiled in place: same state-dict keys, same LoRA file
    resumed = _load("flux", flux_dir, lora_weights=str(tmp_path)).eval()
    assert len(resumed.trainable_parameters()) == len(model.trainable_parameters())


# --- Flow-GRPO's SD3.5 settings (yifan123/flow_grpo scripts/train_sd3.py@ac4c86e) -------------------
def _sd35_yaml_model(make_cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(make_cfg("model=sd35_medium").model, resolve=True)


def test_sd35_lora_adapts_flow_grpos_8_modules_with_gaussian_init(sd3_dir, make_cfg):
    # train_sd3.py's LoraConfig: r 32, alpha 64, init "gaussian", targets attn.{to_q, to_k, to_v,
    # to_out.0, add_q_proj, add_k_proj, add_v_proj, to_add_out}. The tiny SD3 has 2 joint blocks, the
    # first an MMDiT-X block (dual attention: an image-only attn2) and the last context_pre_only (its
    # attn has add_*_proj but no to_add_out): 8 + 7 = 15 adapted modules, none in attn2.
    # (SD3.5-Medium, 24 blocks, the last context_pre_only: 23 * 8 + 7 = 191.)
    opts = _sd35_yaml_model(make_cfg)
    assert opts["lora"]["init"] == "gaussian" and (opts["lora"]["rank"], opts["lora"]["alpha"]) == (32, 64)
    model = _load("sd3", sd3_dir, lora=opts["lora"]).eval()
    adapted = sorted(
        n.removesuffix(".lora_A.default") for n, _ in model.transformer.named_modules() if n.endswith(".lora_A.default")
    )
    assert len(adapted) == 15, adapted
    suffixes = {n.split(".attn.")[-1] for n in adapted}
    assert suffixes == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    assert all(".attn." in n and ".attn2." not in n for n in adapted)
    assert sum(n.endswith("to_add_out") for n in adapted) == 1  # the last block has none
    # gaussian init: B = 0, so the adapted model starts at the base model (ratio 1 at the first step)
    b = [p for n, p in model.transformer.named_parameters() if ".lora_B." in n]
    assert b and all(torch.count_nonzero(p) == 0 for p in b)


@pytest.mark.parametrize("detach", [True, False])
def test_sd3_cfg_detach_uncond_switch(sd3_dir, make_cfg, detach):
    # train_sd3.py@ac4c86e compute_log_prob: v = v_u.detach() + s (v_c - v_u.detach()), so the
    # gradient of sum(v) is s * d sum(v_c); without the detach (fc412d2) it is s * d v_c + (1 - s) * d v_u.
    # The default (model=sd35_medium) is the detach; values are the same either way.
    assert _sd35_yaml_model(make_cfg)["cfg_detach_uncond"] is True
    s = 4.5
    lora = {"rank": 2, "alpha": 4}
    x = torch.randn(2, *_load("sd3", sd3_dir).latent_shape, generator=torch.Generator().manual_seed(3))

    def grads(guidance, prompts, detach_uncond):
        model = _load("sd3", sd3_dir, lora=lora, guidance_scale=guidance, cfg_detach_uncond=detach_uncond).train()
        _randomize_lora(model)
        v = model.velocity(x, 0.5, model.encode_prompts(prompts))
        v.sum().backward()
        return v.detach(), torch.cat([p.grad.flatten() for p in model.trainable_parameters()])

    v_cfg, g_cfg = grads(s, PROMPTS, detach)
    _, g_cond = grads(1.0, PROMPTS, detach)  # no CFG: the conditional branch alone
    _, g_uncond = grads(1.0, ["", ""], detach)  # the empty prompt: the unconditional branch alone
    expected = s * g_cond if detach else s * g_cond + (1 - s) * g_uncond
    torch.testing.assert_close(g_cfg, expected, atol=1e-4, rtol=1e-3)
    v_other, _ = grads(s, PROMPTS, not detach)
    torch.testing.assert_close(v_cfg, v_other)  # the switch moves no value


def test_flux_integer_timesteps_as_the_flux_scripts(flux_dir, make_cfg):
    # DanceGRPO fastvideo/train_grpo_flux.py@15cc71d: timestep_value = int(sigma * 1000), passed as
    # timesteps / 1000 (MixGRPO's and E-GRPO's flux_sampler.py alike); model=flux_dev turns it on.
    assert make_cfg("model=flux_dev").model.integer_timesteps is True
    on = _load("flux", flux_dir, integer_timesteps=True).eval()
    off = _load("flux", flux_dir).eval()
    x = torch.randn(2, *on.latent_shape, generator=torch.Generator().manual_seed(4))
    e = on.encode_prompts(PROMPTS)
    sigma = 45 / 46  # shift(15/16) = 0.97826 -> int(978.26) / 1000 = 0.978
    with torch.no_grad():
        torch.testing.assert_close(on.velocity(x, sigma, e), off.velocity(x, 0.978, e))
        assert not torch.allclose(off.velocity(x, sigma, e), off.velocity(x, 0.978, e))
