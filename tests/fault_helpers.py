"""Rewards that fail on purpose, for tests/e2e/test_faults.py: selected on the command line with
`reward._target_=tests.fault_helpers.<Class>` (the repository on PYTHONPATH, as pytest's
pythonpath puts it in-process), so that no fault hook lives in flowrl."""

from __future__ import annotations

import torch

from flowrl.rewards.geneval import GenEvalReward


class FailingReward(GenEvalReward):
    """The geneval verifier, raising from its `fail_at`-th call on (a reward server that went away)."""

    def __init__(self, min_area: int = 16, score: str = "strict", fail_at: int = 3):
        super().__init__(min_area, score)
        self.fail_at, self.calls = fail_at, 0

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise ConnectionError("reward server unreachable")
        return super().score(images, prompts)


class NaNReward(GenEvalReward):
    """The geneval verifier with NaN in its scores from its `nan_at`-th call on (`until` excluded)."""

    def __init__(self, min_area: int = 16, score: str = "strict", nan_at: int = 2, until: int = 10**9):
        super().__init__(min_area, score)
        self.nan_at, self.until, self.calls = nan_at, until, 0

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.calls += 1
        out = super().score(images, prompts)
        if self.nan_at <= self.calls < self.until:
            out = out.clone()
            out[0] = float("nan")
        return out
