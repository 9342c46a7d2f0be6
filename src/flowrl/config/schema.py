"""Schemas of the config groups (pydantic), checked right after composition, before any model,
reward or Lightning import, so that a bad value fails in about a second with one line that
names the key, the value and what is allowed (flowrl.config.errors.ConfigError, exit status 2).

Each group's schema holds the keys every option of the group shares. A method's own knobs are
checked by the typed Knobs model its step scheduler declares (the class `method.step_scheduler.
_target_` names), then by the scheduler's constructor and its first plan (cheap: no model).
Paths the run will read (a model directory, prompt files, a resume directory) are resolved and
must exist.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


# flowrl.sampling.sigmas.SIGMA_GRIDS, spelt out here: the schema imports no torch (a test keeps them equal)
SigmaGrid = Literal["shifted_linspace", "flow_match_euler"]
# What the config check builds a step scheduler on: a grid of the same length is enough to lay out
# a plan (its values never decide whether it can run), and it needs no diffusers import (~3 s).
CHECK_SIGMA_GRID = "shifted_linspace"


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
    check_lr_finetune: bool = True
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
    final_samples_per_prompt: PosInt | None = None
    ci_resamples: PosInt
    max_prompts: PosInt | None = None
    before_cache: str | None = None
    budget_fractions: list[Annotated[float, Field(gt=0, lt=1)]] = [0.25, 0.5, 0.75]


class BudgetSchema(_Closed):
    nfe: PosFloat | None = None
    reward_queries: PosFloat | None = None
    wall_s: PosFloat | None = None


class EmaSchema(_Closed):
    decay: Annotated[float, Field(ge=0, lt=1)]
    every: PosInt
    warmup: bool


class MethodSchema(_Open):
    """The keys every method shares. A method's own knobs are checked by the Knobs model its step
    scheduler declares (check_method_knobs), so no variant's knob is named here."""

    name: str
    num_steps: PosInt
    shift: PosFloat
    sigma_grid: SigmaGrid = "shifted_linspace"
    group_size: Annotated[int, Field(ge=2, description="a group-relative advantage needs a group")]
    noise_level: NonNegFloat
    clip_eps: PosFloat
    adv_clip: PosFloat
    kl_beta: NonNegFloat
    kl_form: Literal["official", "transition"] | None = None
    multi_reward: Literal["combined", "sum_advantages", "weighted_sum_advantages"] | None = None
    lr: PosFloat
    lrs: dict[Literal["full", "lora"], PosFloat | None] | None = None
    ema: EmaSchema | None = None
    step_scheduler: dict[str, Any]


class DataSchema(_Open):
    train_file: str | None = None
    val_file: str | None = None

    @field_validator("train_file", "val_file")
    @classmethod
    def _exists(cls, v):
        if v is not None:
            problem = prompt_file_problem(Path(v).expanduser())
            if problem:
                raise ValueError(problem)
        return v


def prompt_file_problem(path: Path) -> str | None:
    """Why a prompt file cannot be read as one prompt per line, or None: before any model loads."""
    import os

    if not path.exists():
        return "no such prompt file (one prompt per line)"
    if not path.is_file():
        return "not a regular file (a prompt file: one prompt per line)"
    if not os.access(path, os.R_OK):
        return "the prompt file is not readable (permissions)"
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return f"the prompt file cannot be read as text ({type(err).__name__})"
    if not any(ln.strip() and not ln.lstrip().startswith("#") for ln in lines):
        return "the prompt file has no prompt (empty or only blank / # lines; one prompt per line)"
    return None


# peft's init_lora_weights: True (A Kaiming, B 0), False (both random: the first ratio is not 1), or a named init
LORA_INITS = ("gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal")


class LoraSchema(_Closed):
    """`model.lora` (flowrl.models.lora.add_lora): checked here, before the model loads, where
    rank 0 used to fail in peft after loading (8 s on the tiny model, 12B parameters on FLUX)."""

    rank: Annotated[int, Field(ge=1, description="the adapter's rank")]
    alpha: Annotated[float, Field(gt=0, allow_inf_nan=False, description="the adapter's scale is alpha / rank")]
    target_modules: Annotated[list[str], Field(min_length=1)] | None = None
    init: bool | str = True
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @field_validator("init")
    @classmethod
    def _init(cls, v):
        if isinstance(v, str) and v not in LORA_INITS and not (v.startswith("pissa_niter_") and v[12:].isdigit()):
            raise ValueError(f"true, false or one of {', '.join(LORA_INITS)}, pissa_niter_<n> (peft's init_lora_weights)")
        return v


