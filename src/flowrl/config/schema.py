"""Schemas of the config groups (pydantic), checked right after composition, before any model,
reward or Lightning import, so that a bad value fails in about a second with one line that
names the key, the value and what is allowed (flowrl.config.errors.ConfigError, exit status 2).

Each group's schema holds the keys every option of the group shares; a method's own knobs (tau,
window_size, ...) are checked here where they have a range, and again by its step scheduler's
constructor (which the check then instantiates: it is cheap). Paths the run will read (a model
directory, prompt files, a resume directory) are resolved and must exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Open(BaseModel):
    """A group whose options add keys of their own: unknown keys are allowed, known ones checked."""

    model_config = ConfigDict(extra="allow", strict=False)


class _Closed(BaseModel):
    """A group with one fixed set of keys: a misspelt key is an error."""

    model_config = ConfigDict(extra="forbid", strict=False)


class TrainSchema(_Closed):
    iterations: PosInt
    prompts_per_step: PosInt
    max_batch: PosInt
    grad_clip: NonNegFloat
    lr_scale: PosFloat
    weight_decay: NonNegFloat
    checkpoint_every: NonNegInt
    keep_checkpoints: PosInt
    max_consecutive_skips: NonNegInt


class ValSchema(_Closed):
    samples_per_prompt: PosInt
    seed: int
    num_steps: PosInt
    grid_prompts: NonNegInt
    train_grid_every: PosInt
    full_precision: bool


class BudgetSchema(_Closed):
    nfe: PosFloat | None = None
    reward_queries: PosFloat | None = None
    wall_s: PosFloat | None = None


class EmaSchema(_Closed):
    decay: Annotated[float, Field(ge=0, lt=1)]
    every: PosInt
    warmup: bool


class MethodSchema(_Open):
    name: str
    num_steps: PosInt
    shift: PosFloat
    group_size: Annotated[int, Field(ge=2, description="a group-relative advantage needs a group")]
    noise_level: NonNegFloat
    clip_eps: PosFloat
    adv_clip: PosFloat
    kl_beta: NonNegFloat
    lr: PosFloat
    ema: EmaSchema | None = None
    tau: NonNegFloat | None = None
    num_branch_steps: PosInt | None = None
    dense_horizon: PosInt | None = None
    window_size: PosInt | None = None
    gradient_accumulation_steps: PosInt | None = None
    prompts_per_rank: PosInt | None = None
    optimizer_steps_per_rollout: PosInt | None = None
    granularities: list[PosInt] | None = None
    step_scheduler: dict[str, Any]

    @field_validator("granularities")
    @classmethod
    def _distinct(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError("granularities must be distinct")
        return v


class DataSchema(_Open):
    train_file: str | None = None
    val_file: str | None = None

    @field_validator("train_file", "val_file")
    @classmethod
    def _exists(cls, v):
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError("no such prompt file (one prompt per line)")
        return v


class ModelSchema(_Open):
    path: str | None = None
    lora: dict | None = None
    precision: Literal["fp32", "bf16-autocast"] | None = None


def _first_error(err: ValidationError, group: str, cfg_node) -> tuple[str, Any, str]:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    key = f"{group}.{loc}" if loc else group
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        return key, value, f"not a key of {group} (known: {', '.join(_known(group))})"
    if e["type"] == "missing":
        return key, "<missing>", "required"
    msg = e["msg"].removeprefix("Value error, ")
    for theirs, ours in _PHRASES:
        msg = msg.replace(theirs, ours)
    desc = ""
    schema = SCHEMAS.get(group)
    if schema is not None and loc in getattr(schema, "model_fields", {}):
        desc = schema.model_fields[loc].description or ""
    return key, value, msg[0].lower() + msg[1:] + (f" ({desc})" if desc else "")


def _known(group: str) -> list[str]:
    return list(SCHEMAS[group].model_fields)


SCHEMAS = {
    "train": TrainSchema,
    "val": ValSchema,
    "budget": BudgetSchema,
    "method": MethodSchema,
    "model": ModelSchema,
    "data": DataSchema,
}

_PHRASES = (  # pydantic's wording -> flowrl's one line
    ("Input should be greater than or equal to ", "must be >= "),
    ("Input should be greater than ", "must be > "),
    ("Input should be less than or equal to ", "must be <= "),
    ("Input should be less than ", "must be < "),
    ("Input should be a valid integer", "must be an integer"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be a finite number", "must be a finite number"),
    ("Input should be a valid boolean", "must be true or false"),
)


def check_config(cfg) -> None:
    """Raise ConfigError (one line) for the first value of `cfg` that cannot run."""
    from omegaconf import OmegaConf

    from flowrl.config.errors import ConfigError

    for group, schema in SCHEMAS.items():
        node = cfg.get(group)
        if node is None:
            continue
        try:
            data = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except Exception as err:  # a required value (???) not given
            key = getattr(err, "full_key", None) or group
            raise ConfigError(key, "???", "required: give it on the command line") from None
        try:
            schema.model_validate(data)
        except ValidationError as err:
            raise ConfigError(*_first_error(err, group, data)) from None
    from flowrl.training.budget import Budget

    Budget.from_config(cfg.get("budget"))  # at most one budget (torch-free, so in well under a second)
    m, t = cfg.method, cfg.train
    for key in ("num_branch_steps", "dense_horizon"):
        value = m.get(key)
        if value is not None and value > m.num_steps:
            raise ConfigError(f"method.{key}", value, f"at most method.num_steps ({m.num_steps})")
    if m.get("window_size") is not None and m.window_size > m.num_steps - 2:
        raise ConfigError(
            "method.window_size",
            m.window_size,
            f"at most method.num_steps - 2 ({m.num_steps - 2}; MixGRPO's last two steps are never stochastic)",
        )
    ppr = m.get("prompts_per_rank")
    if ppr and m.step_scheduler.get("update", {}).get("step_every") == "samples" and t.prompts_per_step % ppr:
        raise ConfigError(
            "train.prompts_per_step", t.prompts_per_step, f"a multiple of method.prompts_per_rank ({ppr}): whole emulated GPUs"
        )
    cal = m.get("calibration") or {}
    if cal.get("iterations", 0) and (cal.get("num_samples") or m.group_size) < 2:
        raise ConfigError("method.calibration.num_samples", cal.get("num_samples"), ">= 2 (signs are pooled over the samples)")
    check_model_files(cfg)
    if cfg.get("resume"):
        run = Path(str(cfg.resume)).expanduser()
        if not (run / "checkpoints").is_dir():
            raise ConfigError(
                "resume",
                run,
                "not a run output directory with checkpoints/ (a run writes them every train.checkpoint_every iterations)",
            )
    check_step_scheduler(cfg)


def check_model_files(cfg) -> None:
    """The model's checkpoint files, by the check `flowrl.config.model_files` has for its loader module
    (which names the file and where it is published), without importing torch or the model."""
    from flowrl.config.model_files import CHECKS

    model = cfg.get("model")
    target = model.get("_target_") if model is not None else None
    check = CHECKS.get(target.rsplit(".", 1)[0]) if target else None
    if check is not None:
        check(model.get("path"))


def check_step_scheduler(cfg) -> None:
    """The method's step scheduler built, and the first plan's update laid out for
    train.prompts_per_step prompts: its own checks (cheap: no model) as one line."""
    from hydra.utils import instantiate

    from flowrl.config.errors import UserFacingError

    try:
        sched = instantiate(cfg.method.step_scheduler)
        sched.plan(0).optimizer_steps(cfg.train.prompts_per_step)
    except Exception as err:
        cause = err
        while cause.__cause__ is not None:  # hydra's InstantiationException wraps the scheduler's own error
            cause = cause.__cause__
        raise UserFacingError(f"method={cfg.method.name}: {str(cause).splitlines()[0]}") from None
