"""Retraining the embedded models for a few steps: deterministic, loss goes down, loadable."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_pretrain_is_deterministic_and_learns(tmp_path):
    from flowrl.models.tiny_flux import TinyFluxModel
    from flowrl.pretrain import pretrain

    small = {"num_layers": 1, "num_single_layers": 1}
    kwargs = dict(steps=30, batch_size=16, lr=1e-3, seed=0, threads=1, save_every=0, config_overrides=small, eval_per_prompt=1)
    a = pretrain(tmp_path / "a", **kwargs)
    b = pretrain(tmp_path / "b", **kwargs)
    assert a["final_loss"] == b["final_loss"]  # same seed, same threads -> same run
    ma, mb = TinyFluxModel.from_pretrained(tmp_path / "a"), TinyFluxModel.from_pretrained(tmp_path / "b")
    for (k, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(pa, pb), k
    # At init v_theta ~ 0, so the loss is E||noise - x0||^2 = 1 + E[x0^2] ~ 1.9 for these
    # saturated colors (measured 1.93); 30 steps at lr 1e-3 must cut it by a third at least.
    assert a["initial_loss"] > 1.5
    assert a["final_loss"] < 0.67 * a["initial_loss"]
    metrics = json.loads((tmp_path / "a" / "pretrain_metrics.json").read_text())
    assert {"shapes/train", "shapes/heldout", "train_seconds", "params"} <= set(metrics)


def test_train_tiny_clip_runs_and_loads(tmp_path):
    from flowrl.rewards.clip import TinyClipReward
    from flowrl.rewards.train_tiny_clip import train

    m = train(tmp_path, steps=3, lr=1e-3, seed=0, threads=1, max_noise=0.1)
    assert m["steps"] == 3
    r = TinyClipReward(checkpoint=tmp_path / "flowrl-tiny-clip.safetensors", arch=tmp_path / "flowrl-tiny-clip.json")
    assert r(torch.rand(2, 3, 32, 32), ["a", "b"]).shape == (2,)