class ModelSchema(_Open):
    """The knobs the model loaders share (each loader's own argument list is checked by
    flowrl.config.feasibility.check_arguments): typed and ranged before anything loads."""

    path: str | None = None
    world: str | None = None
    lora: LoraSchema | None = None
    lora_weights: str | None = None
    precision: Literal["fp32", "bf16-autocast"] | None = None
    attention: Literal["fp32", "autocast"] | None = None
    device: str | None = None
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] | None = None
    autocast: bool | None = None
    height: PosInt | None = None
    width: PosInt | None = None
    guidance_scale: NonNegFloat | None = None
    cfg_detach_uncond: bool | None = None
    integer_timesteps: bool | None = None
    max_sequence_length: Annotated[int, Field(ge=1, le=512, description="T5's tokens")] | None = None
    gradient_checkpointing: bool | None = None
    compile: bool | None = None
    cache_dir: str | None = None
    text_encoders_offload: Literal["cpu", "delete", "keep"] | None = None
    decode_batch_size: PosInt | None = None

    @field_validator("lora", mode="before")
    @classmethod
    def _no_lora(cls, v):
        return None if v is False else v

    @field_validator("world")
    @classmethod
    def _world(cls, v):
        from flowrl.config.model_files import TINY_WORLDS

        if v is not None and v not in TINY_WORLDS:
            raise ValueError(f"one of {', '.join(TINY_WORLDS)} (an embedded world with shipped weights)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        import re

        if v is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError("auto, cpu, mps, cuda or cuda:<index>")
        return v

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, v):
        if v is not None and v % 16:
            raise ValueError("a multiple of 16 (the VAE's 8x down-sampling, then 2x2 patches)")
        return v

    @field_validator("lora_weights")
    @classmethod
    def _adapter_dir(cls, v):
        if v is not None and not Path(v).expanduser().is_dir():
            raise ValueError("no such directory (an adapter written by save_pretrained)")
        return v


def _first_error(err: ValidationError, group: str) -> tuple[str, Any, str]:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    key = f"{group}.{loc}" if loc else group
    value = e.get("input")
    if e["type"] == "extra_forbidden":
        return key, value, f"not a key of {group}{did_you_mean(loc, _known(group))} (known: {', '.join(_known(group))})"
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


