"""A study's statistics: per-arm mean and 95 % CI over seeds, paired bootstrap CIs, and the verdict rule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 10_000
# Fewer pairs say too little: with 3, all three differences share a sign by chance one time in 4, and a
# percentile bootstrap CI of 3 values then excludes 0; with 5 that is one time in 16.
MIN_PAIRS = 5
BOOTSTRAP_SEED = 0  # fixed: the same numbers give the same report

RULE = ("A claimed comparison holds when the 95 % bootstrap CI of its paired differences (same seed = a pair) "
        "lies entirely on the claimed side of 0 (or of the threshold), fails when it lies entirely on the other "
        "side, and is unclear otherwise (or with fewer than five pairs). The verdict is supported when every comparison holds, contradicted when "
        "any fails, and inconclusive otherwise.")


def finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_ci(values: Sequence[float | None], level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """Mean and Student-t confidence interval over the finite values (NaNs when there are none; the mean itself for one)."""
    x = finite(values)
    if len(x) == 0:
        return math.nan, (math.nan, math.nan)
    mean = float(x.mean())
    if len(x) == 1:
        return mean, (mean, mean)
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, (mean - half, mean + half)


def bootstrap_ci(values: Sequence[float], level: float = LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`, reproducible by `seed`."""
    x = finite(values)
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired(a: dict[int, float | None], b: dict[int, float | None]) -> dict[int, float]:
    """a − b for every seed both have a finite value for."""
    both = sorted(set(a) & set(b))
    return {s: a[s] - b[s] for s in both
            if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s])}


@dataclass
class Outcome:
    """One claimed comparison: the values it rests on, their CI, and whether it holds."""

    label: str
    values: list[float]
    mean: float
    ci: tuple[float, float]
    holds: str  # "holds" | "fails" | "unclear"


def judge(label: str, values: Sequence[float], sign: int, threshold: float = 0.0) -> Outcome:
    """Whether mean(values) lies beyond `threshold` on the side `sign` (+1 above, −1 below), by its bootstrap CI."""
    x = finite(values)
    lo, hi = bootstrap_ci(x)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < MIN_PAIRS:
        holds = "unclear"
    elif sign * (lo - threshold) > 0 and sign * (hi - threshold) > 0:
        holds = "holds"
    elif sign * (lo - threshold) < 0 and sign * (hi - threshold) < 0:
        holds = "fails"
    else:
        holds = "unclear"
    return Outcome(label, [float(v) for v in x], mean, (lo, hi), holds)


def verdict(outcomes: Sequence[Outcome]) -> str:
    """supported | contradicted | inconclusive, by RULE."""
    if any(o.holds == "fails" for o in outcomes):
        return "contradicted"
    if outcomes and all(o.holds == "holds" for o in outcomes):
        return "supported"
    return "inconclusive"
