"""Benchmark grids: train every (algorithm, env, seed, budget) of a grid file in the background,
resumably, then aggregate the runs into IQM tables with bootstrap intervals and learning-curve plots.

    grid.py     grid files -> jobs (one training run each), and reading a run's files
    runner.py   the resumable runner: one process and one thread per job, run locks handed to the child
    stats.py    a run's score at a budget; IQM and percentile-bootstrap intervals over seeds
    report.py   tables beside published references, learning curves, the bandits' mode coverage, JSON

Algorithm families (which Gaussian baseline and reference a row has, on- or off-policy panels) come
from the registry, diffagent.config.ALGORITHMS.
"""

from diffagent.bench.grid import Grid, Job, load_grid, load_hyperparameters, read_curve, split_env_settings
from diffagent.bench.report import machine_info, summarize, write_report
from diffagent.bench.runner import run_grid
from diffagent.bench.stats import bootstrap_interval, iqm, score_at, seed_interval

__all__ = ["Grid", "Job", "load_grid", "load_hyperparameters", "split_env_settings", "read_curve", "run_grid",
           "summarize", "write_report",
           "machine_info", "bootstrap_interval", "seed_interval", "iqm", "score_at"]
