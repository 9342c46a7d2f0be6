"""Errors a user can fix, reported as one line (no traceback) by the entry points.

`python -m flowrl.train` catches `UserFacingError` and prints `flowrl: <message>` then exits 2.
Raise it before any heavy work: a missing checkpoint must be reported in seconds, not after a
12 GB model has been loaded.
"""

from __future__ import annotations

from pathlib import Path


class UserFacingError(RuntimeError):
    """An error whose message alone tells the user what to do."""


class CheckpointNotFound(UserFacingError):
    """A model or reward checkpoint is missing on local disk (flowrl never downloads at run time)."""

    def __init__(self, what: str, path: str | Path | None, where: str, hint: str = ""):
        shown = "<not set>" if path in (None, "") else str(path)
        msg = f"{what} checkpoint not found: {shown} (get it from {where}"
        msg += f"; {hint})" if hint else ")"
        super().__init__(msg)
        self.path = path


def require_path(what: str, path: str | Path | None, where: str, hint: str = "", kind: str = "any") -> Path:
    """Return `path` as a Path if it exists (kind 'file' / 'dir' / 'any'), else raise CheckpointNotFound."""
    if path in (None, ""):
        raise CheckpointNotFound(what, path, where, hint)
    p = Path(path).expanduser()
    ok = p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    if not ok:
        raise CheckpointNotFound(what, p, where, hint)
    return p


class ConfigError(UserFacingError):
    """A config value that cannot run: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        super().__init__(f"{key}={value}: {allowed}")
        self.key = key


class RewardFailed(UserFacingError):
    """The reward model raised during training; the run ends FAILED, its checkpoints kept."""


class TrainingDiverged(UserFacingError):
    """Too many consecutive updates were skipped for non-finite values (train.max_consecutive_skips)."""


class CheckpointFailed(UserFacingError):
    """A checkpoint a stop request asked for could not be written (e.g. a full disk)."""


def exit_on_user_error(fn):
    """Run an entry point; a UserFacingError (missing checkpoint, bad value) is printed as one
    line, exit status 2, no traceback (HYDRA_FULL_ERROR=1 keeps it). Inside a multirun the job
    fails instead (a plain exception, which Hydra records), so that the other jobs still run.
    A preemption (SIGTERM / SIGINT, checkpointed) exits with 128 + the signal's number (143 for
    SIGTERM), its one line printed by the run, no traceback; in a multirun that stops the sweep."""
    import functools
    import os
    import sys

    from flowrl.training.distributed import is_rank_zero
    from flowrl.training.run_control import Preempted

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Preempted as stop:  # an expected stop: its one line is printed (rank 0), no traceback
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(stop.exit_code) from None
        except KeyboardInterrupt:  # a second signal outside the training loop: stopped at once
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(130) from None
        except Exception as err:
            cause = err  # hydra's instantiate wraps what a _target_ raised: walk the chain
            while cause is not None and not isinstance(cause, UserFacingError):
                cause = cause.__cause__ or cause.__context__
            if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if is_rank_zero():  # under DDP every rank has it: one line
                print(f"flowrl: {cause}", file=sys.stderr)
            if _in_multirun():
                raise RuntimeError(f"flowrl: {cause}") from None
            raise SystemExit(2) from None

    return wrapper


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
