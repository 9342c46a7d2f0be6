"""`python -m flowrl.pretrain --world geneval`: a few steps of the compositional world's model
(32 px, 4 px patches, the world's vocabulary) load, sample 32 x 32 images, and the verifier's
train / held-out scores per category land in pretrain_metrics.json."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_pretrain_geneval_world(tmp_path):
    from flowrl.data.geneval import CATEGORIES, split_specs, vocabulary
    from flowrl.models.tiny_flux import TinyFluxModel, load_tiny_flux
    from flowrl.pretrain import main
    from flowrl.sampling.ode import generate

    out = tmp_path / "geneval"
    argv = ["--world", "geneval", "--out", str(out), "--steps", "4", "--batch-size", "4", "--threads", "1"]
    main([*argv, "--save-every", "0", "--eval-per-prompt", "1", "--eval-limit", "2"])

    model = TinyFluxModel.from_pretrained(out)
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size, cfg.tokens_per_side) == (32, 4, 8)
    assert model.latent_shape == (64, 48)  # the shapes model's 64 tokens of 3 * 4 * 4 channels
    assert set(vocabulary()) <= set(cfg.vocab)
    # every word of every prompt is in the table (no <unk>), and no prompt is cut
    prompts = [s.prompt for split in ("train", "heldout") for s in split_specs(split)]
    ids = model.text_encoder.tokenize(prompts)
    assert not (ids == model.text_encoder.index["<unk>"]).any()
    assert max(len(p.split()) for p in prompts) <= cfg.max_text_len

    images = generate(load_tiny_flux(path=str(out)), prompts[:3], num_steps=2, seed=0)
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1

    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    assert metrics["world"] == "geneval" and metrics["steps"] == 4
    for split in ("train", "heldout"):
        cats = {c for c in CATEGORIES if split_specs(split, [c])}
        keys = {f"geneval/{split}", f"geneval/{split}/overall"} | {f"geneval/{split}/{c}" for c in cats}
        assert keys <= set(metrics), keys - set(metrics)
        assert all(0 <= metrics[k] <= 1 for k in keys)
    assert "geneval/heldout/single_object" not in metrics  # train-only categories
    assert "shapes/train" not in metrics
