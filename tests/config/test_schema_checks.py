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
