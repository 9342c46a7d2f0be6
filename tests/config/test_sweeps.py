"""sweeps/*.sh build one `python -m flowrl.train -m ...` each (checked with PYTHON=echo, and every
sweep's points composed by Hydra); the SLURM launcher config and the Optuna search config work with
the pinned plugins. The sweeps that train are run by the slow tests (tests/conftest.py smoke_sweep)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowrl.config.compose import CONF_DIR

REPO = Path(__file__).resolve().parents[2]
CONF = Path(CONF_DIR)
SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.sh") if not p.name.startswith("_"))
SMOKE_KEYS = {"train.prompts_per_step", "method.group_size", "method.num_steps", "val.samples_per_prompt", "val.num_steps"}


def _command(name, *args, **env):
    """The argv a sweep script would run (PYTHON=echo prints it instead of training)."""
    full = {k: v for k, v in os.environ.items() if k not in ("SMOKE", "SEEDS", "LENGTH", "LAUNCHER", "EXPERIMENT", "METHODS")}
    full.update({"PYTHON": "echo", **env})
    proc = subprocess.run(
        ["bash", str(REPO / "sweeps" / f"{name}.sh"), *args], capture_output=True, text=True, env=full, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.split()
    assert argv[:3] == ["-m", "flowrl.train", "-m"], argv
    return argv[3:]


def _key(override):
    return override.split("=", 1)[0].lstrip("+~")


def _last(argv, key):
    values = [o.split("=", 1)[1] for o in argv if _key(o) == key]
    return values[-1] if values else None


def test_every_question_has_a_sweep():
    assert set(SWEEPS) == {
        "methods",
        "tau",
        "branch_steps",
        "group_size",
        "clip_eps",
        "granularity",
        "dense_horizon",
        "toy_benchmark",
    }


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_command(name):
    argv = _command(name)
    assert _last(argv, "logger.experiment_name") == name and _last(argv, "sweep") == name
    budget = "48000" if name == "toy_benchmark" else "100000"  # one NFE budget for every point: equal cost
    assert _last(argv, "budget.nfe") == budget and _last(argv, "seed") == "0,1,2"
    assert not (SMOKE_KEYS - {"method.group_size"}) & {_key(o) for o in argv}  # full sizes
    assert _last(argv, "hydra.sweep.dir").startswith(f"multirun/{name}/")
    # seeds vary slowest: Hydra's basic sweeper takes the product of the lists in command-line
    # order, the first slowest, so a sweep stopped early has every point at the seeds it reached
    lists = [_key(o) for o in argv if "," in o.split("=", 1)[1]]
    assert lists[0] == "seed", lists
    # SMOKE=1 shrinks every size the sweep itself does not sweep; the sweep's own values win
    smoke = _command(name, SMOKE="1")
    assert _last(smoke, "train.iterations") == "1" and _last(smoke, "seed") == "0"
    assert _last(smoke, "budget.nfe") == "null"  # no budget, also where a preset sets one
    # the method shrunk by its own step scheduler (smoke=true: its small_overrides, flowrl.config.compose)
    assert _last(smoke, "smoke") == "true" and _last(smoke, "val.samples_per_prompt") == "1"
    swept = {_key(o) for o in argv}
    for o in smoke:
        if _key(o) in swept and _key(o) not in ("train.iterations", "budget.nfe", "seed"):  # the length, the seeds
            assert _last(smoke, _key(o)) == _last(argv, _key(o)), o  # not shrunk: it is what is swept
    # the experiment, the length, the seeds and the launcher are overridable; extra args come last
    mine = _command(name, "logger.experiment_name=mine", "trainer.val_check_interval=5", LENGTH="budget.nfe=1000", SEEDS="3,4")
    assert _last(mine, "logger.experiment_name") == "mine" and mine[-1] == "trainer.val_check_interval=5"
    assert _last(mine, "budget.nfe") == "1000" and _last(mine, "seed") == "3,4"
    assert _last(_command(name, EXPERIMENT="other"), "logger.experiment_name") == "other"
    parallel = _command(name, LAUNCHER="joblib", N_JOBS="2")
    assert _last(parallel, "hydra/launcher") == "joblib" and _last(parallel, "hydra.launcher.n_jobs") == "2"
    assert _last(_command(name, LAUNCHER="slurm"), "hydra/launcher") == "slurm"


def test_group_size_sweep_keeps_its_group_sizes_under_smoke():
    smoke = _command("group_size", SMOKE="1")
    assert [o for o in smoke if _key(o) == "method.group_size"] == ["method.group_size=4,8,12,16"]


def test_methods_sweep_covers_every_method_file():
    methods = _last(_command("methods"), "method").split(",")
    assert methods == sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    assert _last(_command("methods", METHODS="egrpo,dancegrpo"), "method") == "egrpo,dancegrpo"
    toys = _last(_command("toy_benchmark"), "experiment").split(",")
    assert toys == sorted(p.stem for p in (CONF / "experiment").glob("toy_*.yaml"))


def _points(argv):
    """Every point of a sweep as a plain override list (Hydra's own override parser)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    keep = [o for o in argv if not _key(o).startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides(keep)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([f"{o.get_key_element()}={o.get_value_element_as_str()}"])
    return [list(p) for p in itertools.product(*choices)]


@pytest.mark.parametrize("name", SWEEPS)
@pytest.mark.parametrize("smoke", ["0", "1"])
def test_every_sweep_point_composes(make_cfg, name, smoke):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    points = _points(_command(name, SMOKE=smoke, SEEDS="0"))
    assert len(points) >= 2
    for overrides in points:
        cfg = make_cfg(*overrides)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert cfg.sweep == name
        if smoke == "1":  # the smoke sizes fit every method's own checks (window, steps per update)
            instantiate(cfg.method.step_scheduler)


def test_slurm_launcher_config(make_cfg):
    cfg = make_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240


OPTUNA_APP = """
import hydra

@hydra.main(version_base="1.3", config_path={conf!r}, config_name="train")
def main(cfg):
    # what flowrl.train.main returns for Optuna: train()'s summary at cfg.optimized_metric
    summary = {{"after/val/reward/geneval": 1.0 - (cfg.method.tau - 2.2) ** 2 - 0.01 * cfg.method.group_size}}
    return summary[cfg.optimized_metric]

main()
"""


def test_optuna_search_config_runs_with_the_pinned_sweeper(tmp_path):
    # The search config, hydra-optuna-sweeper 1.3.0 and optuna 2.10.1, on a stand-in for training
    # (flowrl.train.main must return cfg.optimized_metric for the real search).
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(OPTUNA_APP.format(conf=str(CONF))))
    overrides = ["hparams_search=egrpo_optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.n_startup_trials=2"]
    proc = subprocess.run(
        [sys.executable, str(app), *overrides, f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from omegaconf import OmegaConf

    result = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert result.name == "optuna" and set(result.best_params) == {
        "method.tau",
        "method.group_size",
        "method.clip_eps",
        "method.lr",
    }
    assert result.best_value <= 1.0 and 1.6 <= result.best_params["method.tau"] <= 2.8
