"""Every yaml under conf/ composes with Hydra's compose API (lightning-hydra-template style),
and the reward group and the reward registry agree."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from flowrl.config.compose import CONF_DIR

CONF = Path(CONF_DIR)
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.glob("*/*.yaml"))
# Values a user must supply (???) or that only exist inside a running Hydra app.
RUNTIME_OVERRIDES = ["paths.output_dir=/tmp/flowrl-test"]


def _compose(name, overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=[*RUNTIME_OVERRIDES, *overrides])


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes_and_resolves(name):
    cfg = _compose(name)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


TRAIN_GROUPS = {"method", "model", "data", "eval_rewards", "trainer", "logger", "paths", "experiment", "hparams_search"}


@pytest.mark.parametrize("rel", GROUP_FILES, ids=str)
def test_every_group_option_composes(rel):
    # Groups train.yaml selects compose as `group=option` into a training config; the others
    # (reward/, used under several packages) as an extra node.
    group, option = rel.parent.as_posix(), rel.stem
    if group in TRAIN_GROUPS:
        cfg = _compose("train", [f"{group}={option}"])
    else:
        cfg = _compose("sample", [f"+{group}@probe={option}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("toy_*.yaml")))
def test_toy_experiments_share_one_budget_and_lr(name):
    # The toy comparison is only fair at equal budgets: the same NFE budget per run, NFE per
    # iteration (the papers' count) within 10% of E-GRPO's, the same effective lr and evaluation.
    from hydra.utils import instantiate

    def budget(cfg):
        plan = instantiate(cfg.method.step_scheduler).plan(0)
        return plan.budget()["nfe_per_prompt"] * cfg.train.prompts_per_step

    ref = _compose("train", ["experiment=toy_egrpo"])
    cfg = _compose("train", [f"experiment={name}"])
    assert cfg.method.name == name.removeprefix("toy_")
    assert abs(budget(cfg) / budget(ref) - 1) <= 0.1, (budget(cfg), budget(ref))
    assert cfg.method.lr * cfg.train.lr_scale == ref.method.lr * ref.train.lr_scale
    assert cfg.budget.nfe == ref.budget.nfe == 48000 and cfg.val.samples_per_prompt == ref.val.samples_per_prompt


def test_reward_group_matches_registry(tmp_path):
    # Rewards whose checkpoint is absent (the real ones: paths.models points nowhere here) must
    # fail fast with CheckpointNotFound (Hydra wraps it: it is the cause); the others instantiate.
    import time

    from flowrl.config.errors import CheckpointNotFound
    from flowrl.rewards import REGISTRY, reward_class

    options = {p.stem for p in (CONF / "reward").glob("*.yaml")}
    assert options <= set(REGISTRY), f"reward configs without a registry entry: {options - set(REGISTRY)}"
    missing_seen = set()
    for name in sorted(options):
        cfg = _compose("sample", [f"+reward@probe={name}", f"paths.models={tmp_path / 'no-models'}"])
        parts = [cfg.probe, *cfg.probe.get("rewards", {}).values()]  # a multi reward's parts too
        absent = [p.checkpoint for p in parts if p.get("checkpoint") is not None and not Path(p.checkpoint).exists()]
        if absent:
            start = time.perf_counter()
            with pytest.raises(Exception) as err:
                instantiate(cfg.probe)
            cause = err.value if isinstance(err.value, CheckpointNotFound) else err.value.__cause__
            assert isinstance(cause, CheckpointNotFound), f"{name}: {err.value!r}"
            assert any(str(c) in str(cause) for c in absent) and "\n" not in str(cause), str(cause)
            assert time.perf_counter() - start < 2, name
            missing_seen.add(name)
            continue
        reward = instantiate(cfg.probe)
        assert isinstance(reward, reward_class(name)), name
    assert missing_seen >= {"hps", "clipscore", "pickscore", "imagereward"} & options


def test_sample_entry_point_runs_and_scores(tmp_path):
    # What `make train` runs until the GRPO loop lands, on 2 held-out prompts.
    from flowrl.sample import run

    cfg = _compose("sample", [f"paths.output_dir={tmp_path}", "per_prompt=1", "num_steps=4"])
    scores = run(cfg)
    assert set(scores) == {"shapes", "tiny_clip", "jpeg"}
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "scores.json").is_file()


def test_method_configs_carry_the_official_values():
    # Issue 11, 2j and the update schedules, each as the official script has it.
    cfg = {m: _compose("train", [f"method={m}"]) for m in ("dancegrpo", "flowgrpo", "egrpo", "g2rpo", "densegrpo", "mixgrpo")}
    assert {m: c.train.weight_decay for m, c in cfg.items()} == dict.fromkeys(cfg, 1e-4)  # every peer
    dance = cfg["dancegrpo"].method
    assert (dance.lr, dance.gradient_accumulation_steps, dance.step_scheduler.score) == (1e-5, 4, "last_x0")
    lora = _compose("train", ["experiment=dancegrpo_flux_hps"]).method
    assert (lora.lr, lora.gradient_accumulation_steps) == (3e-4, 12)  # train_grpo_flux_lora.py + its 8-GPU script
    flow = cfg["flowgrpo"].method
    assert (flow.ema.decay, flow.ema.every, flow.ema.warmup) == (0.9, 8, True)  # flow_grpo config/grpo.py + ema.py
    assert (flow.kl_beta, flow.kl_form, flow.optimizer_steps_per_rollout) == (0.04, "official", 2)
    assert flow.step_scheduler["update"]["drop_zero_advantage"] and flow.step_scheduler.global_std
    assert cfg["egrpo"].method.granularities == [1, 2] and cfg["egrpo"].method.step_every == "jump"
    assert cfg["g2rpo"].method.granularities == [1, 2] and cfg["g2rpo"].method.multi_reward == "sum_advantages"
    mix = cfg["mixgrpo"].method
    assert (mix.num_steps, mix.window_size, mix.iters_per_group, mix.stride, mix.gradient_accumulation_steps) == (25, 4, 25, 1, 3)
    # DenseGRPO's PickScore experiment: the paper's beta 0.01 for human-preference rewards
    assert _compose("train", ["experiment=densegrpo_sd35_pickscore"]).method.kl_beta == 0.01
    # E-GRPO's multi-reward is the raw weighted sum (its reward_manager.py): no per-part z-scores
    hps_clip = _compose("sample", ["+reward@probe=hps_clip"]).probe
    assert hps_clip.normalize == "none" and dict(hps_clip.weights) == {"hps": 0.7, "clipscore": 0.3}
