"""The report of a grid, from each run's evaluation curve (read from its run directory or its archived copy, so it
rebuilds from git alone):

- per (env, algo, budget): the IQM over seeds of the deterministic return, and of the stochastic one, with a
  stratified-bootstrap 95% interval from 5 seeds on (the seeds' min-max below, named so), the policy's entropy
  estimate at the end, beside the published references;
- per seed: the score at the budget and the mean of the last evaluations up to it, or how far it got;
- each algorithm's probability of improvement over its Gaussian base and over Stable-Baselines3's of its family,
  per env and across envs, with its interval from 5 seeds on, and in words: wins, ties or loses;
- across envs, the IQM of scores normalised by each env's random and expert returns (references file), and
  performance profiles;
- sample efficiency: the steps each run took to first reach the grid's target return on an env;
- learning curves per env and one summary figure (matplotlib; without it, the tables alone), the multimodal
  bandits' mode coverage, and every number as JSON.

The statistics are rliable's (stats.py).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffagent.agent import Agent
from diffagent.bench.grid import (DETERMINISTIC_RETURN, ENTROPY_ESTIMATE, STOCHASTIC_RETURN, Grid, algo_family,
                                  archive_run, env_file_name, is_on_policy, last_metrics, read_curves, read_toml,
                                  steps_per_second)
from diffagent.bench.plots import plot_curves, plot_summary
from diffagent.bench.sb3 import is_sb3
from diffagent.bench.stats import (MIN_SEEDS_FOR_CI, iqm, iqm_curve, performance_profile, probability_of_improvement,
                                   seed_interval, step_at, steps_to_reach)
from diffagent.errors import ConfigError
from diffagent.io import WEIGHTS_FILE, write_json
from diffagent.multimodal import (BANDITS, COVERAGE_THRESHOLD, MODE_RADIUS, make_bandit, mode_coverage,
                                  plot_samples)


def machine_info(command: str | None = None) -> dict[str, Any]:
    """Command (default: this process's), versions, machine and date: what every number is recorded with."""
    import importlib.metadata as md

    versions = {}
    for package in ("diffagent", "torch", "gymnasium", "mujoco", "numpy", "onnxruntime", "stable-baselines3"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"command": command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()},
            "versions": versions}


# A per-seed score beside the one at the budget: the mean of this many evaluations up to it.
RECENT_EVALUATIONS = 5
REFERENCE_KEYS = {"env", "algo", "steps", "mean", "std", "source"}
NORMALIZATION_KEYS = {"env", "random", "expert", "source"}
NUMERIC_KEYS = {"steps", "mean", "std", "random", "expert"}


def _reference_tables(path: Path | None, table: str, keys: set[str]) -> list[dict[str, Any]]:
    """The [[table]] entries of a references file, each checked to hold `keys`, numbers where numbers belong."""
    if path is None:
        return []
    entries = read_toml(path, "reference").get(table, [])
    for number, entry in enumerate(entries, 1):
        missing = keys - set(entry)
        if missing:
            raise ConfigError(f"{path}, {table} {number} lacks {', '.join(sorted(missing))}")
        for key in sorted(keys & NUMERIC_KEYS):
            if isinstance(entry[key], bool) or not isinstance(entry[key], (int, float)):
                raise ConfigError(f"{path}, {table} {number}: {key} must be a number, got {entry[key]!r}")
    return entries


def load_references(path: Path | None) -> list[dict[str, Any]]:
    """Reference results (zoo/references.toml): [[reference]] tables of env, algo, steps, mean, std, source."""
    return _reference_tables(path, "reference", REFERENCE_KEYS)


def load_normalization(path: Path | None) -> dict[str, dict[str, Any]]:
    """env -> {random, expert, source}: the returns a normalised score maps to 0 and 1 ([[normalization]] tables
    of a references file), so that scores of different envs can be aggregated."""
    normalization = {}
    for entry in _reference_tables(path, "normalization", NORMALIZATION_KEYS):
        if not entry["expert"] > entry["random"]:
            raise ConfigError(f"{path}: the normalization of {entry['env']} needs expert > random, got "
                              f"{entry['expert']} and {entry['random']}")
        normalization[entry["env"]] = entry
    return normalization


