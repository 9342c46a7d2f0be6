"""Timers of the benchmarks: `torch.utils.benchmark.Timer` for a statement that can be re-run on
its own (a forward, a train step), and counting wrappers for the time spent inside a rollout.

Why two kinds: Timer runs a statement in a loop by itself, warms it up and synchronises the
accelerator; that fits "how long does one forward at batch b take". The wrappers answer "how
much of this one rollout's wall time was spent in model forwards / reward calls": those calls are
made by the engine, each once, with inputs that depend on the previous ones, so there is nothing
for Timer to re-run; the wrappers add up perf_counter intervals around each call instead.
"""

from __future__ import annotations

import time

import torch
from torch.utils.benchmark import Timer


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, min_run_time: float) -> float:
    """Median seconds of one fn() call. Timer's block-size estimate doubles as the warm-up; it
    synchronises the accelerator around each block. num_threads: the process's current setting
    (Timer would otherwise measure with 1 thread)."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


class TimedModel:
    """A FlowModel seen through a counter: accumulates the wall time spent inside `velocity`
    (synchronising before and after on CUDA) and counts calls and evaluated rows (NFE).
    Everything else is delegated to the wrapped model."""

    def __init__(self, model):
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forward_s = 0.0
        self.evals = 0
        self.calls = 0

    def velocity(self, x, sigma, embeds):
        sync(x.device)
        start = time.perf_counter()
        v = self.model.velocity(x, sigma, embeds)
        sync(x.device)
        self.forward_s += time.perf_counter() - start
        self.evals += x.shape[0]
        self.calls += 1
        return v

    def __getattr__(self, name):
        return getattr(self.model, name)


class TimedReward:
    """score_fn for the engine: {reward.name: [B]}, with the time and number of queries."""

    def __init__(self, reward):
        self.reward = reward
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.queries = 0

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        scores = self.reward(images, prompts)
        self.seconds += time.perf_counter() - start
        self.queries += len(prompts)
        return {self.reward.name: scores}


class Stopwatch:
    """Wall seconds since start (or the last lap), synchronised on CUDA: the phases of one
    iteration (rollout, advantages, update) run once each, in order, on state the previous phase
    produced, so they are timed where they run rather than re-run by Timer."""

    def __init__(self, device):
        self.device = device
        sync(device)
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        sync(self.device)
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds

    def total(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.start
