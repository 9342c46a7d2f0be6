"""The per-iteration contract between the step scheduler, the rollout engine and the policy update.

    plan = step_scheduler.plan(iteration, generator)         # StepPlan: frozen, all the engine and the update see
    ro   = rollout(model, plan, prompts, score_fn, ...)       # flowrl.engine.rollout
    adv  = step_scheduler.advantages(scores, plan, prompts)   # one [M_j, K_j] tensor per jump
    policy_update(model, plan, ro, adv, ...)                  # flowrl.engine.update: the trained-jump loop

This package imports no step scheduler, engine or training code; they all import it.
`plan` holds the records (steps, jumps, branches, the update schedule, the plan and its cost),
`advantages` the reward record and the rewards -> advantages statistics.
"""

from flowrl.contract.advantages import (
    MULTI_REWARD,
    RewardScores,
    branch_group_advantages,
    check_rewards,
    combine_advantages,
    group_normalize,
)
from flowrl.contract.plan import ODE, Branch, Jump, OptimizerStep, StepPlan, StepSettings, TermBlock, UpdateSchedule

__all__ = [
    "MULTI_REWARD",
    "ODE",
    "Branch",
    "Jump",
    "OptimizerStep",
    "RewardScores",
    "StepPlan",
    "StepSettings",
    "TermBlock",
    "UpdateSchedule",
    "branch_group_advantages",
    "check_rewards",
    "combine_advantages",
    "group_normalize",
]
