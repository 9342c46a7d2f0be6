"""A run's length as a budget instead of a number of iterations, so methods compare at equal cost:

    python -m flowrl.train budget.nfe=200000        # model evaluations, counted as flowrl.plan counts them
    python -m flowrl.train budget.reward_queries=20000
    python -m flowrl.train budget.wall_s=600        # seconds of training iterations (evaluations excluded)

The run stops after the iteration that reaches the budget (so at most one iteration over it) and
evaluates the held-out prompts at fixed fractions of it: 0 (before training) and 100% (after)
as every run does, and 25 / 50 / 75% in between (flowrl.training.run_control), each logged with the NFE
spent (`val/nfe_total`), so that curves of different methods share an x-axis. Every iteration
logs `perf/nfe_total`, `perf/reward_queries_total` and `perf/wall_total`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = {"nfe": "nfe_total", "reward_queries": "reward_queries_total", "wall_s": "wall_total"}
FRACTIONS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Budget:
    kind: str  # nfe | reward_queries | wall_s
    amount: float

    @classmethod
    def from_config(cls, node) -> Budget | None:
        """The one budget set in the `budget:` config block, or None (run train.iterations)."""
        from flowrl.config.errors import UserFacingError

        given = {k: v for k, v in dict(node or {}).items() if v is not None}
        unknown = set(given) - set(KINDS)
        if unknown:
            raise UserFacingError(f"budget: unknown key(s) {sorted(unknown)}; allowed: {', '.join(KINDS)}")
        if len(given) > 1:
            raise UserFacingError(f"budget: set one of {', '.join(KINDS)}, got {', '.join(f'{k}={v}' for k, v in given.items())}")
        if not given:
            return None
        kind, amount = next(iter(given.items()))
        if not isinstance(amount, (int, float)) or amount <= 0:
            raise UserFacingError(f"budget.{kind}={amount}: must be a number > 0")
        return cls(kind, float(amount))

    def __str__(self) -> str:
        return f"{self.kind}={self.amount:g}"

    def spent(self, module) -> float:
        return float(getattr(module, KINDS[self.kind]))

    def max_iterations(self, cost_per_iteration: dict[str, float]) -> int:
        """Iterations the prompt sampler yields. NFE and reward queries per iteration are the
        plan's, so the run is exactly the iterations that reach the budget; a wall-clock budget
        gets a cap it will not reach and the run is stopped (flowrl.training.run_control)."""
        if self.kind == "wall_s":
            return 10**7
        return math.ceil(self.amount / cost_per_iteration[self.kind])
