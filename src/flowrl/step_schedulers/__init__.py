"""GRPO variants as step schedulers (one algorithm per file)."""

from flowrl.step_schedulers.base import (
    Branch,
    Jump,
    StepPlan,
    StepScheduler,
    StepSettings,
    UpdateSchedule,
    group_normalize,
)

__all__ = ["Branch", "Jump", "StepPlan", "StepScheduler", "StepSettings", "UpdateSchedule", "group_normalize"]
