"""Checks before any model loads, in-process (the CLI path is tests/config/test_config_errors.py):
seeds in range, prompt files that can be read, typos refused with the nearest valid key."""

import os

import pytest

from flowrl.config.errors import ConfigError
from flowrl.config.schema import check_config


@pytest.mark.parametrize(
    "override, line", [("seed=-1", "seed=-1: an integer in [0, 4294967295]"), ("val.seed=4294967296", "val.seed=4294967296")]
)
def test_seeds_are_range_checked(make_cfg, override, line):
    # seeds feed numpy's SeedSequence (non-negative 32-bit words): -1 used to crash 3 s into the run
    with pytest.raises(ConfigError, match=line.replace("[", r"\[").replace("]", r"\]")):
        check_config(make_cfg(override))


def _prompt_files(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a red circle on a blue background\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n# a comment\n")
    locked = tmp_path / "locked.txt"
    locked.write_text("a prompt\n")
    locked.chmod(0)
    return good


@pytest.mark.parametrize(
    "name, problem",
    [
        ("empty.txt", "the prompt file has no prompt"),
        ("blank.txt", "the prompt file has no prompt"),
        ("missing.txt", "no such prompt file"),
        (".", "not a regular file"),
        ("/dev/null", "not a regular file"),
        ("locked.txt", "not readable"),
    ],
)
def test_prompt_files_are_checked_before_any_model_loads(make_cfg, tmp_path, name, problem):
    if name == "locked.txt" and os.geteuid() == 0:
        pytest.skip("root reads files without read permission")
    good = _prompt_files(tmp_path)
    path = name if name.startswith("/") else tmp_path / name
    with pytest.raises(ConfigError, match=f"data.train_file=.*: {problem}"):
        check_config(make_cfg("data=files", f"data.train_file={path}", f"data.val_file={good}"))


@pytest.mark.parametrize(
    "override, line",
    [
        ("+trian.iterations=1", "not a key of this config (did you mean train?)"),
        ("+train.iteratoins=1", "train.iteratoins=1: not a key of train (did you mean iterations?)"),
        ("+method.tua=2.2", "method.tua=2.2: not a knob of method egrpo (did you mean tau?)"),
        ("+method.window_size=4", "method.window_size=4: not a knob of method egrpo (EntropyMergeStepScheduler"),
    ],
)
def test_added_keys_that_nothing_reads_are_refused_with_the_nearest_key(make_cfg, override, line):
    with pytest.raises(ConfigError) as err:
        check_config(make_cfg(override))
    assert line in str(err.value)


def test_the_checks_run_inside_a_running_hydra_app(make_cfg):
    # a joblib or SLURM worker runs the checks with Hydra already initialised: they must not
    # initialise it again (composing there failed every job of a joblib sweep)
    from hydra import initialize_config_dir

    from flowrl.config.compose import CONF_DIR
    from flowrl.config.schema import _top_level_keys

    cfg = make_cfg()
    _top_level_keys.cache_clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        check_config(cfg)


# A method's lr comes with the fine-tune kind it was tuned for (method.lrs, each with its source):
# DanceGRPO's full fine-tune 1e-5 (scripts/finetune/finetune_flux_grpo.sh@15cc71d) vs its LoRA 3e-4
# (finetune_flux_grpo_8gpus_lora.sh); MixGRPO gives only a full fine-tune's (finetune_flux_grpo_MixGRPO.sh@e5cdd6a).
@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ["method=dancegrpo", "model=flux_dev"],
            "method.lr=1e-05: dancegrpo's full fine-tune lr (method.lrs.full), but this run is a LoRA (model.lora): "
            "use method.lr=0.0003 (method.lrs.lora), or model.lora=null",
        ),
        (["method=mixgrpo", "model=flux_dev"], "method.lr=1e-05: mixgrpo's full fine-tune lr (method.lrs.full)"),
        (["method=egrpo", "model=flux_dev"], "use an lr of your own (method.lr=...; its sources give none for a LoRA)"),
        (["method=flowgrpo", "model=sd35_medium", "model.lora=null"], "method.lr=0.0003: flowgrpo's LoRA lr"),
    ],
)
def test_an_lr_tuned_for_the_other_finetune_kind_is_refused(make_cfg, overrides, line):
    from flowrl.config.schema import check_lr_finetune

    with pytest.raises(ConfigError) as err:
        check_lr_finetune(make_cfg(*overrides))
    assert line in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=dancegrpo", "model=flux_dev", "method.lr=${method.lrs.lora}"],  # the fix the line names
        ["method=dancegrpo", "model=flux_dev", "model.lora=null"],
        ["method=mixgrpo", "model=flux_dev", "method.lr=1e-4"],  # an lr of one's own is taken as given
        ["experiment=dancegrpo_flux_hps"],
        ["experiment=egrpo_flux_hps"],
        ["experiment=densegrpo_sd35_pickscore"],
        ["method=flowgrpo"],  # the tiny model: train.check_lr_finetune false
    ],
)
def test_an_lr_of_the_runs_finetune_kind_passes(make_cfg, overrides):
    from flowrl.config.schema import check_lr_finetune

    check_lr_finetune(make_cfg(*overrides))
