"""Every yaml under conf/ composes (lightning-hydra-template style); every method and every
experiment preset passes the config checks a run starts with (flowrl.config.schema) and lays out
its first plan with the optimizer steps its official script takes; every reward option
instantiates (or fails fast where its checkpoint is absent)."""

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from flowrl.config.compose import CONF_DIR, config_options

CONF = Path(CONF_DIR)
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.glob("*/*.yaml"))


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes_and_resolves(make_cfg, name):
    cfg = make_cfg(config_name=name)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


TRAIN_GROUPS = {"method", "model", "data", "eval_rewards", "trainer", "logger", "paths", "experiment", "hparams_search"}


@pytest.mark.parametrize("rel", GROUP_FILES, ids=str)
def test_every_group_option_composes(make_cfg, rel):
    # Groups train.yaml selects compose as `group=option` into a training config; the others
    # (reward/, used under several packages) as an extra node.
    group, option = rel.parent.as_posix(), rel.stem
    if group in TRAIN_GROUPS:
        cfg = make_cfg(f"{group}={option}")
    else:
        cfg = make_cfg(f"+{group}@probe={option}", config_name="sample")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


# ---- every method and every preset: checked, scheduled, its first update laid out -------------

# Optimizer steps per iteration at each method's defaults (train.prompts_per_step 2: each prompt
# one emulated GPU where the method accumulates per GPU), worked from conf/method/<m>.yaml and the
# official scripts its comments name.
METHOD_OPTIMIZER_STEPS = {
    # flow_grpo config/grpo_guard.py: Flow-GRPO's gradient_accumulation_steps = num_batches_per_epoch // 2 -> 2
    "grpo_guard": 2,
    # train_branchgrpo_flux.py: a step every 12 shuffled edges of a GPU's 2 trees: 2 x 218 = 436
    # edges -> 36 full steps + a remainder of 4 = 37 (tree_methods.md 1.5)
    "branchgrpo": 37,
    # no code: Flow-GRPO's 2 optimizer steps per rollout over shuffled halves (its yaml's choice)
    "tempflow_grpo": 2,
    # train_sd3_awm.py: gradient_accumulation_steps = train.num_batches_per_epoch: one step per epoch
    "awm": 1,
    # train_nft_sd3.py: gradient_step_per_epoch 1 (config/nft.py sd3_geneval)
    "diffusionnft": 1,
    # finetune_flux_grpo.sh: 1 prompt x G 12 per GPU, a step every gradient_accumulation_steps 4
    # samples; the GPUs step together: 12 / 4 = 3
    "dancegrpo": 3,
    # the paper: gradient accumulation over all 8 batches of a rollout: optimizer_steps_per_rollout 1
    "densegrpo": 1,
    # VisualGRPO grpo_trainer.py: one step per branch point, num_branch_steps 8
    "egrpo": 8,
    # flow_grpo config/grpo.py: gradient_accumulation_steps = num_batches_per_epoch // 2 -> 2
    "flowgrpo": 2,
    # train_g2rpo_hps.py: one step per SDE step e = 0..7 (num_branch_steps 8)
    "g2rpo": 8,
    # finetune_flux_grpo_MixGRPO.sh: 1 prompt x G 12 per GPU, a step every 3 samples: 12 / 3 = 4
    "mixgrpo": 4,
}
# The same for the presets, at their own train.prompts_per_step and method overrides.
EXPERIMENT_OPTIMIZER_STEPS = {
    # train_grpo_flux_lora.py's 8-GPU script: 2 prompts x G 12 on each GPU, a step every 12 samples:
    # 24 / 12 = 2, the 8 emulated GPUs (16 prompts) stepping together
    "dancegrpo_flux_hps": 2,
    "densegrpo_sd35_pickscore": 1,  # one per rollout, as the method
    "egrpo_flux_hps": 8,  # one per branch point (8)
    "egrpo_flux_hps_clip": 8,
    "flowgrpo_sd35_pickscore": 2,  # gradient_accumulation_steps = num_batches_per_epoch // 2: two per epoch
    "g2rpo_flux_hps": 8,  # one per SDE step (8)
    "shapes_world": 8,  # the default method, E-GRPO: one per branch point (8)
    "toy_awm": 1,
    "toy_grpo_guard": 2,
    # T 16, splits 0,3,6,9 -> 16 leaves, edges per tree 2+2*2+4+4*2+8+8*2+16+16*6 = 154; 2 trees per
    # emulated GPU: 308 edges / 12 = 25 full steps + a remainder of 8 = 26
    "toy_branchgrpo": 26,
    "toy_tempflow_grpo": 2,
    "toy_diffusionnft": 1,
    "toy_dancegrpo": 3,  # 17 prompts = 17 emulated GPUs, each 12 / 4 = 3, stepping together
    "toy_densegrpo": 1,
    "toy_egrpo": 8,
    "toy_flowgrpo": 2,
    "toy_g2rpo": 8,
    "toy_mixgrpo": 4,  # 11 prompts = 11 emulated GPUs, each 12 / 3 = 4
}
# The pipeline class a real model's model_index.json names (flowrl.config.model_files).
PIPELINE_CLASS = {"flowrl.models.flux": "FluxPipeline", "flowrl.models.sd3": "StableDiffusion3Pipeline"}


