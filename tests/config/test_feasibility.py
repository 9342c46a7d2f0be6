"""Feasibility before work (issue 22): the rollout's memory in the plan's cost and in flowrl.plan, a
run that cannot fit refused in one line naming the knob, the model's knobs (LoRA included) and
`+trainer.<kwarg>` checked before any model loads, more ranks than cores or GPUs warned about.
Nothing here depends on which embedded world is the default: each test sets what it asserts on."""

import json
import subprocess
import sys
import time

import pytest

from flowrl.config import feasibility
from flowrl.config.errors import ConfigError
from flowrl.config.schema import check_config

PY = sys.executable
GB = 10**9
WORLD = "experiment=shapes_world"  # the tiny model on a world whose weights are shipped, whichever is the default


@pytest.fixture
def machine(monkeypatch):
    """A machine of `ram` bytes (host) and the given GPUs' memory, whatever this one has."""

    def set_machine(ram: int = 8 * GB, gpus: tuple[int, ...] = (), cores: int = 2):
        monkeypatch.setattr(feasibility, "host_memory", lambda: ram)
        monkeypatch.setattr(feasibility, "visible_gpu_memory", lambda: gpus)
        monkeypatch.setattr(feasibility, "cpu_cores", lambda: cores)

    set_machine()
    return set_machine


# ---- the estimate -------------------------------------------------------------------------------
def test_rollout_memory_hand_worked_for_an_sde_and_an_anchor_plan():
    from flowrl.step_schedulers.entropy_merge import EntropyMergeStepScheduler

    sde = _flowgrpo_plan(group_size=4, num_steps=10)
    # P 2 x G 4 = 8 rows, T 10: latents 8*11 + noise 10*8 + scored 8*1 + step temporaries 3*8 = 200
    parts = sde.rollout_memory(2, latent_numel=100, image_numel=300, max_batch=5, keep_images=3)
    assert parts == {"stored latents": 4 * 200 * 100, "log-probs": 4 * 8 * 10, "decoded images": 4 * (5 + 3) * 300}
    anchor = EntropyMergeStepScheduler(group_size=4, num_steps=16, num_branch_steps=8, granularities=[1, 2]).plan(0)
    b, c, n = len(anchor.branches), 2, 8
    parts = anchor.rollout_memory(2, latent_numel=100, image_numel=300, max_batch=64)
    latents = 2 * b * 2 + b * n + b * n + b * c * n + 3 * n
    assert parts["stored latents"] == 4 * latents * 100 and parts["log-probs"] == 4 * b * n
    assert parts["decoded images"] == 4 * (64 + 64) * 300
    # the plan's cost carries the total when given the model's sizes, and only then
    cost = anchor.cost(2, latent_numel=100, image_numel=300, max_batch=64)
    assert cost["rollout_memory_bytes"] == sum(parts.values()) and "rollout_memory_bytes" not in anchor.cost(2)
    # it grows with G (the knob of issue 22's run that grew 3 GB every 10 s)
    big = EntropyMergeStepScheduler(group_size=4000, num_steps=16, num_branch_steps=8).plan(0)
    assert big.rollout_memory(2, 100, 300)["stored latents"] > 800 * parts["stored latents"]


def _flowgrpo_plan(group_size: int, num_steps: int):
    from hydra.utils import instantiate

    from flowrl.config.compose import compose

    cfg = compose(["method=flowgrpo", f"method.group_size={group_size}", f"method.num_steps={num_steps}"])
    return instantiate(cfg.method.step_scheduler).plan(0)


def test_model_shapes_from_the_configs_without_loading(make_cfg):
    assert feasibility.model_shapes(make_cfg("model=flux_dev").model) == (45 * 45 * 64, 3 * 720 * 720)
    assert feasibility.model_shapes(make_cfg("model=sd35_medium").model) == (32 * 32 * 64, 3 * 512 * 512)
    for world, size in (("shapes", 32), ("geneval", 32)):  # both worlds render at 32 px
        shapes = feasibility.model_shapes(make_cfg(f"model.world={world}").model)
        assert shapes in (None, (3 * size * size,) * 2)  # None only while a world's weights are not shipped


