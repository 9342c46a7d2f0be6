import pytest
import torch

from flowrl.data.shapes import all_specs, render_batch
from flowrl.models.base import PromptEmbeds
from flowrl.models.tiny_flux import TinyFluxConfig, TinyFluxModel, pack_images, unpack_images
from flowrl.sampling.ode import generate

SMALL = TinyFluxConfig(
    num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=16
)


def test_pack_unpack_roundtrip():
    images = torch.rand(2, 3, 32, 32)
    tokens = pack_images(images, 4)
    assert tokens.shape == (2, 64, 48)
    # token 1 is the patch at row 0, columns 4..7; channel-major inside the token.
    torch.testing.assert_close(tokens[0, 1].view(3, 4, 4), images[0, :, 0:4, 4:8])
    torch.testing.assert_close(unpack_images(tokens, 4, 32), images)


def test_encode_decode_inverse():
    m = TinyFluxModel(SMALL)
    images = render_batch(all_specs()[:2], seed=0)
    x0 = m.encode_images(images)
    assert x0.min() >= -1 and x0.max() <= 1
    torch.testing.assert_close(m.decode(x0), images)


def test_velocity_shapes_and_sigma_forms():
    m = TinyFluxModel(SMALL).eval()
    x = m.initial_noise(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, *m.latent_shape) == (3, 64, 48)
    e = m.encode_prompts(["a red circle on a blue background", "a", "unknown words here"])
    with torch.no_grad():
        v1 = m.velocity(x, 0.5, e)
        v2 = m.velocity(x, torch.full((3,), 0.5), e)
    assert v1.shape == x.shape
    torch.testing.assert_close(v1, v2)


def test_prompt_embeds_helpers():
    e = PromptEmbeds(torch.arange(6.0).view(2, 3, 1), torch.arange(2.0).view(2, 1))
    r = e.repeat_interleave(2)
    assert len(r) == 4 and r.pooled_prompt_embeds.flatten().tolist() == [0, 0, 1, 1]
    assert len(e[1]) == 1 and len(PromptEmbeds.cat([e, e])) == 4


def test_save_load_roundtrip(tmp_path):
    m = TinyFluxModel(SMALL).eval()
    m.save_pretrained(tmp_path)
    n = TinyFluxModel.from_pretrained(tmp_path)
    x = torch.randn(2, *m.latent_shape)
    e_prompts = ["a red circle on a blue background"] * 2
    with torch.no_grad():
        torch.testing.assert_close(
            m.velocity(x, 0.3, m.encode_prompts(e_prompts)), n.velocity(x, 0.3, n.encode_prompts(e_prompts))
        )


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="flowrl.pretrain"):
        TinyFluxModel.from_pretrained(tmp_path / "nothing")


def test_bad_config():
    with pytest.raises(ValueError, match="axes_dims_rope"):
        TinyFluxModel(TinyFluxConfig(axes_dims_rope=(8, 8, 8)))


@pytest.mark.parametrize("world", ["geneval", "shapes"])
def test_fp32_attention_processor_is_diffusers_flux_processor_in_fp32(world):
    # Fp32AttentionProcessor is an accepted copy of diffusers' FluxAttnProcessor whose only change is
    # SDPA in fp32 outside autocast: in fp32 the two must agree bit for bit (a diffusers upgrade that
    # changes the stock processor fails here), and under bf16 autocast it must differ only by bf16
    # rounding (its attention is the more precise one).
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    from flowrl.models.tiny_flux import Fp32AttentionProcessor, load_tiny_flux

    model = load_tiny_flux(world=world)
    assert {type(p) for p in model.transformer.attn_processors.values()} == {Fp32AttentionProcessor}
    assert {type(p) for p in TinyFluxModel().transformer.attn_processors.values()} == {Fp32AttentionProcessor}
    # model.attention=autocast: the stock processor, how the runs before it were made
    stock = load_tiny_flux(world=world, attention="autocast").transformer.attn_processors.values()
    assert {type(p) for p in stock} == {FluxAttnProcessor}
    with pytest.raises(ValueError, match="attention must be one of"):
        load_tiny_flux(world=world, attention="bf16")
    torch.manual_seed(0)
    x = torch.randn(5, *model.latent_shape)
    with torch.no_grad():
        embeds = model.encode_prompts(["a red square", "two blue bars", "a", "", "a red square left of a bar"])
        outs = {}
        for precision in ("fp32", "bf16-autocast"):
            model.precision = precision
            for proc in (FluxAttnProcessor, Fp32AttentionProcessor):
                model.transformer.set_attn_processor(proc())
                outs[precision, proc] = model.velocity(x, torch.tensor([0.9, 0.7, 0.5, 0.3, 0.1]), embeds)
    assert torch.equal(outs["fp32", FluxAttnProcessor], outs["fp32", Fp32AttentionProcessor])
    fp32 = outs["fp32", FluxAttnProcessor]
    for proc in (FluxAttnProcessor, Fp32AttentionProcessor):
        assert not torch.equal(outs["bf16-autocast", proc], fp32)
        torch.testing.assert_close(outs["bf16-autocast", proc], fp32, atol=0.1, rtol=0.05)


