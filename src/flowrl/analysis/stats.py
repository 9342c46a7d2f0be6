"""Statistics over the seeds of a group: the mean and its Student t confidence interval; and a
paired comparison of two groups run on the same seeds.

A sweep runs every setting with a few seeds. The tables and plots show, per group, the mean over
the seeds and the half-width of its Student t interval at 95%,
mean ± t(0.975, n − 1) · s / sqrt(n), with s the sample standard deviation (ddof 1); the interval
is scipy.stats' (`t.interval` around the mean, scaled by `sem`). A group of one seed has no
interval: its half-width is NaN, which the tables leave blank and the plots draw as no bar.

A paired comparison (`paired_comparison`) takes the per-seed differences d_i = a_i − b_i of two
groups run with common random numbers (the same seed: the same prompts, noise and evaluation):
the mean difference, its paired t interval mean ± t(0.975, n − 1) · s_d / sqrt(n) (s_d the
sample SD of the d_i, ddof 1), the two-sided p-value of `scipy.stats.ttest_rel`, and the seeds
needed to resolve a difference δ at 80% power (two-sided α = 0.05):
- `seeds_needed` (normal approximation): n = ⌈((z(0.975) + z(0.8)) · s_d / δ)²⌉, at least 2;
- `seeds_needed_t` (exact): the smallest n ≥ 2 whose paired t-test has power ≥ 0.8 at δ, the
  power from the noncentral t (df n − 1, noncentrality δ · sqrt(n) / s_d), both tails counted.
  It is the normal figure plus one to three seeds for n ≳ 10, more for fewer seeds.
Both take s_d as measured: NaN with fewer than two pairs (no s_d).
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


PAIRED_LEVEL = 0.95
POWER = 0.8
ALPHA = 0.05
DELTA = 0.02


def seeds_needed(sd: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """n = ⌈((z(1 − α/2) + z(power)) · sd / delta)²⌉, at least 2 (a paired t-test needs two
    pairs); NaN when `sd` is NaN."""
    if not math.isfinite(sd):
        return math.nan
    from scipy import stats

    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(max(2, math.ceil((z * sd / delta) ** 2)))


def paired_t_power(n: int, sd: float, delta: float, alpha: float = ALPHA) -> float:
    """The power of the two-sided paired t-test at level `alpha` with `n` pairs, when the true mean
    difference is `delta` and the SD of the differences `sd` (noncentral t, both tails)."""
    from scipy import stats

    df, nc = n - 1, delta * math.sqrt(n) / sd
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed_t(sd: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest n ≥ 2 with paired_t_power(n) ≥ `power` (search upward from the normal
    figure, which never exceeds it: doubling, then bisection); NaN when `sd` is NaN."""
    if not math.isfinite(sd):
        return math.nan
    if sd == 0.0:
        return 2.0
    low = int(seeds_needed(sd, delta, alpha, power)) - 1  # power(low) < power, or low = 1
    high = low + 1
    while paired_t_power(high, sd, delta, alpha) < power:
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if paired_t_power(mid, sd, delta, alpha) >= power else (mid, high)
    return float(high)


def paired_comparison(a, b=None, delta: float = DELTA, level: float = PAIRED_LEVEL) -> dict:
    """The paired comparison of aligned samples `a` and `b` (pair i is a[i], b[i]), or of the
    differences `a` when `b` is None; see the module docstring.

    Returns {'n_pairs', 'mean_diff', 'sd_diff', 'ci_low', 'ci_high', 'p_value', 'seeds_needed',
    'seeds_needed_t'}: the mean alone for one pair (the rest NaN), NaN throughout for none. With
    every difference the same the interval is that point, and the p-value scipy's (0 for a
    nonzero difference, NaN for none)."""
    import warnings

    import numpy as np
    from scipy import stats

    a = np.asarray(a, dtype=float)
    d = a if b is None else a - np.asarray(b, dtype=float)
    n = len(d)
    out = dict.fromkeys(("mean_diff", "sd_diff", "ci_low", "ci_high", "p_value", "seeds_needed", "seeds_needed_t"), math.nan)
    out["n_pairs"] = n
    if n == 0:
        return out
    out["mean_diff"] = mean = float(d.mean())
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    with warnings.catch_warnings():  # scipy warns for identical differences (a zero SD)
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel(a, b) if b is not None else stats.ttest_1samp(d, 0.0)
    if sd == 0.0:
        low = high = mean
    else:
        low, high = stats.t.interval(level, n - 1, loc=mean, scale=sd / math.sqrt(n))
    out |= {"sd_diff": sd, "ci_low": float(low), "ci_high": float(high), "p_value": float(test.pvalue)}
    out |= {"seeds_needed": seeds_needed(sd, delta), "seeds_needed_t": seeds_needed_t(sd, delta)}
    return out
