"""`train(cfg)`: one GRPO run, read as a table of contents (lightning-hydra-template's `train()`),
with every failure handled in one place (`task_wrapper`).

    resume? -> seed -> build -> open the MLflow run -> [restore] -> trainer -> run length
            -> calibrate + evaluate (before) -> fit -> evaluate (after) -> save the final model
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from omegaconf import DictConfig

from flowrl.training.build import (
    build_module,
    calibration_prompts,
    held_out_prompts,
    prompt_loaders,
    seed_everything,
    silence_known_warnings,
)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job; returns {'before/val/reward/<r>': ..., 'after/val/reward/<r>': ...}."""
    from hydra.utils import instantiate

    from flowrl.training.console import header
    from flowrl.training.distributed import is_rank_zero
    from flowrl.training.run_control import StopRequest
    from flowrl.training.tracking import run_name

    silence_known_warnings()
    cfg, ckpt = resolve_resume(cfg)  # resume=<run dir>: its config and latest checkpoint
    seed_everything(cfg.seed)
    module, data = build_module(cfg)
    if hasattr(module.model, "precompute_prompts"):  # real backends: embed every prompt once, then free the text encoders
        module.model.precompute_prompts(list(data.train) + list(data.val))
    logger = instantiate(cfg.logger, run_name=cfg.logger.run_name or run_name(cfg), run_id=ckpt.run_id if ckpt else None)
    stop = StopRequest()
    with task_wrapper(cfg, logger, module, stop):
        start_or_resume(cfg, logger, module, ckpt)
        # every evaluation (before, in the loop, after) on the same held-out prompts (all, or val.max_prompts of them)
        val_prompts = held_out_prompts(list(data.val), cfg.val.get("max_prompts"))
        trainer, control = make_trainer(cfg, logger, stop, val_prompts)
        iterations = run_length(cfg, control, trainer)
        if is_rank_zero():
            print(header(cfg, f"{iterations} iterations" + (f" (budget {control.budget})" if control.budget else "")))
        train_loader, val_loader = prompt_loaders(data, cfg, iterations, val_prompts, start=module.iteration)
        stop.install()  # SIGTERM / SIGINT: finish the iteration, checkpoint, end KILLED
        before = evaluate_before(cfg, logger, module, trainer, data, val_loader, resumed=ckpt is not None)
        if len(train_loader):
            trainer.fit(module, train_loader)  # no val loader: run_control evaluates in the loop
        after = evaluate_after(module, trainer, val_loader)
        if cfg.get("eval_protocol") is not None:  # eval_protocol=<name>: a paper's protocol on the final weights, in this run
            from flowrl.evaluation.report import run_in_training

            after |= run_in_training(cfg, module, logger)
    summary = {f"before/{k}": v for k, v in before.items()} | {f"after/{k}": v for k, v in after.items()}
    out = save_final_model(cfg, module, trainer)  # FSDP: a collective; only rank 0 writes
    if is_rank_zero():
        from flowrl.training.tracking import log_artifact_path

        log_artifact_path(logger, out, "final_model")
        print_before_after(before, after)
        logger.end_run("success")
        print_closing(cfg, logger, out)
    return summary


def print_closing(cfg: DictConfig, logger, out: Path) -> None:
    """Where the results are: the final model, the MLflow run, the URL that opens it."""
    from flowrl.training.console import closing
    from flowrl.training.tracking import resolve_tracking_uri

    run = logger.experiment.get_run(logger.run_id)
    uri = resolve_tracking_uri(cfg.logger.get("tracking_uri"))
    print(closing(out, run.info.run_name, logger.run_id, cfg.logger.experiment_name, logger.experiment_id, uri))


@contextlib.contextmanager
def task_wrapper(cfg: DictConfig, logger, module, stop):
    """Every failure of a run, handled once: the MLflow run keeps what was logged and ends FAILED
    (KILLED on a signal), with the error as a tag and its traceback in <output dir>/error.txt; a
    preempted run prints the command that resumes it. The signal handlers are always removed."""
    from flowrl.training.distributed import is_rank_zero, leave_together, release_children
    from flowrl.training.run_control import Preempted

    try:
        yield
    except BaseException as error:
        trainer = getattr(module, "_trainer", None)
        children = release_children(trainer)  # rank 0 watches the ranks it launched itself from here on
        killed = stop.signal_name is not None or isinstance(error, (KeyboardInterrupt, Preempted))
        if is_rank_zero():
            _end_failed_run(logger, cfg, error, getattr(module, "reward_traceback", None), killed)
            resume = f"resume with: python -m flowrl.train resume={cfg.paths.output_dir}"
            if isinstance(error, Preempted):
                print(f"flowrl: {error}; {resume}", file=sys.stderr)
            elif stop.interrupted:  # the checkpoint being written, if any, was dropped: the earlier ones stand
                print(f"flowrl: a second {stop.signal_name}: stopped at once, run KILLED; {resume}", file=sys.stderr)
        # after a preemption every rank is here, after the same iteration: they leave together
        leave_together(children, agreed=isinstance(error, Preempted))
        raise
    finally:
        stop.uninstall()


