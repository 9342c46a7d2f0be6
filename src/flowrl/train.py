"""GRPO training: `python -m flowrl.train [overrides]` (or `make train` for the embedded default).

Reads as a table of contents: compose (or resume) -> instantiate -> validate (before) -> fit
(evaluations, checkpoints and stops by flowrl.run_control) -> validate (after) -> save.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


class PromptBatches:
    """The train prompts of iterations start, start+1, ..., iterations-1: batch i is P prompts drawn
    (with replacement) by a generator seeded with (seed, i, rank), so the iteration count alone is
    the sampler's position (a resumed run draws what the uninterrupted one would have) and every
    DDP rank has prompts of its own."""

    def __init__(self, prompts, per_step: int, iterations: int, seed: int, start: int = 0, rank: int | None = None):
        self.prompts, self.per_step, self.iterations, self.seed, self.start = list(prompts), per_step, iterations, seed, start
        self.rank = rank  # None: this process's rank, read when a batch is drawn (under DDP, at fit time)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)

    def __getitem__(self, i: int) -> list[str]:
        import torch

        from flowrl.distributed import rank_and_world

        rank = rank_and_world()[0] if self.rank is None else self.rank  # under DDP each rank draws its own prompts
        # (torch's CPU generator keeps only the low 32 bits of a seed: the rank offset must live there)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.start + i + rank * 7_919_993) % 2**32)
        return [self.prompts[j] for j in torch.randint(len(self.prompts), (self.per_step,), generator=g).tolist()]


def _identity(batch):
    return batch


def prompt_loaders(data, cfg: DictConfig, iterations: int, start: int = 0):
    """Train: the prompt batches of iterations start..iterations-1; val: all held-out prompts at once."""
    from torch.utils.data import DataLoader

    batches = PromptBatches(data.train, cfg.train.prompts_per_step, iterations, cfg.seed, start)
    train = DataLoader(batches, batch_size=None, collate_fn=_identity)
    val = DataLoader(data.val, batch_size=len(data.val), collate_fn=list)
    return train, val


def calibration_prompts(data, cfg: DictConfig) -> list[str]:
    """The prompts a method's pre-training calibration may draw from: the train prompts in a
    fixed (seeded) shuffle, so calibration never sees held-out prompts."""
    import random

    prompts = list(data.train)
    random.Random(cfg.seed).shuffle(prompts)
    return prompts


def build_module(cfg: DictConfig):
    """Instantiate everything a GRPO run needs from the config: (module, prompt data).
    Cheap, fail-fast parts first (prompt files, step plan), then the checkpoints (each loader checks
    its files before importing its library), and only then Lightning (~10 s to import)."""
    from hydra.utils import instantiate

    from flowrl.budget import Budget
    from flowrl.schema import check_config

    # every value that cannot run fails here, in a second, before any model loads (flowrl.schema
    # also builds a throwaway step scheduler and lays out its first update)
    check_config(cfg)
    Budget.from_config(cfg.get("budget"))
    data = instantiate(cfg.data)
    step_scheduler = instantiate(cfg.method.step_scheduler)
    # rewards before the model: a missing reward checkpoint is reported before FLUX (24 GB) loads
    reward = instantiate(cfg.reward)
    eval_rewards = {name: instantiate(r) for name, r in cfg.eval_rewards.items()}
    model = instantiate(cfg.model)

    from flowrl.modules.grpo_module import GRPOModule, OptimConfig, ValConfig
    from flowrl.update import LossConfig

    ema = cfg.method.get("ema") or {}
    optim = OptimConfig(
        lr=cfg.method.lr * cfg.train.lr_scale,
        weight_decay=cfg.train.weight_decay,
        grad_clip=cfg.train.grad_clip,
        ema_decay=ema.get("decay", 0.0),
        ema_every=ema.get("every", 1),
        ema_warmup=ema.get("warmup", False),
    )
    loss = LossConfig(
        clip_eps=cfg.method.clip_eps,
        adv_clip=cfg.method.adv_clip,
        kl_beta=cfg.method.kl_beta,
        kl_form=cfg.method.get("kl_form", "official"),
    )
    module = GRPOModule(
        model,
        reward,
        eval_rewards,
        step_scheduler,
        shift=cfg.method.shift,
        max_batch=cfg.train.max_batch,
        optim=optim,
        loss=loss,
        val=ValConfig(**cfg.val),
        seed=cfg.seed,
        max_consecutive_skips=cfg.train.max_consecutive_skips,
    )
    return module, data


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (what Lightning's seed_everything does, without importing it)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def silence_known_warnings() -> None:
    """Lightning output that every run would print and that says nothing about it: the frozen
    reward models (and a full fine-tune's KL reference) are in eval mode on purpose, Lightning
    2.6's own pytree code trips a torch deprecation, and each Trainer advertises a cloud logger."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # bf16 autocast (model.precision): diffusers' RMSNorm keeps fp32 weights, torch says so every forward
    warnings.filterwarnings("ignore", message=r"Mismatch dtype between input and weight")
    # fit gets no val loader on purpose: flowrl.run_control evaluates inside the loop
    warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_litlogger_tip not in rank_zero.filters:
        rank_zero.addFilter(_drop_litlogger_tip)


def _drop_litlogger_tip(record) -> bool:
    """A logging filter (a callable works as one): False drops the record."""
    return "litlogger" not in record.getMessage()


def held_out_rewards(trainer, module, val_loader) -> dict[str, float]:
    """One evaluation on the held-out prompts: {'val/reward/<name>': mean}. Read from the
    callback metrics because the module logs these to MLflow itself (at its own step)."""
    trainer.validate(module, val_loader, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def resolve_resume(cfg: DictConfig):
    """(config, checkpoint): with `resume=<run output dir>`, that run's config (saved in its
    checkpoints) with this command line's other overrides on top (e.g. a longer train.iterations),
    and its latest checkpoint; without, (cfg, None)."""
    if not cfg.get("resume"):
        return cfg, None
    from omegaconf import OmegaConf

    from flowrl.checkpoint import latest_checkpoint
    from flowrl.errors import ConfigError

    run_dir = Path(str(cfg.resume)).expanduser()
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ConfigError(
            "resume",
            run_dir,
            f"no checkpoint under {run_dir / 'checkpoints'} (a run writes one every train.checkpoint_every iterations and on SIGTERM / SIGINT)",
        )
    # the config as composed, interpolations kept, so that an override re-resolves what depends on
    # it (method.tau feeds method.step_scheduler.tau); the run's own output dir in place of Hydra's
    resolved = ckpt.state["config"]
    saved = OmegaConf.create(ckpt.state.get("config_unresolved") or resolved)
    saved.paths.output_dir = str(resolved["paths"]["output_dir"])
    for key, value in _cli_overrides():
        if key != "resume":
            OmegaConf.update(saved, key, value, merge=True)
    saved.resume = str(run_dir)
    return saved, ckpt


def _cli_overrides() -> list[tuple[str, object]]:
    """This command line's overrides as (key, value), when run by hydra.main (none otherwise)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    parsed = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return [(o.key_or_group, o.value()) for o in parsed if not o.key_or_group.startswith("hydra")]


def make_checkpoint_saver(cfg: DictConfig, logger, stop):
    """save(module, trainer): a checkpoint in <output dir>/checkpoints/. A failed periodic one (a
    full disk) is reported and the run goes on with its earlier checkpoints; one a stop request
    asked for ends the run with the error."""
    from omegaconf import OmegaConf

    from flowrl.checkpoint import latest_checkpoint, save_checkpoint
    from flowrl.errors import CheckpointFailed
    from flowrl.tracking import _resolved

    config = _resolved(cfg)
    unresolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]), resolve=False)

    def save(module, trainer) -> Path | None:
        from flowrl.distributed import full_trainable_state, is_fsdp

        full = full_trainable_state(module, trainer)  # FSDP: every rank gathers, rank 0 gets the weights
        optim = trainer.strategy.optimizer_state(trainer.optimizers[0]) if is_fsdp(trainer) else None
        if not trainer.is_global_zero:
            return None
        try:
            path = save_checkpoint(
                module,
                trainer.optimizers[0],
                cfg.paths.output_dir,
                logger.run_id,
                config,
                cfg.train.keep_checkpoints,
                unresolved,
                trainable=full,
                optimizer_state=optim,
            )
        except OSError as err:
            last = latest_checkpoint(cfg.paths.output_dir)
            msg = f"checkpoint after iteration {module.iteration} failed ({err}); the last good one is {last.path if last else 'none'}"
            print(f"flowrl: {msg}", file=sys.stderr)
            logger.experiment.set_tag(logger.run_id, "checkpoint_error", msg)
            if stop.signal_name is not None:
                raise CheckpointFailed(msg) from err
            return None
        logger.experiment.set_tag(logger.run_id, "last_checkpoint", str(path))
        return path

    return save


def _record_failure(logger, cfg: DictConfig, error: BaseException, reward_traceback: str | None) -> None:
    """The error on the MLflow run (tag `error`) and its full traceback in <output dir>/error.txt
    (logged as an artifact): the user sees one line, the run keeps the whole story."""
    import traceback

    text = reward_traceback or "".join(traceback.format_exception(error))
    logger.experiment.set_tag(logger.run_id, "error", f"{type(error).__name__}: {error}"[:5000])
    try:
        path = Path(cfg.paths.output_dir) / "error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        logger.experiment.log_artifact(logger.run_id, str(path))
    except OSError:  # a full disk must not hide the original error
        pass


def train(cfg: DictConfig) -> dict[str, float]:
    silence_known_warnings()
    cfg, ckpt = resolve_resume(cfg)  # resume=<run dir>: its config and latest checkpoint
    seed_everything(cfg.seed)
    module, data = build_module(cfg)

    from hydra.utils import instantiate

    from flowrl.budget import Budget, iteration_cost
    from flowrl.checkpoint import load_optimizer_state, restore_module
    from flowrl.distributed import is_rank_zero
    from flowrl.run_control import Preempted, RunControl, StopRequest
    from flowrl.tracking import first_logged, log_artifact_path, log_run_metadata, reopen_run, run_name

    model = module.model
    if hasattr(model, "precompute_prompts"):  # real backends: embed every prompt once, then free the text encoders
        model.precompute_prompts(list(data.train) + list(data.val))
    logger = instantiate(cfg.logger, run_name=cfg.logger.run_name or run_name(cfg), run_id=ckpt.run_id if ckpt else None)
    rank_zero = is_rank_zero()  # under DDP: the one process that writes to MLflow and disk
    stop = StopRequest()
    try:
        if ckpt is None:
            if rank_zero:
                log_run_metadata(logger, cfg, seed=cfg.seed)
        else:  # the same MLflow run, RUNNING again; steps it logged after the checkpoint are not logged twice
            restore_module(module, ckpt)
            module.resume_optimizer_state = load_optimizer_state(ckpt)
            if rank_zero:
                reopen_run(logger)
        control = RunControl(
            val_prompts=list(data.val),
            val_every=cfg.trainer.val_check_interval,
            budget=Budget.from_config(cfg.get("budget")),
            checkpoint_every=cfg.train.checkpoint_every,
            save=make_checkpoint_saver(cfg, logger, stop),
            stop=stop,
        )
        trainer = instantiate(cfg.trainer, logger=logger, callbacks=[control.callback()])
        # the run's length: train.iterations, or a budget for the whole run (every rank spends its
        # own share), with evaluations at fractions of it
        if control.budget is None:
            iterations = cfg.train.iterations
        else:
            plan = instantiate(cfg.method.step_scheduler).plan(0)  # a fresh instance: plan() may move state
            iterations = control.budget.max_iterations(iteration_cost(plan, cfg.train.prompts_per_step * trainer.world_size))
        train_loader, val_loader = prompt_loaders(data, cfg, iterations, start=module.iteration)
        stop.install()  # SIGTERM / SIGINT: finish the iteration, checkpoint, end KILLED
        if ckpt is None:
            module.calibrate(calibration_prompts(data, cfg), logger)  # a no-op unless the method calibrates (DenseGRPO)
            before = held_out_rewards(trainer, module, val_loader)
        else:
            before = first_logged(logger, "val/reward/") if rank_zero else {}
        if len(train_loader):
            trainer.fit(module, train_loader)  # no val loader: run_control evaluates in the loop
        # the final evaluation, unless the loop just made it (its last iteration was an evaluation point)
        if module.evaluated_at == module.iteration:
            after = {f"val/reward/{k}": v for k, v in module.last_eval.items()}
        else:
            after = held_out_rewards(trainer, module, val_loader)
    except BaseException as error:  # the MLflow run keeps what was logged, marked FAILED, or KILLED on a signal
        killed = stop.signal_name is not None or isinstance(error, (KeyboardInterrupt, Preempted))
        if rank_zero:
            _record_failure(logger, cfg, error, getattr(module, "reward_traceback", None))
            logger.end_run("KILLED" if killed else "failed")
        if isinstance(error, Preempted):
            print(f"flowrl: {error}; resume with: python -m flowrl.train resume={cfg.paths.output_dir}", file=sys.stderr)
        raise
    finally:
        stop.uninstall()

    summary = {f"before/{k}": v for k, v in before.items()} | {f"after/{k}": v for k, v in after.items()}
    from flowrl.distributed import full_trainable_state

    gathered = full_trainable_state(module, trainer)  # FSDP only: a collective, every rank takes part
    if not rank_zero:  # rank 0 saves and ends the run
        return summary
    out = Path(cfg.paths.output_dir) / "final_model"
    with module.evaluated_weights():  # the EMA weights when method.ema.decay > 0
        if gathered is not None:  # FSDP: the gathered weights, as safetensors (load with load_state_dict)
            from safetensors.torch import save_file

            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in gathered.items()}, str(out / "trainable.safetensors"))
        elif hasattr(model, "save_pretrained"):
            model.save_pretrained(out)
        else:
            from safetensors.torch import save_file

            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    log_artifact_path(logger, out, "final_model")
    for key in sorted(after):
        if key in before:
            print(f"{key:<22} before {before[key]:.4f}   after {after[key]:.4f}")
    logger.end_run("success")
    return summary


def exit_on_user_error(fn):
    """Run an entry point; a flowrl.errors.UserFacingError (missing checkpoint, bad value) is
    printed as one line, exit status 2, no traceback (HYDRA_FULL_ERROR=1 keeps it). Inside a
    multirun the job fails instead (a plain exception, which Hydra records), so that the other
    jobs still run."""
    import functools
    import os

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from flowrl.errors import UserFacingError

        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = err  # hydra's instantiate wraps what a _target_ raised: walk the chain
            while cause is not None and not isinstance(cause, UserFacingError):
                cause = cause.__cause__ or cause.__context__
            if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"flowrl: {cause}", file=sys.stderr)
            if _in_multirun():
                raise RuntimeError(f"flowrl: {cause}") from None
            raise SystemExit(2) from None

    return wrapper


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


MAX_CHECKED_POINTS = 64  # a sweep's points composed and checked before its first job starts


def check_command_line(argv: list[str], config_name: str = "train") -> None:
    """Everything about a command line that can be checked in about a second, before Hydra runs a
    job: each config-group option exists, each (sweep) point composes, and its values pass the
    schemas (flowrl.schema). Raises UserFacingError with one line."""
    import itertools

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from flowrl.errors import ConfigError, UserFacingError
    from flowrl.schema import check_config

    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception as err:
        raise UserFacingError(f"cannot parse the overrides: {str(err).splitlines()[0]}") from None
    conf = Path(CONF_DIR)
    choices = []
    for o in parsed:
        key = o.key_or_group
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        group = conf / key
        if not key.startswith("hydra") and "." not in key and group.is_dir():
            known = sorted(p.stem for p in group.glob("*.yaml"))
            for v in values:
                if v not in known and v != "null":
                    raise ConfigError(key, v, f"unknown {key} (known: {', '.join(known)})")
        if key.startswith("hydra"):
            continue
        prefix = "+" if o.is_add() else "++" if o.is_force_add() else "~" if o.is_delete() else ""
        choices.append([f"{prefix}{key}={v}" for v in values])
    for point in itertools.islice(itertools.product(*choices), MAX_CHECKED_POINTS):
        try:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose(config_name, overrides=list(point))
        except Exception as err:
            raise UserFacingError(_one_line(err)) from None
        check_config(cfg)


def _one_line(err: Exception) -> str:
    """Hydra's composition errors in one line (the hint about HYDRA_FULL_ERROR left out)."""
    import re

    text = str(err)
    found = re.search(r"Could not override '([^']+)'", text)
    if found:
        key = found.group(1)
        return f"{key}: not a key of this config (a knob of another method or group? see conf/; +{key}=... adds a new key)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    return " ".join(lines) or type(err).__name__


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    """The run; returns `optimized_metric` of its summary for a sweeper (Optuna) to optimise."""
    return train(cfg).get(cfg.get("optimized_metric"))


def cli() -> None:
    """`python -m flowrl.train` / `flowrl-train`: the command line checked first (one line, exit 2,
    in about a second), then Hydra's main."""
    import os

    from flowrl.errors import UserFacingError

    try:
        check_command_line(sys.argv[1:])
    except UserFacingError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"flowrl: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    main()


if __name__ == "__main__":
    cli()
