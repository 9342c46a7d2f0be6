"""Statistics over the seeds of a group: the mean and its Student t confidence interval.

A sweep runs every setting with a few seeds. The tables and plots show, per group, the mean over
the seeds and the half-width of its Student t interval at 95%,
mean ± t(0.975, n − 1) · s / sqrt(n), with s the sample standard deviation (ddof 1); the interval
is scipy.stats' (`t.interval` around the mean, scaled by `sem`). A group of one seed has no
interval: its half-width is NaN, which the tables leave blank and the plots draw as no bar.
"""

from __future__ import annotations

import math

CI_LEVEL = 0.95


def as_float(value) -> float | None:
    """`value` as a finite float (a param logged as '1e-4' included), else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def mean_ci(values, level: float = CI_LEVEL) -> tuple[float, float, int]:
    """(mean, half-width of the Student t interval at `level`, n) of the finite values.

    Missing and non-finite values (a run that never logged the metric) are left out. The half-width
    is NaN for n = 1 (one seed has no interval) and 0.0 when every value is the same; without
    values: (NaN, NaN, 0)."""
    xs = [x for x in map(as_float, values) if x is not None]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, n
    from scipy import stats

    sem = float(stats.sem(xs))  # s / sqrt(n), ddof 1
    if sem == 0.0:  # identical seeds: scipy's interval is NaN at scale 0, but the spread is none
        return mean, 0.0, n
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
    return mean, float(high - low) / 2, n