def test_flowrl_plan_shows_the_estimate_in_text_and_json(capsys, machine):
    from flowrl.plan import main

    main(["--json", WORLD, "method=flowgrpo", "method.group_size=8", "train.prompts_per_step=3", "train.max_batch=12"])
    mem = json.loads(capsys.readouterr().out)["rollout_memory"]
    assert mem["latent_numel"] == 3 * 32 * 32 and mem["machine_bytes"] == 8 * GB and mem["machine"] == "memory"
    assert mem["bytes"] == sum(mem["parts"].values()) > 0
    assert set(mem["parts"]) == {"stored latents", "log-probs", "decoded images"}
    main([WORLD, "method=flowgrpo", "train.prompts_per_step=3", "train.max_batch=12"])
    text = capsys.readouterr().out
    assert "rollout peak memory (estimate, 3 prompt(s), train.max_batch 12):" in text
    assert "of this machine's 8.0 GB memory (stored latents" in text


# ---- a run that cannot fit ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, knob",
    [
        (["method=egrpo", "method.group_size=100000"], "method.group_size=100000"),
        (["method=dancegrpo", "method.group_size=100000"], "method.group_size=100000"),
        (["method=flowgrpo", "train.prompts_per_step=20000"], "train.prompts_per_step=20000"),
    ],
)
def test_a_rollout_larger_than_the_machine_is_refused_naming_the_knob(make_cfg, machine, overrides, knob):
    with pytest.raises(ConfigError) as err:
        check_config(make_cfg(WORLD, *overrides))
    line = str(err.value)
    assert line.startswith(f"{knob}: the rollout would hold about ") and "\n" not in line
    assert "more than this machine's 8.0 GB of memory: lower " in line


def test_a_gpu_run_is_checked_against_the_gpu_memory(make_cfg, machine):
    machine(ram=10**13, gpus=(80 * 2**30,))
    with pytest.raises(ConfigError, match="of GPU memory: lower method.group_size"):
        check_config(make_cfg(WORLD, "method=egrpo", "method.group_size=100000", "trainer.accelerator=gpu"))
    # the same run on the CPU of that host fits
    check_config(make_cfg(WORLD, "method=egrpo", "method.group_size=100000", "trainer.accelerator=cpu"))


def test_the_default_sizes_fit_and_an_unknown_machine_is_not_checked(make_cfg, machine, monkeypatch):
    check_config(make_cfg(WORLD, "method=egrpo"))
    monkeypatch.setattr(feasibility, "host_memory", lambda: None)
    check_config(make_cfg(WORLD, "method=egrpo", "method.group_size=100000"))