def _reference_for(references: list[dict], env_id: str, algo: str, steps: int) -> str:
    family = algo_family(algo)  # its Gaussian baseline, whose published results are the reference
    found = [r for r in references if r["env"] == env_id and r["algo"] == family and r["steps"] == steps]
    return "; ".join(f"{family.upper()} {r['mean']:,.0f} +/- {r['std']:,.0f} ({r['source']})" for r in found) or "-"


class _Curves:
    """Every run's deterministic and stochastic curves and its logged entropy estimate, each metrics file read once,
    from its run directory or its archived copy."""

    def __init__(self, grid: Grid):
        keys = (DETERMINISTIC_RETURN, STOCHASTIC_RETURN, ENTROPY_ESTIMATE)
        curves = {job.run_dir: read_curves(job.source_dir(), keys) for job in grid.jobs}
        self.deterministic = {run: c[DETERMINISTIC_RETURN] for run, c in curves.items()}
        self.stochastic = {run: c[STOCHASTIC_RETURN] for run, c in curves.items()}
        self.entropy = {run: c[ENTROPY_ESTIMATE] for run, c in curves.items()}


def final_entropy(curve: dict[int, float], budget: int) -> float | None:
    """The mean entropy estimate logged over the last tenth of the budget (one log is one batch's, noisy), or None
    (Stable-Baselines3's runs log none)."""
    values = [value for step, value in curve.items() if budget - budget / 10 < step <= budget]
    return float(np.mean(values)) if values else None


def recent_score(curve: dict[int, float], budget: int) -> float | None:
    """The mean of the last RECENT_EVALUATIONS evaluations up to the one that stands for `budget`, or None if the
    run did not get that far: one evaluation weighs much on a jumpy env such as Hopper."""
    evaluations = _curve_to_budget(curve, budget)
    return float(np.mean([evaluations[s] for s in sorted(evaluations)[-RECENT_EVALUATIONS:]])) if evaluations else None


def _iqm_with_interval(values: list[float]) -> dict[str, Any]:
    interval, (low, high) = seed_interval(values)
    return {"iqm": iqm(values), "ci": (low, high), "interval": interval}


def summarize(grid: Grid, references: list[dict] | None = None, curves: _Curves | None = None) -> list[dict[str, Any]]:
    """One row per (env, algo, budget): per-seed scores (deterministic and stochastic), IQM with its interval over
    seeds (`seed_interval`), speed, the reference, the command."""
    references = references or []
    curves = curves or _Curves(grid)
    rows = []
    for (env_id, algo), budgets in grid.budgets.items():
        for budget in sorted(budgets):
            jobs = [j for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo) and j.steps >= budget]
            scores, recent, stochastic, entropy, times, missing, partial = {}, {}, {}, {}, [], [], {}
            for job in jobs:
                curve = curves.deterministic[job.run_dir]
                step = step_at(curve, budget)
                if step is None:
                    missing.append(job.seed)
                    if curve:  # stopped (or still running) short of the budget: say how far it got
                        partial[job.seed] = (max(curve), curve[max(curve)])
                    continue
                scores[job.seed] = curve[step]
                recent[job.seed] = recent_score(curve, budget)
                stochastic_score = curves.stochastic[job.run_dir].get(step)  # the same evaluation's
                if stochastic_score is not None:  # absent from runs recorded before it was
                    stochastic[job.seed] = stochastic_score
                entropy_at_end = final_entropy(curves.entropy[job.run_dir], budget)
                if entropy_at_end is not None:
                    entropy[job.seed] = entropy_at_end
                speed = steps_per_second(job.source_dir())
                if speed:
                    times.append(speed)
            values = list(scores.values())
            row = {"env": env_id, "algo": algo, "steps": budget, "seeds": sorted(scores), "missing_seeds": missing,
                   "partial": partial, "scores": scores, "recent_scores": recent, "stochastic_scores": stochastic,
                   "entropy": entropy,
                   "reference": _reference_for(references, env_id, algo, budget),
                   "command": shlex.join(jobs[0].train_command()), "steps_per_second": float(np.median(times)) if times else None}
            if values:
                row.update(_iqm_with_interval(values), mean=float(np.mean(values)),
                           std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)  # the sample std, as references'
            if stochastic:
                row["stochastic"] = _iqm_with_interval(list(stochastic.values()))
            rows.append(row)
    return rows