def _end_failed_run(logger, cfg: DictConfig, error: BaseException, reward_traceback: str | None, killed: bool) -> None:
    """A new run, or a resumed one this process had made RUNNING again, ends FAILED (KILLED on a
    signal) with its error. A resume never rewrites the status its run had before: a FINISHED run
    whose continuation failed stays FINISHED, and a resume that failed before reopening its run
    (a checkpoint that would not load) leaves the status alone; the error is the tag `resume_error`."""
    before = getattr(logger, "status_before_resume", None)
    if not cfg.get("resume") or before not in (None, "FINISHED"):
        _record_failure(logger, cfg, error, reward_traceback)
        logger.end_run("KILLED" if killed else "failed")
        return
    logger.experiment.set_tag(logger.run_id, "resume_error", f"{type(error).__name__}: {error}"[:5000])
    if before == "FINISHED":
        logger.experiment.set_terminated(logger.run_id, "FINISHED")


def start_or_resume(cfg: DictConfig, logger, module, ckpt) -> None:
    """A new run logs its params and tags; a resumed one restores the module and reopens the same
    MLflow run (RUNNING again; steps it logged after the checkpoint are not logged twice)."""
    from flowrl.training.checkpoint import load_optimizer_state, restore_module
    from flowrl.training.distributed import is_rank_zero
    from flowrl.training.tracking import log_run_metadata, reopen_run

    if ckpt is None:
        if is_rank_zero():
            log_run_metadata(logger, cfg, seed=cfg.seed)
        return
    from flowrl.config.errors import UserFacingError

    try:
        restore_module(module, ckpt)
        module.resume_optimizer_state = load_optimizer_state(ckpt)
    except Exception as err:  # verified, yet not this run's model (e.g. another model's weights)
        raise UserFacingError(f"checkpoint {ckpt.path} does not load: {err}") from err
    if is_rank_zero():
        reopen_run(logger)


def make_trainer(cfg: DictConfig, logger, stop, val_prompts: list[str]):
    """(Lightning Trainer, RunControl): the callback that evaluates, checkpoints and stops."""
    from hydra.utils import instantiate

    from flowrl.training.budget import Budget
    from flowrl.training.run_control import RunControl, own_signals

    control = RunControl(
        val_prompts=val_prompts,
        val_every=cfg.trainer.val_check_interval,
        budget=Budget.from_config(cfg.get("budget")),
        checkpoint_every=cfg.train.checkpoint_every,
        save=make_checkpoint_saver(cfg, logger, stop),
        stop=stop,
        fractions=tuple(cfg.val.get("budget_fractions") or ()),
    )
    from flowrl.training.console import progress_bar

    bar = progress_bar()  # Lightning's, in flowrl's words
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[control.callback()] + ([bar] if bar else []))
    own_signals(trainer)  # flowrl's StopRequest handles SIGTERM / SIGINT, on every rank alike
    return trainer, control


def run_length(cfg: DictConfig, control, trainer) -> int:
    """train.iterations, or the iterations a budget for the whole run buys (every rank spends its
    own share), with evaluations at fractions of it."""
    from hydra.utils import instantiate

    if control.budget is None:
        return cfg.train.iterations
    plan = instantiate(cfg.method.step_scheduler).plan(0)  # a fresh instance: plan() may move state
    return control.budget.max_iterations(plan.cost(cfg.train.prompts_per_step * trainer.world_size))


