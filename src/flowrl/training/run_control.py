"""When a run evaluates, checkpoints and stops: one Lightning callback, every decision read from the
module's own counters (iterations, budget spent), so that a resumed run makes the same decisions
at the same iterations as an uninterrupted one.

After each iteration, in this order:
  1. held-out evaluation: every `val_every` iterations, or, with a budget, once at each of
     25 / 50 / 75% of it that the iteration crossed (the 0 and 100% evaluations are the run's own,
     before and after training: flowrl.train);
  2. a checkpoint every `checkpoint_every` iterations, and whenever a stop was requested;
  3. stop: a wall-clock budget spent, or SIGTERM / SIGINT received (the iteration running when
     the signal came is finished first, then checkpointed; a second signal interrupts at once).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from flowrl.training.budget import FRACTIONS, Budget


class Preempted(BaseException):
    """Raised after the checkpoint that a SIGTERM / SIGINT asked for: the run ends KILLED. A
    BaseException (as KeyboardInterrupt), so that a Hydra multirun stops too instead of recording
    a failed job and starting the next one."""


@dataclass
class StopRequest:
    """Set by SIGTERM / SIGINT; the run stops after the current iteration."""

    signal_name: str | None = None
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

    def due_evaluation(self, module, spent_before: float | None) -> bool:
        if self.budget is None:
            return self.val_every > 0 and module.iteration % self.val_every == 0
        used = self.budget.spent(module) / self.budget.amount
        before = spent_before / self.budget.amount
        # one evaluation for the fractions this iteration crossed; at 100% the final one is the run's
        return used < 1.0 and any(before < f <= used for f in FRACTIONS)

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
                stopping = decide(control.stop.signal_name is not None, all=False)
                every = control.checkpoint_every
                if stopping or (every > 0 and module.iteration % every == 0):
                    control.save(module, trainer)
                if stopping:
                    name = control.stop.signal_name or "a signal on another rank"
                    raise Preempted(f"{name} after iteration {module.iteration}: checkpointed, run KILLED")
                wall = control.budget is not None and control.budget.kind == "wall_s"
                if wall and decide(control.budget.spent(module) >= control.budget.amount, all=False):
                    trainer.should_stop = True

        return RunControlCallback()