def did_you_mean(name: str, known) -> str:
    """' (did you mean train?)' for the nearest known name (difflib), else ''."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_top_level_keys(cfg) -> None:
    """A top-level key the config file and its groups do not have (`+trian.iterations=1`) is a typo,
    not a new setting: nothing would read it."""
    from flowrl.config.errors import ConfigError

    known = _top_level_keys("train" if "method" in cfg else "evaluate" if "protocol" in cfg else "sample")
    for key in cfg:
        if key not in known:
            raise ConfigError(
                key, cfg.get(key), f"not a key of this config{did_you_mean(key, known)} (known: {', '.join(sorted(known))})"
            )


@functools.cache
def _top_level_keys(config_name: str) -> frozenset[str]:
    """The keys of conf/<config_name>.yaml and the groups of its defaults list, read from the file
    (not composed: inside a running Hydra app, e.g. a joblib or SLURM worker, Hydra cannot be
    initialised again)."""
    from omegaconf import OmegaConf

    from flowrl.config.compose import CONF_DIR

    node = OmegaConf.load(Path(CONF_DIR) / f"{config_name}.yaml")
    groups = set()
    for entry in node.get("defaults", []):
        if isinstance(entry, str):  # "_self_"
            continue
        for key in entry:  # "paths: default", "override /x: y", "reward@rewards.shapes: shapes"
            group = str(key).removeprefix("override ").lstrip("/").split("@")[-1].split("/")[0].split(".")[0]
            groups.add(group)
    # an option that writes at the top level (`# @package _global_`: a model's train.lr_scale) adds its keys
    added = set()
    for group in groups:
        for option in (Path(CONF_DIR) / group).glob("*.yaml"):
            text = option.read_text()
            if text.lstrip().startswith("# @package _global_"):
                added |= {str(k) for k in (OmegaConf.create(text) or {}) if k != "defaults"}
    return frozenset(k for k in node if k != "defaults") | frozenset(groups) | frozenset(added) | {"hydra"}


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
    ("Input should be ", "must be "),
)


SEED_MAX = 2**32 - 1  # seeds feed numpy's SeedSequence and torch generators (32-bit words)


def check_config(cfg) -> None:
    """Raise ConfigError (one line) for the first value of `cfg` that cannot run."""
    from omegaconf import OmegaConf

    from flowrl.config.errors import ConfigError

    check_top_level_keys(cfg)
    for key in ("seed", "val.seed"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX):
            raise ConfigError(key, value, f"an integer in [0, {SEED_MAX}]")

    # a sample config (no method) has only the data and model groups of a run (the model's package may
    # still add a train.lr_scale: not a run's train block)
    groups = SCHEMAS if "method" in cfg else {g: SCHEMAS[g] for g in ("data", "model")}
    for group, schema in groups.items():
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
            raise ConfigError(*_first_error(err, group)) from None
    from flowrl.config.feasibility import check_arguments

    for group in ("model", "trainer"):  # +trainer.<kwarg> goes to Lightning's Trainer: a wrong one is one line
        check_arguments(cfg, group)
    from flowrl.training.budget import Budget

    Budget.from_config(cfg.get("budget"))  # at most one budget (torch-free, so in well under a second)
    check_model_files(cfg)
    if cfg.get("protocol") is not None:  # flowrl.evaluate: its prompt file and checkpoints, before any model loads
        from flowrl.evaluation.protocol import check_protocol
        from flowrl.evaluation.weights import resolve_all

        check_protocol(cfg.protocol)
        resolve_all(cfg.get("checkpoint"))
    if cfg.get("eval_protocol") is not None:  # a run's protocol after its last iteration: its prompt file now, not after training
        from flowrl.evaluation.protocol import check_protocol

        check_protocol(cfg.eval_protocol, "eval_protocol")
    if cfg.get("resume"):
        run = Path(str(cfg.resume)).expanduser()
        if not (run / "checkpoints").is_dir():
            raise ConfigError(
                "resume",
                run,
                "not a run output directory with checkpoints/ (a run writes them every train.checkpoint_every iterations)",
            )
    truth, evals = cfg.get("ground_truth"), cfg.get("eval_rewards")
    if truth not in (None, "auto") and evals is not None and truth not in evals:
        raise ConfigError("ground_truth", truth, f"auto or one of the eval rewards ({', '.join(evals)})")
    if cfg.get("method") is not None:
        check_lr_finetune(cfg)
        check_method_knobs(cfg)
        check_step_scheduler(cfg)


def check_model_files(cfg) -> None:
    """The model's checkpoint files, by the check `flowrl.config.model_files` has for its loader module
    (which names the file and where it is published), without importing torch or the model."""
    from flowrl.config.model_files import CHECKS

    model = cfg.get("model")
    target = model.get("_target_") if model is not None else None
    module = target.rsplit(".", 1)[0] if target else None
    check = CHECKS.get(module)
    if module == "flowrl.models.tiny_flux":
        check(model.get("path"), model.get("world"))
        check_tiny_vocabulary(cfg)
    elif check is not None:
        check(model.get("path"))


def check_tiny_vocabulary(cfg) -> None:
    """The tiny model reads only its world's words (an unknown word is <unk>): prompts of another
    world (data=shapes on the geneval model) would train on noise, so they are refused here, in
    one line naming model.world, before the model loads. Reads the model's json and the prompts."""
    from hydra.utils import instantiate

    from flowrl.config.errors import ConfigError
    from flowrl.config.model_files import TINY_WORLDS, tiny_flux_vocabulary

    model, data = cfg.model, cfg.get("data")
    vocab = tiny_flux_vocabulary(model.get("path"), model.get("world"))
    if not vocab or data is None:
        return
    prompts = instantiate(data)
    words = {w for p in [*prompts.train, *prompts.val] for w in p.lower().split()}
    unknown = sorted(words - vocab)
    if unknown:
        worlds = [w for w in TINY_WORLDS if tiny_flux_vocabulary(None, w) >= words]
        fix = f"model.world={worlds[0]}" if worlds and model.get("path") in (None, "") else "a model pretrained on these prompts"
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ConfigError(
            "model.world" if model.get("path") in (None, "") else "model.path",
            model.get("path") or model.get("world"),
            f"a tiny model whose vocabulary has the data's words (unknown: {shown}); use {fix}",
        )


