"""Statistics of a grid's runs, computed with rliable (Agarwal et al., "Deep Reinforcement Learning at the Edge
of the Statistical Precipice", 2021): a run's score at a budget, the interquartile mean (IQM) with stratified-
bootstrap 95% intervals over seeds (and over envs), the probability that one algorithm improves on another,
performance profiles, and the steps a run takes to reach a return.

Scores are matrices of shape (seeds, envs): rliable's stratified bootstrap resamples the seeds of each env
separately, so an interval says how much the result would move with other seeds on the same envs. rliable is
in the `bench` extra and imported when a statistic is first computed.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from diffagent.errors import ConfigError

BOOTSTRAP_SAMPLES = 2000
# Below this many seeds a percentile bootstrap only restates the seeds' range (for 2 seeds it is [min, max]),
# so a report shows the range and calls it that, and prints no interval for the other statistics.
MIN_SEEDS_FOR_CI = 5
CONFIDENCE = 0.95


def _rliable() -> tuple[Any, Any]:
    """rliable's `library` (bootstraps, profiles) and `metrics` (IQM, probability of improvement)."""
    try:
        from rliable import library, metrics
    except ImportError:
        raise ConfigError("the benchmark's statistics need rliable: pip install 'diffagent[bench]'") from None
    return library, metrics


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """rliable's stratified bootstrap draws its resamples from numpy's global generator (its random_state only
    reaches arch's own draws), so a reproducible interval seeds that generator, and puts its state back after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _bootstrap(scores: Any, statistic: Callable[..., Any], samples: int, seed: int) -> np.ndarray:
    """rliable's stratified-bootstrap percentile interval of `statistic`: (2, ...) lower and upper bounds. `scores`
    is a (seeds, envs, ...) array, or a tuple of them resampled independently (two algorithms' seeds)."""
    library, _ = _rliable()
    with _seeded_global_numpy(seed), np.errstate(invalid="ignore"):
        _, intervals = library.get_interval_estimates({"scores": scores}, statistic, reps=samples,
                                                      confidence_interval_size=CONFIDENCE)
    # a bound between two infinite resamples (runs that never reached a return) comes out NaN: it is infinite
    return np.nan_to_num(np.asarray(intervals["scores"], dtype=np.float64), nan=np.inf, posinf=np.inf)


def score_matrix(values: Iterable[float] | np.ndarray) -> np.ndarray:
    """Scores as rliable's (seeds, envs) matrix: a list over seeds is one env's column."""
    matrix = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    return matrix[:, None] if matrix.ndim == 1 else matrix


def step_at(curve: dict[int, float], budget: int) -> int | None:
    """The step of the evaluation that stands for `budget`: the one closest to it (the earlier on a tie), if the run
    got that far. Not "the last at or before it": an on-policy run evaluates at the end of the rollout that crosses
    each evaluation point, a little past it (PPO's last evaluation of 300,000 steps lands at 301,056), and that
    rule would score it on the evaluation one interval earlier."""
    if not curve or max(curve) < budget:
        return None
    return min(curve, key=lambda step: (abs(step - budget), step))


def score_at(curve: dict[int, float], budget: int) -> float | None:
    """The evaluation at `budget` steps (`step_at`), if the run got that far."""
    step = step_at(curve, budget)
    return None if step is None else curve[step]


def steps_to_reach(curve: dict[int, float], target: float) -> float:
    """Sample efficiency: the first evaluation step at which the return reached `target`; infinite if it never did
    (an IQM over seeds then counts that seed above every finite one)."""
    return float(next((step for step in sorted(curve) if curve[step] >= target), math.inf))


def iqm(values: Iterable[float] | np.ndarray) -> float:
    """Interquartile mean over seeds (and envs, for a matrix): rliable's aggregate_iqm, the mean of the middle half
    with int(n/4) values dropped at each end."""
    _, metrics = _rliable()
    return float(metrics.aggregate_iqm(score_matrix(values)))


def bootstrap_interval(values: Iterable[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = iqm,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Stratified-bootstrap 95% interval of `statistic` over a (seeds, envs) matrix, or over seeds for a list."""
    low, high = _bootstrap(score_matrix(values), lambda scores: np.array([statistic(scores)]), samples, seed)[:, 0]
    return float(low), float(high)


def seed_interval(values: Iterable[float] | np.ndarray, samples: int = BOOTSTRAP_SAMPLES) -> tuple[str, tuple[float, float]]:
    """The interval a report shows, with its name: ("95% CI", the bootstrap interval of the IQM) from
    MIN_SEEDS_FOR_CI seeds on, ("min-max", the range of the scores) below."""
    matrix = score_matrix(values)
    if len(matrix) >= MIN_SEEDS_FOR_CI:
        return "95% CI", bootstrap_interval(matrix, samples=samples)
    return "min-max", (float(matrix.min()), float(matrix.max()))


def iqm_curve(curves: np.ndarray, samples: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """IQM over seeds at each evaluation step of a (seeds, steps) array, and its (2, steps) stratified-bootstrap
    95% band from MIN_SEEDS_FOR_CI seeds on (None below: a plot then shades the seeds' range)."""
    _rliable()  # its message when it is missing; scipy comes with it
    import scipy.stats  # rliable's aggregate_iqm is this trimmed mean; here it runs over every step at once

    def per_step(scores: np.ndarray) -> np.ndarray:
        return scipy.stats.trim_mean(scores[:, 0, :], proportiontocut=0.25, axis=0)

    runs = np.asarray(curves, dtype=np.float64)[:, None, :]
    band = _bootstrap(runs, per_step, samples, seed) if len(runs) >= MIN_SEEDS_FOR_CI else None
    return per_step(runs), band


def probability_of_improvement(better: np.ndarray, base: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                               seed: int = 0) -> tuple[float, tuple[float, float] | None]:
    """P(a run of `better` scores above a run of `base` on the same env), averaged over envs (rliable's, a
    Mann-Whitney U statistic per env, so each env's scale drops out): (p, its 95% interval), the interval
    None unless both have MIN_SEEDS_FOR_CI seeds. Inputs are (seeds, envs) matrices over the same envs."""
    _, metrics = _rliable()
    better, base = score_matrix(better), score_matrix(base)
    point = float(metrics.probability_of_improvement(better, base))
    if min(len(better), len(base)) < MIN_SEEDS_FOR_CI:
        return point, None
    low, high = _bootstrap((better, base), metrics.probability_of_improvement, samples, seed).ravel()
    return point, (float(low), float(high))


def performance_profile(scores: Mapping[str, np.ndarray], thresholds: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                        seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """For each algorithm, the fraction of its runs (over seeds and envs) scoring above each threshold (rliable's
    score distribution), with its (2, thresholds) 95% band from MIN_SEEDS_FOR_CI seeds on (None below)."""
    library, _ = _rliable()
    profiles = {}
    for name, matrix in scores.items():
        matrix = score_matrix(matrix)
        profile = library.score_distributions(matrix, thresholds)
        band = (_bootstrap(matrix, lambda runs: library.score_distributions(runs, thresholds), samples, seed)
                if len(matrix) >= MIN_SEEDS_FOR_CI else None)
        profiles[name] = (np.asarray(profile, dtype=np.float64), band)
    return profiles