def per_seed_table(rows: list[dict[str, Any]]) -> str:
    """Each seed's score at the budget with the mean of its last RECENT_EVALUATIONS evaluations (one evaluation
    swings widely on MuJoCo), or how far an unfinished seed got."""
    seeds = sorted({seed for row in rows for seed in [*row["seeds"], *row["missing_seeds"]]})
    cells = []
    for row in rows:
        line = [row["env"], row["algo"], f"{row['steps']:,}"]
        for seed in seeds:
            if seed in row["scores"]:
                line.append(f"{_number(row['scores'][seed], 0)} ({_number(row['recent_scores'][seed], 0)})")
            elif seed in row["partial"]:
                step, score = row["partial"][seed]
                line.append(f"at {step:,}: {_number(score, 0)}")
            else:
                line.append("-")
        cells.append(line)
    return _table(["env", "algo", "steps", *(f"seed {seed}" for seed in seeds)], cells)


def _number(value: float, digits: int = 1) -> str:
    """`digits` decimals from 1 up, three significant digits below (a bandit's returns lie in [0, 1])."""
    return f"{value:,.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:#.3g}"


def _format_centre(value: float, interval: str, low: float, high: float, seeds: int, digits: int = 1) -> str:
    if seeds == 1:  # one seed has no spread to report
        return f"{_number(value, digits)} (one seed)"
    return f"{_number(value, digits)} [{interval} {_number(low, digits)}, {_number(high, digits)}]"


def _format_row(row: dict[str, Any]) -> list[str]:
    if "iqm" not in row:
        reached = "; ".join(f"seed {seed}: {score:,.1f} at {step:,} steps" for seed, (step, score) in row["partial"].items())
        status = f"not finished ({reached})" if reached else "none finished yet"
        return [row["env"], row["algo"], f"{row['steps']:,}", "0", status, "-", "-", "-", "-", row["reference"]]
    seeds = len(row["seeds"])
    speed = f"{row['steps_per_second']:.0f}" if row["steps_per_second"] else "-"
    spread = f"{_number(row['mean'])} +/- {_number(row['std'])}" if seeds > 1 else "-"
    stochastic, stochastic_seeds = row.get("stochastic"), len(row["stochastic_scores"])
    stochastic_cell = (_format_centre(stochastic["iqm"], stochastic["interval"], *stochastic["ci"], stochastic_seeds)
                       if stochastic else "-")
    if stochastic and stochastic_seeds != seeds:  # runs recorded before the stochastic return was
        stochastic_cell += f" ({stochastic_seeds} of the {seeds} seeds)"
    entropy = list(row["entropy"].values())
    entropy_cell = f"{np.mean(entropy):.2f}" if entropy else "-"
    if entropy and len(entropy) != seeds:
        entropy_cell += f" ({len(entropy)} of the {seeds} seeds)"
    return [row["env"], row["algo"], f"{row['steps']:,}", str(seeds),
            _format_centre(row["iqm"], row["interval"], *row["ci"], seeds), spread, stochastic_cell, entropy_cell,
            speed, row["reference"]]


