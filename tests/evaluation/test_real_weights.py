"""What `checkpoint=` loads onto a real backend (a tiny random FLUX pipeline in the diffusers layout):
a LoRA directory, a LoRA file of any name, a full fine-tune's transformer/, each giving the saved
model's velocity; and the protocol's resolution and guidance applied to a trained model in place
(eval_protocol=) and restored after."""

import shutil

import pytest
import torch

from tests.models.test_real_models import HW, MSL, PROMPTS, _load, _randomize_lora, build_flux


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_flux(tmp_path_factory.mktemp("models") / "FLUX.1-dev")


def _model_cfg(make_cfg, flux_dir):
    return make_cfg(
        "model=flux_dev",
        f"model.path={flux_dir}",
        "model.device=cpu",
        "model.dtype=float32",
        f"model.height={HW}",
        f"model.width={HW}",
        f"model.max_sequence_length={MSL}",
        "model.cache_dir=null",
        "model.gradient_checkpointing=false",
        config_name="evaluate",
    ).model


def _velocity(model, seed=1):
    x = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.velocity(x, 0.6, model.encode_prompts(PROMPTS))


def test_lora_dir_lora_file_and_transformer_dir_load_what_was_saved(make_cfg, flux_dir, tmp_path):
    from flowrl.evaluation.weights import load_model, resolve

    cfg = _model_cfg(make_cfg, flux_dir)
    lora = _load("flux", flux_dir, lora={"rank": 4, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}).eval()
    _randomize_lora(lora)
    lora.save_pretrained(tmp_path / "run" / "final_model")
    expected = _velocity(lora)
    named = tmp_path / "my_adapter.safetensors"
    shutil.copy(tmp_path / "run" / "final_model" / "pytorch_lora_weights.safetensors", named)
    for spec, kind in ((tmp_path / "run", "lora_dir"), (named, "lora_file")):
        w = resolve(str(spec))
        assert w.kind == kind
        torch.testing.assert_close(_velocity(load_model(cfg, w)), expected)

    full = _load("flux", flux_dir, lora=None).eval()
    with torch.no_grad():
        for p in full.transformer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    full.save_pretrained(tmp_path / "full")
    w = resolve(str(tmp_path / "full"))
    assert w.kind == "transformer_dir"
    torch.testing.assert_close(_velocity(load_model(cfg, w)), _velocity(full))
    base = load_model(cfg, resolve("none"))
    assert not base.has_adapter and not torch.allclose(_velocity(base), expected)


def test_protocol_settings_sample_at_the_protocols_resolution_and_restore(make_cfg, flux_dir):
    from flowrl.evaluation.protocol import Sampler
    from flowrl.evaluation.report import protocol_settings
    from flowrl.evaluation.scoring import sample_and_score
    from flowrl.evaluation.weights import load_model, resolve

    model = load_model(_model_cfg(make_cfg, flux_dir), resolve("none"))
    shape, ids, guidance = model.latent_shape, model.img_ids.clone(), model.guidance_scale
    sampler = Sampler(num_steps=2, samples_per_prompt=1, height=2 * HW, width=2 * HW, guidance_scale=5.0)

    class Side(torch.nn.Module):
        def forward(self, images, prompts):
            return torch.full((len(prompts),), float(images.shape[-1]))

    with protocol_settings(model, sampler):
        assert model.guidance_scale == 5.0 and model.latent_shape[0] == 4 * shape[0]
        scores, images = sample_and_score(model, PROMPTS, {"side": Side()}, sampler, keep=2)
    assert images.shape[-2:] == (2 * HW, 2 * HW) and scores["side"].tolist() == [2.0 * HW] * 2
    assert model.latent_shape == shape and torch.equal(model.img_ids, ids) and model.guidance_scale == guidance