def _fake_the_files_it_reads(cfg, tmp_path):
    """The real-model presets read a FLUX.1-dev / SD3.5 directory and prompt files that this
    machine does not have: faked under tmp_path (an empty pipeline directory with the model_index.json
    and sub-folders flowrl.config.model_files checks; prompt files of two lines), so that
    check_config checks the whole preset, its model part included, not a tiny_flux stand-in."""
    from flowrl.config.model_files import PIPELINE_COMPONENTS

    module = str(cfg.model._target_).rsplit(".", 1)[0]
    if module in PIPELINE_CLASS:
        path = Path(cfg.model.path)
        assert path.is_relative_to(tmp_path), path
        for c in PIPELINE_COMPONENTS:
            (path / c).mkdir(parents=True, exist_ok=True)
        (path / "model_index.json").write_text(json.dumps({"_class_name": PIPELINE_CLASS[module]}))
    protocol = cfg.get("eval_protocol") or {}  # the paper presets' protocol after training: its prompts and reward files
    protocol_file = protocol.get("prompts", {}).get("file")
    from flowrl.evaluation.reward_files import FILES

    for node in (protocol.get("rewards") or {}).values():
        for key, *_, kind in (entry[:5] for entry in FILES.get(node.get("_target_"), [])):
            path = Path(node[key])
            assert path.is_relative_to(tmp_path), path
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    for path in [cfg.data.get(key) for key in ("train_file", "val_file")] + [protocol_file]:
        if path:
            path = Path(path)
            assert path.is_relative_to(tmp_path), path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("a red circle on a blue background\na white square on a green background\n")


def _check_and_lay_out(cfg, tmp_path) -> list:
    """What a run does before any model loads: the schemas and path checks, then the method's step
    scheduler built and its first plan's optimizer steps laid out for train.prompts_per_step prompts."""
    from flowrl.config.schema import check_config

    _fake_the_files_it_reads(cfg, tmp_path)
    check_config(cfg)
    sched = instantiate(cfg.method.step_scheduler)
    steps = sched.plan(0).optimizer_steps(cfg.train.prompts_per_step)
    assert all(len(step) > 0 for step in steps)  # every step trains some (jump, rows) block
    return steps


@pytest.mark.parametrize("method", config_options("method"))
def test_every_method_passes_the_checks_and_lays_out_its_first_update(make_cfg, tmp_path, method):
    cfg = make_cfg(f"method={method}", f"paths.root_dir={tmp_path}", f"paths.models={tmp_path / 'models'}")
    steps = _check_and_lay_out(cfg, tmp_path)
    assert cfg.method.name == method and cfg.train.prompts_per_step == 2
    assert len(steps) == METHOD_OPTIMIZER_STEPS[method], "a new method: work its optimizer steps by hand above"


