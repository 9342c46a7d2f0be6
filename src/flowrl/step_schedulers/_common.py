"""Helpers several step schedulers share (variant files never import each other)."""

from __future__ import annotations

import math


def strided_completion(start: int, num_steps: int, granularity: int) -> tuple[int, ...]:
    """Sigma indices from `start` to T: one fine step start -> start+1, then a stride of g
    (G²RPO's sigmas[:e+2] ++ sigmas[e+2::g] with start = e+1; E-GRPO's official
    sigmas[:k+l+1] ++ sigmas[k+l+1::g]). Where the strided tail misses sigma = 0 its last point
    is replaced by T. Both official samplers do the same in effect: they decode the x0
    prediction of the last point they evaluate, which is the Euler step from it to sigma 0."""
    tail = list(range(start + 1, num_steps + 1, granularity))
    if tail:
        tail[-1] = num_steps
    return tuple(dict.fromkeys([start, *tail]))


def flow_grpo_std_dev_t(sigmas: tuple[float, ...], i: int, noise_level: float) -> float:
    """Flow-GRPO's std_dev_t at sigma index i (a * sqrt(sigma / (1 - sigma)); at sigma = 1 the
    denominator uses sigmas[1]), as a float: DenseGRPO's initial psi(t)."""
    s = sigmas[i]
    denom = 1 - (sigmas[1] if s >= 1 else s)
    return noise_level * math.sqrt(s / denom)

