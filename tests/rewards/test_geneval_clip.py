"""`geneval_clip`: the tiny_clip architecture trained on the compositional world (flowrl.data.geneval),
shipped in assets/tiny_clip_geneval and loaded by TinyClipReward(world="geneval")."""

import json

import pytest
import torch

from flowrl.data.geneval import all_specs, render_batch
from flowrl.rewards.clip import TINY_CLIP_FILES, TINY_CLIP_GENEVAL_DIR, TinyClipReward
from flowrl.rewards.train_tiny_clip import hard_negatives, main


@pytest.fixture(scope="module")
def geneval_clip():
    return TinyClipReward(world="geneval")


def test_world_picks_its_shipped_files(tiny_clip, geneval_clip):
    arch, weights = TINY_CLIP_FILES["geneval"]
    assert arch.parent == weights.parent == TINY_CLIP_GENEVAL_DIR and arch.is_file() and weights.is_file()
    assert TINY_CLIP_FILES["shapes"][0].parent.name == "tiny_clip"
    # the component key (val/reward/<name> under the eval key, the training path's weights)
    assert (tiny_clip.name, tiny_clip.image_size) == ("tiny_clip", 32)
    assert (geneval_clip.name, geneval_clip.image_size) == ("geneval_clip", 32)  # both worlds render at 32 px
    images = render_batch(all_specs()[:2], seed=0)
    assert set(geneval_clip.components(images, ["a circle", "a square"])) == {"geneval_clip"}


def test_explicit_files_win_over_the_world(tmp_path, tiny_clip, geneval_clip):
    arch, weights = TINY_CLIP_FILES["geneval"]
    explicit = TinyClipReward(checkpoint=weights, arch=arch)  # world "shapes", geneval's files
    w = explicit.model.visual.conv1.weight
    assert torch.equal(w, geneval_clip.model.visual.conv1.weight) and not torch.equal(w, tiny_clip.model.visual.conv1.weight)
    with pytest.raises(FileNotFoundError) as e:
        TinyClipReward(checkpoint=tmp_path / "nope.safetensors", world="geneval")
    msg = str(e.value)
    assert "nope.safetensors" in msg and "geneval_clip" in msg and "--world geneval" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="world"):
        TinyClipReward(world="nope")


def test_reward_option_names_the_component(make_cfg):
    from hydra.utils import instantiate

    reward = instantiate(make_cfg("+reward@probe=geneval_clip", config_name="sample").probe)
    assert isinstance(reward, TinyClipReward) and reward.name == "geneval_clip" and reward.world == "geneval"


def test_geneval_clip_prefers_true_captions_to_hard_negatives(geneval_clip):
    # Fresh clean renderings of every color_attr prompt and every 4th position prompt: the true
    # caption must outscore the one with the two objects' colours swapped (measured 0.934 of 348
    # pairs at seed 7, 0.93-0.94 at seeds 7-9). The mirrored relation it cannot tell (measured 0.468
    # of 216; 0.46-0.47 at seeds 7-9; 0.50 over all 1728 position renderings): the shipped proxy
    # is blind to position, a known hole to hack. This pins both.
    specs = [s for s in all_specs() if s.category == "color_attr"] + [s for s in all_specs() if s.category == "position"][::4]
    images = render_batch(specs, seed=7)
    true = geneval_clip(images, [s.prompt for s in specs])
    rates = {}
    for kind in ("colour_swap", "mirrored"):
        rows = [(i, n[kind]) for i, s in enumerate(specs) if kind in (n := hard_negatives(s))]
        idx = torch.tensor([i for i, _ in rows])
        rates[kind] = (true[idx] > geneval_clip(images[idx], [n.prompt for _, n in rows])).float().mean().item()
    assert rates["colour_swap"] >= 0.9, rates
    assert 0.35 <= rates["mirrored"] <= 0.65, rates
    assert true.abs().max() <= 1.0 + 1e-5


def test_hard_negatives_are_other_prompts_of_the_world():
    from flowrl.data.geneval import parse

    for spec in all_specs():
        for neg in hard_negatives(spec).values():
            assert parse(neg.prompt) == neg != spec


def test_train_geneval_world_runs(tmp_path):
    main(
        ["--world", "geneval", "--steps", "2", "--batch", "8", "--threads", "1", "--out", str(tmp_path), "--eval-per-prompt", "0"]
    )
    arch, weights = (tmp_path / f.name for f in TINY_CLIP_FILES["geneval"])
    assert json.loads(arch.read_text())["vision_cfg"]["image_size"] == 32
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["world"] == "geneval" and metrics["steps"] == 2 and metrics["batch"] == 8
    reward = TinyClipReward(checkpoint=weights, arch=arch, world="geneval")
    assert reward(render_batch(all_specs()[:2], seed=0), ["a circle", "a square"]).shape == (2,)