@pytest.mark.parametrize("name", config_options("experiment"))
def test_every_experiment_preset_passes_the_checks_and_lays_out_its_first_update(make_cfg, tmp_path, name):
    # paths.root_dir and paths.models under tmp_path: where the presets' model directory and prompt
    # files are looked for (faked there by _fake_the_files_it_reads)
    cfg = make_cfg(f"experiment={name}", f"paths.root_dir={tmp_path}", f"paths.models={tmp_path / 'models'}")
    steps = _check_and_lay_out(cfg, tmp_path)
    assert len(steps) == EXPERIMENT_OPTIMIZER_STEPS[name], "a new preset: work its optimizer steps by hand above"


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "experiment").glob("toy_*.yaml")))
def test_toy_experiments_share_one_budget_and_lr(make_cfg, name):
    # The toy comparison is only fair at equal budgets: the same NFE budget per run, NFE per
    # iteration (the papers' count) within 10% of E-GRPO's, the same effective lr and evaluation.

    def budget(cfg):
        plan = instantiate(cfg.method.step_scheduler).plan(0)
        return plan.budget()["nfe_per_prompt"] * cfg.train.prompts_per_step

    ref = make_cfg("experiment=toy_egrpo")
    cfg = make_cfg(f"experiment={name}")
    assert cfg.method.name == name.removeprefix("toy_")
    assert abs(budget(cfg) / budget(ref) - 1) <= 0.1, (budget(cfg), budget(ref))
    assert cfg.method.lr * cfg.train.lr_scale == ref.method.lr * ref.train.lr_scale
    assert cfg.budget.nfe == ref.budget.nfe == 48000 and cfg.val.samples_per_prompt == ref.val.samples_per_prompt


def test_every_reward_option_scores_or_fails_fast_without_its_checkpoint(make_cfg, tmp_path):
    # Rewards whose checkpoint is absent (the real ones: paths.models points nowhere here) must
    # fail fast with CheckpointNotFound (Hydra wraps it: it is the cause); the others instantiate
    # and score a batch: one finite score per image.
    import time

    import torch

    from flowrl.config.errors import CheckpointNotFound
    from flowrl.data import geneval, shapes
    from flowrl.rewards import RewardModel

    # a batch of each embedded world: a rule-based reward scores its own world's prompts only
    worlds = []
    for world, specs in ((shapes, shapes.all_specs()[:2]), (geneval, geneval.split_specs("train")[:2])):
        worlds.append((world.render_batch(specs, seed=0), [s.prompt for s in specs]))
    options = config_options("reward")
    missing_seen = set()
    for name in options:
        cfg = make_cfg(f"+reward@probe={name}", f"paths.models={tmp_path / 'no-models'}", config_name="sample")
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
        assert isinstance(reward, RewardModel), name
        scored = 0
        for images, prompts in worlds:
            try:
                scores = reward(images, prompts)
            except ValueError as err:  # another world's prompt, said in one line
                assert "prompt" in str(err) and "\n" not in str(err), (name, err)
                continue
            assert scores.shape == (2,) and torch.isfinite(scores).all(), (name, scores)
            scored += 1
        assert scored >= 1, f"{name} scored neither world's batch"
    assert missing_seen >= {"hps", "clipscore", "pickscore", "imagereward"} & set(options)
    assert {"shapes", "tiny_clip", "jpeg", "multi"} <= set(options) - missing_seen  # the offline ones do load


def test_method_configs_carry_the_official_values(make_cfg):
    # Issue 11, 2j and the update schedules, each as the official script has it.
    cfg = {m: make_cfg(f"method={m}") for m in ("dancegrpo", "flowgrpo", "egrpo", "g2rpo", "densegrpo", "mixgrpo")}
    assert {m: c.train.weight_decay for m, c in cfg.items()} == dict.fromkeys(cfg, 1e-4)  # every peer
    dance = cfg["dancegrpo"].method
    assert (dance.lr, dance.gradient_accumulation_steps, dance.step_scheduler.score) == (1e-5, 4, "last_x0")
    lora = make_cfg("experiment=dancegrpo_flux_hps").method
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
    assert make_cfg("experiment=densegrpo_sd35_pickscore").method.kl_beta == 0.01
    # E-GRPO's multi-reward is the raw weighted sum (its reward_manager.py): no per-part z-scores
    hps_clip = make_cfg("+reward@probe=hps_clip", config_name="sample").probe
    assert hps_clip.normalize == "none" and dict(hps_clip.weights) == {"hps": 0.7, "clipscore": 0.3}