def test_shipped_model_generates_deterministically(tiny_model):
    prompts = ["a red circle on a blue background", "a white square on a green background"]
    a = generate(tiny_model, prompts, num_steps=4, seed=7)
    b = generate(tiny_model, prompts, num_steps=4, seed=7, batch_size=1)  # batching must not matter
    assert a.shape == (2, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shipped_model_follows_prompts_but_imperfectly(tiny_model):
    # The shipped model must have learned the task (far above an untrained model's ~0.2) but
    # leave RL headroom (well below 1). Held-out prompts, T 16, 2 samples each.
    from flowrl.data.shapes import split_specs
    from flowrl.rewards.shapes import ShapesReward

    prompts = [s.prompt for s in split_specs("heldout") for _ in range(2)]
    score = ShapesReward()(generate(tiny_model, prompts, num_steps=16, seed=0), prompts).mean().item()
    assert 0.4 < score < 0.95


# --- LoRA on the tiny model (same flowrl.models.lora code as the real backends) -----------------
def test_tiny_lora_trains_only_the_adapter_and_saves_diffusers_format(tmp_path, tiny_model):
    from omegaconf import OmegaConf

    from flowrl.models.lora import LORA_WEIGHT_NAME, lora_parameters
    from flowrl.models.tiny_flux import WEIGHTS_DIR, load_tiny_flux

    lora = OmegaConf.create({"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]})
    m = load_tiny_flux(lora=lora).eval()  # a Hydra node, as instantiate passes it
    assert m.has_adapter and not tiny_model.has_adapter
    trainable = {n for n, p in m.named_parameters() if p.requires_grad and not n.startswith("text_encoder.")}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(m.trainable_parameters()) == len(trainable)
    assert len(tiny_model.trainable_parameters()) == len(list(tiny_model.transformer.parameters()))

    x = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(0))
    e = m.encode_prompts(["a red circle on a blue background"] * 2)
    with torch.no_grad():
        v_base = tiny_model.velocity(x, 0.4, e)
        torch.testing.assert_close(m.velocity(x, 0.4, e), v_base)  # B = 0 at init
        for i, p in enumerate(lora_parameters(m.transformer)):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.1)
        v_lora = m.velocity(x, 0.4, e)
        with m.reference_policy() as disabled:
            torch.testing.assert_close(m.velocity(x, 0.4, e), v_base)
    assert disabled and not torch.allclose(v_lora, v_base, atol=1e-4)

    m.save_pretrained(tmp_path)
    assert (tmp_path / LORA_WEIGHT_NAME).is_file() and not (tmp_path / "transformer").exists()
    back = TinyFluxModel.from_pretrained(tmp_path)  # base (the shipped weights) + adapter
    # diffusers itself loads the file onto the base transformer
    from diffusers import FluxTransformer2DModel

    plain = FluxTransformer2DModel.from_pretrained(WEIGHTS_DIR / "transformer")
    plain.load_lora_adapter(str(tmp_path), prefix="transformer", weight_name=LORA_WEIGHT_NAME)
    with torch.no_grad():
        torch.testing.assert_close(back.velocity(x, 0.4, e), v_lora)
        ref = plain(
            hidden_states=x,
            encoder_hidden_states=e.prompt_embeds,
            pooled_projections=e.pooled_prompt_embeds,
            timestep=torch.full((2,), 0.4),
            img_ids=m.img_ids,
            txt_ids=m.txt_ids,
            return_dict=False,
        )[0]
    torch.testing.assert_close(ref, v_lora)
    assert back.has_adapter and len(back.trainable_parameters()) == len(trainable)


def test_tiny_lora_rejects_unknown_keys():
    from flowrl.models.tiny_flux import load_tiny_flux

    with pytest.raises(ValueError, match="unknown model.lora keys"):
        load_tiny_flux(lora={"rank": 4, "alpah": 8})
