"""Statistics of a grid's runs, the rliable way: a run's score at a budget, IQM and bootstrap intervals over seeds."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

BOOTSTRAP_SAMPLES = 2000
# Below this many seeds a percentile bootstrap only restates the seeds' range (for 2 seeds it is [min, max]),
# so a report shows the range and calls it that.
MIN_SEEDS_FOR_CI = 5


def score_at(curve: dict[int, float], budget: int) -> float | None:
    """The evaluation at `budget` steps: the last one at or before it, if the run got that far."""
    if not curve or max(curve) < budget:
        return None
    return curve[max(step for step in curve if step <= budget)]



def iqm(values: Iterable[float]) -> float:
    """Interquartile mean: the mean of the middle half (int(n/4) dropped at each end, as rliable does)."""
    ordered = np.sort(np.asarray(list(values), dtype=np.float64))
    cut = len(ordered) // 4
    return float(ordered[cut:len(ordered) - cut].mean())


def bootstrap_interval(values: Iterable[float], statistic: Callable[[np.ndarray], float] = iqm,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of `statistic` over seeds (resampled with replacement)."""
    data = np.asarray(list(values), dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = [statistic(data[rng.integers(0, len(data), len(data))]) for _ in range(samples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def seed_interval(values: Iterable[float], samples: int = BOOTSTRAP_SAMPLES) -> tuple[str, tuple[float, float]]:
    """The interval a report shows over seeds, with its name: ("95% CI", the bootstrap interval of the IQM)
    from MIN_SEEDS_FOR_CI seeds on, ("min-max", the seeds' range) below."""
    data = np.asarray(list(values), dtype=np.float64)
    if len(data) >= MIN_SEEDS_FOR_CI:
        return "95% CI", bootstrap_interval(data, samples=samples)
    return "min-max", (float(data.min()), float(data.max()))