def test_an_absurd_size_through_the_cli_is_one_line_exit_2_before_any_model(tmp_path):
    # 10^7 samples a group: terabytes on any machine (issue 22's 10^5 grew until the OOM killer came)
    start = time.perf_counter()
    proc = subprocess.run(
        [PY, "-m", "flowrl.train", WORLD, "method=egrpo", "method.group_size=10000000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowrl: method.group_size=10000000: the rollout would hold about")
    assert time.perf_counter() - start < 30 and not (tmp_path / "mlflow.db").exists()


def test_the_feasibility_helpers_import_no_torch(tmp_path):
    code = """
import sys
from flowrl.config.compose import compose
from flowrl.config import feasibility as f
cfg = compose(["trainer.devices=3", "+trainer.detect_anomaly=true"])
print(f.model_shapes(cfg.model), f.machine_memory(cfg), f.device_warnings(cfg))
f.check_arguments(cfg, "trainer"); f.check_arguments(cfg, "model")
assert "torch" not in sys.modules and "lightning" not in sys.modules, "torch was imported"
"""
    proc = subprocess.run([PY, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- the model's knobs --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, line",
    [
        (["model.lora={rank: 0, alpha: 16}"], "model.lora.rank=0: must be >= 1"),
        (["model.lora={rank: 8, alpha: -1}"], "model.lora.alpha=-1: must be > 0"),
        (["model.lora={rank: 8, alpha: 16, init: kaiming}"], "model.lora.init=kaiming: true, false or one of gaussian"),
        (["model.lora={rank: 8, alpha: 16, dropout: 1.5}"], "model.lora.dropout=1.5: must be < 1"),
        (["model.lora={rank: 8, alpha: 16, rnak: 4}"], "model.lora.rnak=4: not a key of model"),
        (["model.lora={rank: 8, alpha: 16, target_modules: []}"], "model.lora.target_modules=[]"),
        (["model=flux_dev", "model.lora.rank=-4"], "model.lora.rank=-4: must be >= 1"),
        (["model=flux_dev", "model.height=700"], "model.height=700: a multiple of 16"),
        (["model=sd35_medium", "model.guidance_scale=-1"], "model.guidance_scale=-1: must be >= 0"),
        (["model=sd35_medium", "model.text_encoders_offload=disk"], "model.text_encoders_offload=disk: must be 'cpu'"),
        (["model=flux_dev", "model.dtype=float8"], "model.dtype=float8: must be 'float32'"),
        (["model=flux_dev", "model.max_sequence_length=1024"], "model.max_sequence_length=1024: must be <= 512"),
        (["model=flux_dev", "model.lora_weights=/no/such/adapter"], "model.lora_weights=/no/such/adapter: no such directory"),
        (["model.device=gpu0"], "model.device=gpu0: auto, cpu, mps, cuda or cuda:<index>"),
        (["model.world=moon"], "model.world=moon: one of shapes, geneval"),
        (["+model.heigth=64"], "model.heigth=64: not an argument of flowrl.models.tiny_flux.load_tiny_flux"),
        (
            ["model=flux_dev", "+model.heigth=64"],
            "model.heigth=64: not an argument of flowrl.models.flux.load_flux (did you mean height?)",
        ),
    ],
)
def test_model_knobs_are_checked_before_any_model_loads(make_cfg, overrides, line):
    tiny = not any(o.startswith("model=") for o in overrides)
    with pytest.raises(ConfigError) as err:
        check_config(make_cfg(*([WORLD] if tiny else []), *overrides))
    assert line in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_model_lora_rank_0_through_the_cli(tmp_path):
    proc = subprocess.run(
        [PY, "-m", "flowrl.train", WORLD, "model.lora={rank: 0, alpha: 16}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["flowrl: model.lora.rank=0: must be >= 1"], proc.stderr


# ---- devices ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, gpus, warned",
    [
        (
            ["trainer=ddp", "trainer.devices=3", "trainer.accelerator=cpu"],
            (),
            "trainer.devices=3 is more than this machine's 2 CPU cores",
        ),
        (["trainer.devices=3"], (), "2 CPU cores (accelerator auto)"),  # auto without a GPU is the CPU
        (["trainer=ddp", "trainer.devices=2"], (), None),
        (
            ["trainer=ddp", "trainer.devices=4", "trainer.accelerator=gpu"],
            (80 * GB, 80 * GB),
            "trainer.devices=4 is more than the 2 visible GPU(s)",
        ),
        (["trainer=ddp", "trainer.devices=4"], (80 * GB,), "more than the 1 visible GPU(s)"),
        (["trainer=ddp", "trainer.devices=2"], (80 * GB, 80 * GB), None),
        (["trainer=ddp", "trainer.devices=[0,1,2]", "trainer.accelerator=cpu"], (), "trainer.devices=3"),
    ],
)
def test_more_devices_than_cores_or_gpus_is_one_warning(make_cfg, machine, overrides, gpus, warned):
    machine(gpus=gpus, cores=2)
    found = feasibility.device_warnings(make_cfg(*overrides))
    if warned is None:
        assert found == []
    else:
        assert len(found) == 1 and warned in found[0] and found[0].startswith("warning: "), found


def test_the_warning_is_printed_once_by_the_command_line_check(machine, capsys, tmp_path, monkeypatch):
    from flowrl.config.compose import check_command_line

    monkeypatch.chdir(tmp_path)
    check_command_line(["-m", WORLD, "trainer.devices=3", "seed=1,2", f"logger.tracking_uri=sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowrl: warning: trainer.devices=3 is more than this machine's 2 CPU cores")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning launched: rank 0 has said it
    check_command_line([WORLD, "trainer.devices=3"])
    assert capsys.readouterr().err == ""


# ---- +trainer.<kwarg> ---------------------------------------------------------------------------
def test_trainer_kwargs_pass_through_to_lightning_and_a_wrong_one_is_one_line(make_cfg):
    import inspect

    from hydra.utils import instantiate
    from lightning.pytorch import Trainer

    # the argument list read from Lightning's source is its Trainer's signature
    real = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    assert feasibility.callable_arguments("lightning.pytorch.Trainer") == real
    with pytest.raises(ConfigError) as err:
        check_config(make_cfg(WORLD, "+trainer.detect_anomali=true"))
    assert (
        str(err.value)
        == "trainer.detect_anomali=True: not an argument of lightning.pytorch.Trainer (did you mean detect_anomaly?)"
    )
    cfg = make_cfg(WORLD, "+trainer.detect_anomaly=true", "+trainer.max_time=00:00:05:00")
    check_config(cfg)
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer._detect_anomaly is True
