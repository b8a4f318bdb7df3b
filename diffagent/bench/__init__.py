"""Benchmark grids: train every (algorithm, env, seed, budget) of a grid file in the background,
resumably, beside Stable-Baselines3's SAC and PPO, archive each finished run's small files, then aggregate
the runs into rliable's statistics, tables and figures.

    grid.py     grid files -> jobs (one training run each), reading a run's files, archiving them
    runner.py   the resumable runner: one process and one thread per job, run locks handed to the child
    ray_backend.py  the same jobs as Ray tasks of one CPU each, on a cluster (Ray imported there only)
    sb3.py      sb3-sac and sb3-ppo: Stable-Baselines3 trained and evaluated as diffagent's runs are
    stats.py    rliable's IQM, stratified-bootstrap intervals, probability of improvement, performance
                profiles; a run's score at a budget and the steps it took to reach a return
    report.py   tables beside published references, comparisons, sample efficiency, the bandits' mode
                coverage, JSON
    plots.py    learning curves per env and the summary figure across envs (matplotlib)

Algorithm families (which Gaussian baseline and reference a row has, on- or off-policy panels) come
from the registry, diffagent.config.ALGORITHMS, and for SB3's algorithms from sb3.SB3_ALGORITHMS.
"""

from diffagent.bench.grid import (Grid, Job, archive_run, load_grid, load_hyperparameters, read_curve,
                                  split_env_settings, training_time_left)
from diffagent.bench.report import machine_info, summarize, write_report
from diffagent.bench.ray_backend import run_grid_on_ray
from diffagent.bench.runner import run_grid
from diffagent.bench.sb3 import SB3_ALGORITHMS, train_sb3
from diffagent.bench.stats import (bootstrap_interval, iqm, performance_profile, probability_of_improvement,
                                   score_at, seed_interval, steps_to_reach)

__all__ = ["Grid", "Job", "load_grid", "load_hyperparameters", "split_env_settings", "read_curve", "archive_run",
           "training_time_left", "run_grid", "run_grid_on_ray", "summarize", "write_report", "machine_info",
           "SB3_ALGORITHMS", "train_sb3",
           "bootstrap_interval", "seed_interval", "iqm", "probability_of_improvement", "performance_profile",
           "score_at", "steps_to_reach"]