def evaluate_before(cfg: DictConfig, logger, module, trainer, data, val_loader, resumed: bool) -> dict[str, float]:
    """The held-out rewards before training (after the method's calibration, if any); a resumed
    run reads them back from its MLflow run."""
    from flowrl.training.distributed import is_rank_zero
    from flowrl.training.tracking import first_logged

    if resumed:
        return (first_logged(logger, "val/reward/") | first_logged(logger, "val/category/")) if is_rank_zero() else {}
    module.calibrate(calibration_prompts(data, cfg), logger)  # a no-op unless the method calibrates
    if not cfg.val.get("before_cache") or trainer.world_size > 1:
        return held_out_rewards(trainer, module, val_loader)
    from flowrl.training.eval_cache import before_key, cached_evaluation

    def compute() -> dict:
        returned = held_out_rewards(trainer, module, val_loader)
        return {"returned": returned, "logged": module.last_logged}

    key = before_key(module, list(val_loader.dataset), cfg)
    record, hit = cached_evaluation(cfg.val.before_cache, key, compute)
    if hit:
        print(f"flowrl: the evaluation before training read from {cfg.val.before_cache} (same weights, prompts and noises)")
        module.replay_evaluation(record["logged"], logger)
    return record["returned"]


def evaluate_after(module, trainer, val_loader) -> dict[str, float]:
    """The final evaluation, unless the loop just made it (its last iteration was an evaluation point)."""
    if module.evaluated_at == module.iteration and module.last_eval_final:
        return {f"val/reward/{k}": v for k, v in module.last_eval.items()} | module.last_categories
    return held_out_rewards(trainer, module, val_loader)


def held_out_rewards(trainer, module, val_loader) -> dict[str, float]:
    """One evaluation on the held-out prompts: {'val/reward/<name>': mean}. Read from the
    callback metrics because the module logs these to MLflow itself (at its own step)."""
    trainer.validate(module, val_loader, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def save_final_model(cfg: DictConfig, module, trainer) -> Path:
    """<output dir>/final_model: the evaluated weights (the EMA when on). A LoRA as diffusers loads
    it, a full transformer or FSDP's gathered weights as safetensors."""
    from safetensors.torch import save_file

    from flowrl.training.distributed import full_trainable_state, is_rank_zero

    gathered = full_trainable_state(module, trainer)  # FSDP only: a collective, every rank takes part
    out = Path(cfg.paths.output_dir) / "final_model"
    if not is_rank_zero():
        return out
    with module.evaluated_weights():
        if gathered is not None:  # FSDP: the gathered weights (load with load_state_dict)
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in gathered.items()}, str(out / "trainable.safetensors"))
        elif hasattr(module.model, "save_pretrained"):
            module.model.save_pretrained(out)
        else:
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in module.model.state_dict().items()}, str(out / "model.safetensors"))
    return out


def print_before_after(before: dict[str, float], after: dict[str, float]) -> None:
    for key in sorted(after):
        if key in before:
            print(f"{key:<22} before {before[key]:.4f}   after {after[key]:.4f}")


def resolve_resume(cfg: DictConfig):
    """(config, checkpoint): with `resume=<run output dir>`, that run's config (saved in its
    checkpoints) with this command line's other overrides on top (e.g. a longer train.iterations),
    and its latest checkpoint; without, (cfg, None)."""
    if not cfg.get("resume"):
        return cfg, None
    from omegaconf import OmegaConf

    from flowrl.config.errors import ConfigError
    from flowrl.training.checkpoint import latest_intact
    from flowrl.training.distributed import is_rank_zero

    run_dir = Path(str(cfg.resume)).expanduser()
    ckpt, damaged = latest_intact(run_dir)  # each verified before use, the newest intact one chosen
    if ckpt is None:
        found = "; ".join(f"{p.name}: {why}" for p, why in damaged)
        raise ConfigError(
            "resume",
            run_dir,
            f"no intact checkpoint under {run_dir / 'checkpoints'} ({found})"
            if damaged
            else f"no checkpoint under {run_dir / 'checkpoints'} (a run writes one every train.checkpoint_every iterations and on SIGTERM / SIGINT)",
        )
    if is_rank_zero():
        if damaged:
            skipped = "; ".join(f"{p.name} is damaged ({why})" for p, why in damaged)
            print(f"flowrl: {skipped}; falling back to {ckpt.path.name}, the newest intact checkpoint")
        print(f"flowrl: resuming from iteration {ckpt.iteration} (checkpoint {ckpt.path})")
    # the config as composed, interpolations kept, so that an override re-resolves what depends on
    # it (method.<knob> feeds method.step_scheduler.<knob>); the run's own output dir in place of Hydra's
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

    from flowrl.config.errors import CheckpointFailed
    from flowrl.training.checkpoint import latest_checkpoint, save_checkpoint
    from flowrl.training.tracking import _resolved

    config = _resolved(cfg)
    unresolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]), resolve=False)

    def save(module, trainer) -> Path | None:
        from flowrl.training.distributed import full_trainable_state, is_fsdp

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
