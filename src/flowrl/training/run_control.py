"""When a run evaluates, checkpoints and stops: one Lightning callback, every decision read from the
module's own counters (iterations, budget spent), so that a resumed run makes the same decisions
at the same iterations as an uninterrupted one.

After each iteration, in this order:
  1. held-out evaluation: every `val_every` iterations, or, with a budget, once at each of
     25 / 50 / 75% of it (val.budget_fractions) that the iteration crossed (the 0 and 100% evaluations are the run's own,
     before and after training: flowrl.train);
  2. a checkpoint every `checkpoint_every` iterations, and whenever a stop was requested;
  3. stop: a wall-clock budget spent, or SIGTERM / SIGINT received (the iteration running when
     the signal came is finished first, then checkpointed; a second signal interrupts at once).

Under DDP a signal handler only sets a flag: the ranks agree to stop in one all-reduce at the end
of an iteration (a known point, where every rank is), rank 0 writes the checkpoint while the others
wait in a second all-reduce that also tells them whether it was written, and every rank leaves
the loop together. Lightning's own SIGTERM handling is switched off (`own_signals`): it runs a
broadcast inside the signal handler (at whatever collective each rank happens to be in) and
forwards the signal to the other ranks, which then see it twice; both hung a group-signalled run.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from flowrl.training.budget import FRACTIONS, Budget


class Preempted(BaseException):
    """Raised after the checkpoint that a SIGTERM / SIGINT asked for: the run ends KILLED. A
    BaseException (as KeyboardInterrupt), so that a Hydra multirun stops too instead of recording
    a failed job and starting the next one. `exit_code`: 128 + the signal's number, as a shell
    reports a process the signal ended (143 for SIGTERM)."""

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.exit_code = 128 + int(getattr(signal.Signals, signal_name or "SIGTERM", signal.SIGTERM))


def own_signals(trainer) -> None:
    """Keep Lightning from installing its SIGTERM handler on this trainer (flowrl's StopRequest
    handles SIGTERM / SIGINT). Lightning's handler calls torch.distributed.broadcast from inside
    the handler, wherever each rank is, and re-sends the signal to the ranks it launched: under a
    signal to the whole process group every rank then hung in mismatched collectives."""
    connector = trainer._signal_connector
    connector.register_signal_handlers = lambda: None
    connector.teardown = lambda: None


@dataclass
class StopRequest:
    """Set by SIGTERM / SIGINT; the run stops after the current iteration."""

    signal_name: str | None = None
    interrupted: bool = False  # a second signal came: stopped at once
    _previous: dict = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a joblib worker thread): leave it alone
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # the second one: stop now
            self.interrupted = True
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


@dataclass
class RunControl:
    val_prompts: list[str]
    val_every: int  # iterations between held-out evaluations (when no budget)
    budget: Budget | None
    checkpoint_every: int  # 0 = only on a stop request
    save: object  # save(module, trainer) -> path: writes a checkpoint
    stop: StopRequest
    fractions: tuple[float, ...] = FRACTIONS  # with a budget: evaluate once at each (val.budget_fractions)

    def due_evaluation(self, module, spent_before: float | None) -> bool:
        if self.budget is None:
            return self.val_every > 0 and module.iteration % self.val_every == 0
        used = self.budget.spent(module) / self.budget.amount
        before = spent_before / self.budget.amount
        # one evaluation for the fractions this iteration crossed; at 100% the final one is the run's
        return used < 1.0 and any(before < f <= used for f in self.fractions)

    def callback(self):
        """The Lightning callback (defined on use: Lightning imports in ~10 s)."""
        from lightning.pytorch.callbacks import Callback

        control = self

        class RunControlCallback(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                self.spent_before = control.budget.spent(module) if control.budget is not None else None

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                # every decision is every rank's (DDP): a signal or a clock on one rank stops all
                decide = trainer.strategy.reduce_boolean_decision
                if decide(control.due_evaluation(module, self.spent_before), all=False):
                    # the run's last iteration: this evaluation is the final one, at the endpoint size
                    last = batch_idx == trainer.num_training_batches - 1
                    module.evaluate(list(control.val_prompts), final=last)
                # the one point where the ranks agree to stop: every rank is here, after the same iteration
                stopping = decide(control.stop.signal_name is not None, all=False)
                every = control.checkpoint_every
                if stopping:
                    self.save_then_stop(trainer, module)
                if every > 0 and module.iteration % every == 0:
                    control.save(module, trainer)
                wall = control.budget is not None and control.budget.kind == "wall_s"
                if wall and decide(control.budget.spent(module) >= control.budget.amount, all=False):
                    trainer.should_stop = True

            def save_then_stop(self, trainer, module):
                """Rank 0 writes; the other ranks wait for it in an all-reduce that also says whether
                the write failed, so no rank leaves while rank 0 still writes."""
                error = None
                try:
                    control.save(module, trainer)
                except Exception as err:  # CheckpointFailed (a full disk): every rank ends with it
                    error = err
                failed = trainer.strategy.reduce_boolean_decision(error is not None, all=False)
                if error is not None:
                    raise error
                if failed:
                    from flowrl.config.errors import CheckpointFailed

                    raise CheckpointFailed(f"the checkpoint after iteration {module.iteration} failed on rank 0")
                name = control.stop.signal_name
                shown = name or "a signal to another rank"
                raise Preempted(f"{shown} after iteration {module.iteration}: checkpointed, run KILLED", name)

        return RunControlCallback()