def _table(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results table: IQM [its interval] over seeds, mean +/- std, the stochastic return, the entropy, speed,
    the reference."""
    return _table(["env", "algo", "steps", "seeds", "IQM [interval]", "mean +/- std", "stochastic IQM [interval]",
                   "entropy, nats", "steps/s", "reference"], [_format_row(row) for row in rows])


# --- comparisons ------------------------------------------------------------------------------------------------
def _opponents(algo: str, algos: set[str]) -> list[str]:
    """Whom `algo` is compared with: its Gaussian base (diffsac -> sac), and Stable-Baselines3's algorithm of its
    family (sb3-sac), those of them the grid runs at the same budget."""
    family = algo_family(algo)
    candidates = [] if is_sb3(algo) else [family, f"sb3-{family}"]
    return [other for other in candidates if other != algo and other in algos]


def _seed_matrix(rows: dict[tuple[str, str], dict[str, Any]], algo: str, envs: list[str],
                 key: str = "scores") -> tuple[list[int], np.ndarray]:
    """The seeds finished on every one of `envs`, and their (seeds, envs) score matrix."""
    seeds = sorted(set.intersection(*(set(rows[(env, algo)][key]) for env in envs)))
    return seeds, np.array([[rows[(env, algo)][key][seed] for env in envs] for seed in seeds], dtype=np.float64)


def _rows_at(rows: list[dict[str, Any]]) -> dict[int, dict[tuple[str, str], dict[str, Any]]]:
    """budget -> (env, algo) -> the row, for rows with at least one finished seed."""
    by_budget: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}
    for row in rows:
        if row["seeds"]:
            by_budget.setdefault(row["steps"], {})[(row["env"], row["algo"])] = row
    return by_budget


def improvements(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probability of improvement of each algorithm over its opponents (`_opponents`) at each budget: on each env
    both ran, and across those envs when there are several (on the seeds finished on all of them)."""
    comparisons = []
    for budget, at in _rows_at(rows).items():
        algos = {algo for _, algo in at}
        for algo in dict.fromkeys(algo for _, algo in at):
            for opponent in _opponents(algo, algos):
                envs = [env for env, other in at if other == algo and (env, opponent) in at]
                groups = [[env] for env in envs] + ([envs] if len(envs) > 1 else [])
                for group in groups:
                    seeds, better = _seed_matrix(at, algo, group)
                    opponent_seeds, base = _seed_matrix(at, opponent, group)
                    if not seeds or not opponent_seeds:
                        continue
                    p, interval = probability_of_improvement(better, base)
                    comparisons.append({"steps": budget, "algo": algo, "against": opponent, "envs": group,
                                        "seeds": (len(seeds), len(opponent_seeds)), "p": p, "ci": interval,
                                        "verdict": verdict(interval)})
    return comparisons


def verdict(interval: tuple[float, float] | None) -> str | None:
    """What a probability of improvement's 95% interval says: "wins" when it lies above 0.5, "loses" below, "ties"
    when it holds 0.5 (no difference these seeds can resolve); None without an interval (fewer than
    MIN_SEEDS_FOR_CI seeds of either), when nothing is claimed."""
    if interval is None:
        return None
    low, high = interval
    return "wins" if low > 0.5 else "loses" if high < 0.5 else "ties"


def verdict_lines(comparisons: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """One plain sentence per judged comparison (who wins, ties or loses against whom, where, with the probability
    of improvement and, on one env, both IQMs), then one line naming those with too few seeds to judge."""
    at = _rows_at(rows)
    lines, unjudged = [], []
    for c in comparisons:
        where = f"on {' + '.join(c['envs'])} at {c['steps']:,} steps"
        if c["verdict"] is None:
            unjudged.append(f"{c['algo']} against {c['against']} {where} ({c['seeds'][0]} vs {c['seeds'][1]})")
            continue
        sentence = (f"- **{c['algo']} {c['verdict']} against {c['against']}** {where}: P({c['algo']} > "
                    f"{c['against']}) = {_format_probability(c)}")
        if len(c["envs"]) == 1:
            ours, theirs = (at[c["steps"]][(c["envs"][0], algo)] for algo in (c["algo"], c["against"]))
            sentence += f"; IQM {_number(ours['iqm'], 0)} against {_number(theirs['iqm'], 0)}"
        lines.append(sentence + ".")
    if unjudged:
        lines.append(f"- Not judged yet, fewer than {MIN_SEEDS_FOR_CI} seeds of one side (seeds finished): "
                     + "; ".join(unjudged) + ".")
    return lines


def _format_probability(entry: dict[str, Any]) -> str:
    if entry["ci"] is None:  # no comparison is claimed from fewer seeds: the estimate stays in the JSON
        return f"- (needs {MIN_SEEDS_FOR_CI} seeds of both)"
    return f"{entry['p']:.2f} [95% CI {entry['ci'][0]:.2f}, {entry['ci'][1]:.2f}]"


def improvements_table(comparisons: list[dict[str, Any]]) -> str:
    return _table(["steps", "algo", "against", "env", "seeds", "P(algo > against)"],
                  [[f"{c['steps']:,}", c["algo"], c["against"], " + ".join(c["envs"]), f"{c['seeds'][0]} vs {c['seeds'][1]}",
                    _format_probability(c)] for c in comparisons])


def across_envs(rows: list[dict[str, Any]], normalization: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget, over the envs with a normalisation on which some run has finished: each algorithm's IQM of
    normalised scores (over seeds and envs, with its stratified-bootstrap interval from 5 seeds, min-max below),
    and the performance profiles. An algorithm without finished seeds on all those envs is left out, rather than
    narrowing the envs of every other, and `incomplete` says why (none finished on an env yet, or the grid does
    not run it there); `pending` names the envs where nothing has finished yet."""
    groups = []
    for budget, at in _rows_at(rows).items():
        algos = list(dict.fromkeys(algo for _, algo in at))
        at_budget = [row for row in rows if row["steps"] == budget]  # with or without finished seeds
        scheduled = {(row["env"], row["algo"]) for row in at_budget}
        normalised = [env for env in dict.fromkeys(row["env"] for row in at_budget) if env in normalization]
        envs = [env for env in normalised if any(other == env for other, _ in at)]
        pending = [env for env in normalised if env not in envs]
        incomplete = {algo: lacking for algo in algos
                      if (lacking := [f"none finished on {env} yet" if (env, algo) in scheduled else f"not run on {env}"
                                      for env in envs if (env, algo) not in at])}
        if not envs:
            continue
        scale = np.array([[normalization[env]["random"], normalization[env]["expert"]] for env in envs])
        matrices, entries = {}, []
        for algo in algos:
            if algo in incomplete:
                continue
            seeds, raw = _seed_matrix(at, algo, envs)
            if not seeds:
                continue
            matrices[algo] = (raw - scale[:, 0]) / (scale[:, 1] - scale[:, 0])
            interval, (low, high) = seed_interval(matrices[algo])
            entries.append({"algo": algo, "seeds": len(seeds), "iqm": iqm(matrices[algo]), "low": low, "high": high,
                            "band": interval})
        if not entries:
            continue
        every_score = np.concatenate([matrix.ravel() for matrix in matrices.values()])
        thresholds = np.linspace(min(0.0, every_score.min()), max(1.0, every_score.max()), 81)
        groups.append({"steps": budget, "envs": envs, "pending": pending, "algos": entries, "incomplete": incomplete,
                       "thresholds": thresholds, "profiles": performance_profile(matrices, thresholds)})
    return groups


def across_envs_table(groups: list[dict[str, Any]]) -> str:
    return _table(["steps", "envs", "algo", "seeds", "IQM of normalised scores [interval]"],
                  [[f"{g['steps']:,}", ", ".join(g["envs"]), e["algo"], str(e["seeds"]),
                    _format_centre(e["iqm"], e["band"], e["low"], e["high"], e["seeds"], digits=2)]
                   for g in groups for e in g["algos"]]
                  + [[f"{g['steps']:,}", ", ".join(g["envs"]), algo, "-", f"not on every env: {'; '.join(lacking)}"]
                     for g in groups for algo, lacking in g["incomplete"].items()]
                  + [[f"{g['steps']:,}", env, "-", "-", "no run finished yet"] for g in groups for env in g["pending"]])


def sample_efficiency(grid: Grid, rows: list[dict[str, Any]], curves: _Curves) -> list[dict[str, Any]]:
    """Per (env, algo, budget) for an env with a target return: the first evaluation step at which each finished
    seed reached it (within the budget), and their IQM with its interval (a seed that never did counts as
    infinitely slow)."""
    efficiency = []
    for row in rows:
        target = grid.target_returns.get(row["env"])
        if target is None or not row["seeds"]:
            continue
        jobs = {job.seed: job for job in grid.jobs if (job.env_id, job.algo) == (row["env"], row["algo"])}
        steps = {seed: steps_to_reach(_curve_to_budget(curves.deterministic[jobs[seed].run_dir], row["steps"]), target)
                 for seed in row["seeds"]}
        values = list(steps.values())
        interval, (low, high) = seed_interval(values)
        efficiency.append({"env": row["env"], "algo": row["algo"], "steps": row["steps"], "target": target,
                           "per_seed": steps, "reached": sum(math.isfinite(v) for v in values),
                           "iqm": iqm(values), "ci": (low, high), "interval": interval})
    return efficiency


def _curve_to_budget(curve: dict[int, float], budget: int) -> dict[int, float]:
    """The evaluations up to the one that stands for `budget` (stats.step_at)."""
    last = step_at(curve, budget)
    return {step: value for step, value in curve.items() if last is not None and step <= last}


def _format_steps(value: float, budget: int) -> str:
    return f"{value:,.0f}" if math.isfinite(value) else f"not by {budget:,}"


def sample_efficiency_table(efficiency: list[dict[str, Any]]) -> str:
    cells = []
    for e in efficiency:
        seeds = len(e["per_seed"])
        centre = _format_steps(e["iqm"], e["steps"])
        if seeds > 1:
            centre += f" [{e['interval']} {_format_steps(e['ci'][0], e['steps'])}, {_format_steps(e['ci'][1], e['steps'])}]"
        cells.append([e["env"], f"{e['target']:,.0f}", f"{e['steps']:,}", e["algo"], f"{e['reached']} of {seeds}",
                      centre, ", ".join(f"s{seed} {_format_steps(steps, e['steps'])}"
                                        for seed, steps in e["per_seed"].items())])
    return _table(["env", "target return", "budget", "algo", "seeds that reached it", "steps to reach it, IQM [interval]",
                   "per seed"], cells)


# --- figures ------------------------------------------------------------------------------------------------------
def curve_panels(grid: Grid, env_id: str, curves: _Curves | None = None) -> list[list[dict[str, Any]]]:
    """The learning curves of `env_id` for `plot_curves`: off-policy algorithms in one panel, on-policy ones in the
    other; the IQM over the seeds that reached the largest budget (over every seed while none has), at each step
    all of them reached, banded (stats.iqm_curve). A seed just started does not cut the finished ones short."""
    curves = curves or _Curves(grid)
    panels: list[list[dict[str, Any]]] = [[], []]
    for algo in dict.fromkeys(j.algo for j in grid.jobs if j.env_id == env_id):
        runs = [c for c in (curves.deterministic[j.run_dir] for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo)) if c]
        budget = max(grid.budgets[(env_id, algo)])
        runs = [curve for curve in runs if step_at(curve, budget) is not None] or runs
        steps = sorted(set.intersection(*(set(curve) for curve in runs))) if runs else []  # reached by every seed
        if not steps:
            continue
        returns = np.array([[curve[step] for step in steps] for curve in runs])
        centre, band = iqm_curve(returns)
        low, high = band if band is not None else (returns.min(axis=0), returns.max(axis=0))
        panels[is_on_policy(algo)].append({"algo": algo, "seeds": len(runs), "steps": steps, "iqm": centre, "low": low,
                                           "high": high, "band": "95% CI" if band is not None else "min-max"})
    return panels


def multimodal_section(grid: Grid, env_id: str) -> list[str]:
    """For a multimodal bandit: modes covered and per-mode mass against exp(Q/alpha), per algorithm,
    and a plot of the first seed's sampled actions of every algorithm side by side."""
    bandit = make_bandit(env_id)
    rows, first_seed = [], {}
    for algo in dict.fromkeys(j.algo for j in grid.jobs if j.env_id == env_id and not is_sb3(j.algo)):
        coverages = []
        # the coverage samples the policy: its weights are in the run directory, or archived (`archived_files`)
        for job in (j for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo) and j.status() == "done"):
            source = job.source_dir()
            if not (source / WEIGHTS_FILE).is_file():
                continue
            learned = last_metrics(source).get("alpha")  # an autotuned alpha lives in the metrics only
            coverage = mode_coverage(Agent.from_pretrained(source), alpha=learned, seed=job.seed, bandit=bandit)
            coverages.append(coverage)
            first_seed.setdefault(algo, coverage)
        if not coverages:
            continue
        shares = " / ".join(" ".join(f"{100 * s:.0f}" for s in c.shares) for c in coverages)
        steps = max(j.steps for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo))
        rows.append(f"| {algo} | {steps:,} | {len(coverages)} | {' '.join(str(c.modes_covered) for c in coverages)} | "
                    f"{' '.join(f'{c.max_abs_error_points:.1f}' for c in coverages)} | "
                    f"{iqm(100 * c.total_variation for c in coverages):.1f} | "
                    f"{' '.join(f'{100 * t:.1f}' for t in coverages[0].targets)} | {shares} | "
                    f"{iqm(100 * c.off_mode_share for c in coverages):.1f} | "
                    f"{iqm(c.mean_reward for c in coverages):.3f} |")
    if not rows:
        return []
    lines = [f"### {env_id}: modes covered", "",
             f"10,000 sampled actions per seed; a sample belongs to a mode within {MODE_RADIUS} of its peak; a mode "
             f"is covered with at least {100 * COVERAGE_THRESHOLD:.0f}% of the samples. Targets: the mass of "
             "exp(r/alpha) in each mode region at the run's final alpha. A policy spread over the whole box also puts "
             "5% on each peak, so read the count with the off-mode share and the total-variation (TV) distance "
             "to the target, which charge mass between the peaks.", "",
             "| algo | steps | seeds | modes covered (per seed) | max abs error, points (per seed) | TV distance, % (IQM) | "
             "target % per mode | share % per mode (per seed) | off-mode % (IQM) | mean reward (IQM) |",
             "|---|---|---|---|---|---|---|---|---|---|",
             *rows, ""]
    try:
        png = plot_samples(first_seed, grid.results / f"{grid.name}-{env_file_name(env_id)}-samples.png", bandit)
        lines += [f"![sampled actions on {env_id}]({png.name})", ""]
    except ImportError:
        pass
    return lines


def _archive_finished(grid: Grid, echo: Callable[[str], None]) -> None:
    """Archive every run finished here (the runner archives as runs finish; this covers runs finished by hand or
    by an older runner), so that the committed files match the report."""
    archived = [job for job in grid.jobs if job.status() == "done" and archive_run(job)]
    if archived:
        echo(f"archived {len(archived)} finished runs in {grid.archive}")


def write_report(grid: Grid, references_path: Path | None = None, echo: Callable[[str], None] = print) -> Path:
    """Write RESULTS/GRID.md (tables, figures, commands), GRID.json (every number), one PNG per env and a summary
    PNG across envs.

    `references_path`: published results shown beside ours and each env's normalisation (see `load_references`,
    `load_normalization`), or None.
    """
    references, normalization = load_references(references_path), load_normalization(references_path)
    if not grid.out.is_dir() and not (grid.archive and grid.archive.is_dir()):
        echo(f"warning: {grid.out} (the grid's `out`) does not exist, nor does an archive of its runs: no run of "
             "this grid has started")
    _archive_finished(grid, echo)
    curves = _Curves(grid)
    rows = summarize(grid, references, curves)
    comparisons = improvements(rows)
    groups = across_envs(rows, normalization)
    efficiency = sample_efficiency(grid, rows, curves)
    grid.results.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    figures = {}
    try:
        for env_id in dict.fromkeys(j.env_id for j in grid.jobs):
            png = plot_curves(env_id, curve_panels(grid, env_id, curves),
                              grid.results / f"{grid.name}-{env_file_name(env_id)}.png")
            if png is not None:
                figures[env_id] = png.name
        summary_png = plot_summary(groups, grid.results / f"{grid.name}-summary.png")
    except ImportError:
        summary_png = None
        echo("no figures: they need matplotlib (pip install 'diffagent[bench]')")
    machine = info["machine"]
    lines = [f"# {grid.name}: results", "",
             f"Grid `{grid.path.name}`; report written {info['date']} on {machine['cpu']} ({machine['cores']} "
             "cores) with " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
             "Score: evaluation return at the step budget (the mean over the evaluation episodes of each seed; "
             "deterministic, and stochastic beside it); IQM across seeds, with a stratified-bootstrap 95% interval "
             f"(rliable) from {MIN_SEEDS_FOR_CI} seeds on and the seeds' min-max below; mean +/- the sample std "
             "over seeds; entropy is the policy's entropy estimate as training logs it, in nats over the action "
             "dimensions (-E[L] plus the measured gap for DiffSAC and DiffWPO, -E[L] for DiffPPO, -E[log pi] for a "
             "Gaussian), averaged over the last tenth of the budget and over seeds: one temperature is not one "
             "entropy (docs/algorithms.md, section 8); steps/s is the "
             "median over seeds of each whole run, evaluations included (one thread per run). Each run's own "
             "machine, versions and wall time are in its results.json.", "",
             markdown_table(rows), "",
             f"Per seed: the score at the budget, the mean of the last {RECENT_EVALUATIONS} evaluations up to it in "
             "parentheses; an unfinished seed, its last evaluation.", "",
             per_seed_table(rows), ""]
    for env_id, png in figures.items():
        lines += [f"![{env_id}]({png})", ""]
    if comparisons:
        lines += ["## Probability of improvement", "",
                  "P(a run of algo scores above a run of the other on the same env), rliable's Mann-Whitney estimate, "
                  "averaged over envs in the rows that join several (on the seeds finished on all of them); 0.5 is a "
                  f"tie. It is printed with its stratified-bootstrap 95% interval once both have {MIN_SEEDS_FOR_CI} "
                  "seeds: no comparison is claimed from fewer (the JSON keeps the estimate).", "",
                  improvements_table(comparisons), "",
                  "In words: an algorithm wins when the interval lies above 0.5, loses when it lies below, and ties "
                  "when it holds 0.5 (no difference these seeds resolve).", "",
                  *verdict_lines(comparisons, rows), ""]
    if groups:
        lines += ["## Across envs", "",
                  "Scores normalised per env, 0 at a random policy's return and 1 at an expert's (the references "
                  "file's [[normalization]]: " + "; ".join(f"{env} {n['random']:,.1f} to {n['expert']:,.1f} "
                                                          f"({n['source']})" for env, n in normalization.items()
                                                          if any(env in g["envs"] for g in groups)) +
                  "); IQM over seeds and envs, on the seeds finished on every env; an algorithm with no finished seed "
                  "on one of the envs is named, not scored. The performance profile gives the fraction of runs "
                  "above each normalised score.", "",
                  across_envs_table(groups), ""]
        if summary_png is not None:
            lines += [f"![summary across envs]({summary_png.name})", ""]
    if efficiency:
        lines += ["## Sample efficiency", "",
                  "Environment steps until a run's evaluation return first reached the grid's target return on that "
                  "env; a seed that never did counts as slower than every other in the IQM.", "",
                  sample_efficiency_table(efficiency), ""]
    for env_id in dict.fromkeys(j.env_id for j in grid.jobs):
        if env_id in BANDITS:
            lines += multimodal_section(grid, env_id)
    lines += ["Commands (the first seed's; the other seeds differ in --seed alone; the runner adds --out, --threads 1 "
              "and --checkpoint-every):", ""]
    lines += [f"    {row['command']}" for row in rows if row["steps"] == max(grid.budgets[(row['env'], row['algo'])])]
    not_run = [f"{row['algo']} on {row['env']} at {row['steps']:,} steps (seeds {', '.join(map(str, row['missing_seeds']))})"
               for row in rows if row["missing_seeds"]]
    if not_run:
        lines += ["", "Not finished yet: " + "; ".join(not_run) + "."]
    markdown = grid.results / f"{grid.name}.md"
    markdown.write_text("\n".join(lines) + "\n")
    write_json(grid.results / f"{grid.name}.json", {**info, "grid": str(grid.path), "rows": _jsonable(rows),
                                                    "improvements": comparisons,
                                                    "across_envs": [_jsonable_group(g) for g in groups],
                                                    "sample_efficiency": _jsonable_efficiency(efficiency)})
    echo(f"wrote {markdown}")
    return markdown


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "scores": {str(seed): score for seed, score in row["scores"].items()},
             "recent_scores": {str(seed): score for seed, score in row["recent_scores"].items()},
             "stochastic_scores": {str(seed): score for seed, score in row["stochastic_scores"].items()},
             "entropy": {str(seed): value for seed, value in row["entropy"].items()},
             "partial": {str(seed): {"step": step, "score": score} for seed, (step, score) in row["partial"].items()}}
            for row in rows]


def _jsonable_group(group: dict[str, Any]) -> dict[str, Any]:
    return {**group, "thresholds": group["thresholds"].tolist(),
            "profiles": {algo: {"profile": profile.tolist(), "band": None if band is None else band.tolist()}
                         for algo, (profile, band) in group["profiles"].items()}}


def _jsonable_efficiency(efficiency: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # an unreached target is infinite: JSON has no infinity, so it is null there
    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return [{**e, "per_seed": {str(seed): finite(v) for seed, v in e["per_seed"].items()}, "iqm": finite(e["iqm"]),
             "ci": [finite(v) for v in e["ci"]]} for e in efficiency]
