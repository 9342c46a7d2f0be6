"""GRPO variants as step schedulers: the base class (base.py), one file per variant, shared helpers
in _common.py. A variant file imports the contract, the math and _common, never another variant."""

from flowrl.step_schedulers.base import StepScheduler

__all__ = ["StepScheduler"]