# Each method samples on the grid its official pipeline makes: the FLUX scripts' hand-made
# shift(linspace) (XueZeyue/DanceGRPO fastvideo/train_grpo_flux.py@15cc71d, Tencent-Hunyuan/MixGRPO
# fastvideo/train_grpo_flux.py@e5cdd6a, shengjun-zhang/VisualGRPO fastvideo/workers/sampler/
# flux_sampler.py@ae619bf, bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py@ef6ec9f), and flow_grpo's
# SD3 pipeline's FlowMatchEulerDiscreteScheduler (yifan123/flow_grpo sd3_pipeline_with_logprob.py@ac4c86e;
# DenseGRPO builds on it). A new method: name its grid here.
METHOD_SIGMA_GRIDS = {
    "grpo_guard": "flow_match_euler",  # train_sd3_GRPO_Guard.py: the SD3 pipeline's scheduler
    "branchgrpo": "shifted_linspace",  # train_branchgrpo_flux.py: sd3_time_shift(linspace)
    "tempflow_grpo": "flow_match_euler",  # Flow-GRPO's base: the SD3 pipeline's scheduler
    "awm": "flow_match_euler",  # train_sd3_awm.py: the SD3 pipeline's scheduler
    "diffusionnft": "flow_match_euler",  # train_nft_sd3.py: the SD3 pipeline's scheduler
    "dancegrpo": "shifted_linspace",
    "mixgrpo": "shifted_linspace",
    "egrpo": "shifted_linspace",
    "g2rpo": "shifted_linspace",
    "flowgrpo": "flow_match_euler",
    "densegrpo": "flow_match_euler",
}


@pytest.mark.parametrize("method", config_options("method"))
def test_every_method_samples_on_its_official_grid(make_cfg, method):
    from flowrl.sampling.sigmas import noise_schedule

    cfg = make_cfg(f"method={method}")
    assert cfg.method.sigma_grid == METHOD_SIGMA_GRIDS[method]
    sched = instantiate(cfg.method.step_scheduler)
    expected = noise_schedule(cfg.method.num_steps, cfg.method.shift, METHOD_SIGMA_GRIDS[method]).tolist()
    assert list(sched.plan(0).sigmas) == expected


def test_the_config_check_imports_no_diffusers(tmp_path):
    # The fail-fast checks build the step scheduler on a stand-in grid of the same length: the
    # official SD3 grid needs diffusers (~3 s to import), which only the run itself imports.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from flowrl.config.compose import compose\n"
        "from flowrl.config.schema import check_config\n"
        f"check_config(compose(['method=flowgrpo', 'paths.output_dir={tmp_path}']))\n"
        "check_config(compose(['method=densegrpo', 'method.num_steps=7', 'paths.output_dir=" + str(tmp_path) + "']))\n"
        "print(any(m == 'diffusers' or m.startswith('diffusers.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "False", out.stderr


# Each paper preset carries its official script's prompts per iteration (all GPUs together):
# DanceGRPO finetune_flux_grpo_8gpus_lora.sh@15cc71d 8 GPUs x 2; E-GRPO train_grpo_merge.sh@ae619bf
# 8 x 1; G²RPO finetune_g2rpo_hps.sh@04ee954 2 nodes x 8 x 1; flow_grpo config/grpo.py@ac4c86e 48
# prompts x 24 (DenseGRPO keeps Flow-GRPO's batch: 144 x 8 = 1,152 samples).
PAPER_PROMPTS_PER_ITERATION = {
    "dancegrpo_flux_hps": 16,
    "densegrpo_sd35_pickscore": 48,
    "egrpo_flux_hps": 8,
    "egrpo_flux_hps_clip": 8,
    "flowgrpo_sd35_pickscore": 48,
    "g2rpo_flux_hps": 16,
}
PAPER_RESOLUTION = {"flowrl.models.flux.load_flux": 720, "flowrl.models.sd3.load_sd3": 512}


@pytest.mark.parametrize("name", config_options("experiment"))
def test_paper_presets_carry_the_official_batch_and_resolution(make_cfg, name):
    # A paper preset is one on a paper's model (FLUX.1-dev, SD3.5); presets on the tiny model have
    # no official batch to carry.
    cfg = make_cfg(f"experiment={name}")
    if cfg.model._target_ not in PAPER_RESOLUTION:
        assert name not in PAPER_PROMPTS_PER_ITERATION
        return
    assert cfg.train.prompts_per_step == PAPER_PROMPTS_PER_ITERATION[name], "a new preset: its official batch above"
    side = PAPER_RESOLUTION[cfg.model._target_]
    assert (cfg.model.height, cfg.model.width) == (side, side)