FINETUNE_KINDS = {"full": "full fine-tune", "lora": "LoRA"}


def check_lr_finetune(cfg) -> None:
    """A method's lr is tuned for one kind of fine-tune: `method.lrs` holds each kind's lr as its
    sources give it (null: none given). A run whose method.lr is the other kind's lr (method=dancegrpo,
    full fine-tune 1e-5, with model=flux_dev's LoRA) is refused in one line naming the fix. An lr of
    one's own (neither value) is taken as given; `train.check_lr_finetune: false` turns the check off
    (the tiny model, on which only the methods' ratios of lr mean anything)."""
    from flowrl.config.errors import ConfigError

    method, train, model = cfg.method, cfg.get("train") or {}, cfg.get("model") or {}
    lrs = method.get("lrs")
    if lrs is None or not train.get("check_lr_finetune", True):
        return
    kind = "lora" if model.get("lora") or model.get("lora_weights") else "full"
    other = "full" if kind == "lora" else "lora"
    lr = method.lr
    if lr == lrs.get(kind) or lrs.get(other) is None or lr != lrs.get(other):
        return
    fix = (
        f"method.lr={lrs[kind]:g} (method.lrs.{kind})"
        if lrs.get(kind) is not None
        else f"an lr of your own (method.lr=...; its sources give none for a {FINETUNE_KINDS[kind]})"
    )
    switch = "model.lora=null" if kind == "lora" else "a model.lora={rank,alpha,target_modules}"
    raise ConfigError(
        "method.lr",
        f"{lr:g}",
        f"{method.name}'s {FINETUNE_KINDS[other]} lr (method.lrs.{other}), but this run is a "
        f"{FINETUNE_KINDS[kind]} (model.lora): use {fix}, or {switch}",
    )


def check_method_knobs(cfg) -> None:
    """`method.*` beyond the shared keys, through the Knobs model of the step scheduler the method
    names (`method.step_scheduler._target_`): types, ranges and cross-key checks in one line; a
    key the scheduler does not declare is refused, with the ones it does."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from flowrl.config.errors import ConfigError

    method = OmegaConf.to_container(cfg.method, resolve=True)
    train = OmegaConf.to_container(cfg.train, resolve=True) if cfg.get("train") is not None else {}
    target = method["step_scheduler"].get("_target_")
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError("method.step_scheduler._target_", target, "not an importable step scheduler class") from None
    knobs_model = cls.knobs
    own = {k: v for k, v in method.items() if k not in MethodSchema.model_fields}
    try:
        knobs = knobs_model.model_validate(own)
    except ValidationError as err:
        e = err.errors()[0]
        key = "method." + ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            declared = ", ".join(knobs_model.model_fields) or "none"
            hint = did_you_mean(str(e["loc"][-1]), [*knobs_model.model_fields, *MethodSchema.model_fields])
            raise ConfigError(
                key, e.get("input"), f"not a knob of method {method['name']}{hint} ({cls.__name__}; its own knobs: {declared})"
            ) from None
        raise ConfigError(*_first_error(err, "method")) from None
    from flowrl.step_schedulers.base import KnobError

    try:
        knobs.check(method, train)
    except KnobError as err:
        raise ConfigError(err.key, err.value, err.allowed) from None


def check_step_scheduler(cfg) -> None:
    """The method's step scheduler built, and the first plan's update laid out for
    train.prompts_per_step prompts: its own checks (cheap: no model) as one line. Built on the
    CHECK_SIGMA_GRID stand-in of the method's grid (same T): the run builds the real one."""
    from hydra.utils import instantiate

    from flowrl.config.errors import UserFacingError
    from flowrl.config.feasibility import check_rollout_memory

    try:
        sched = instantiate(cfg.method.step_scheduler, sigma_grid=CHECK_SIGMA_GRID)
        plan = sched.plan(0)
    except Exception as err:
        raise UserFacingError(f"method={cfg.method.name}: {_root_cause(err)}") from None
    check_rollout_memory(cfg, plan)  # before laying out the update: an absurd G makes that slow too
    try:
        plan.optimizer_steps(cfg.train.prompts_per_step)
    except Exception as err:
        raise UserFacingError(f"method={cfg.method.name}: {_root_cause(err)}") from None


def _root_cause(err: Exception) -> str:
    """The first line of the innermost cause (hydra's InstantiationException wraps the scheduler's own error)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0]
