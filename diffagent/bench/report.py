"""The report of a grid: a table of IQM [bootstrap 95% CI, or min-max below 5 seeds] per (env, algo, budget)
beside published references, learning curves, the multimodal bandits' mode coverage, and every number as JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from diffagent.agent import Agent
from diffagent.bench.grid import Grid, env_file_name, last_metrics, read_curve, read_toml
from diffagent.bench.stats import MIN_SEEDS_FOR_CI, iqm, score_at, seed_interval
from diffagent.config import algo_spec
from diffagent.errors import ConfigError
from diffagent.io import RESULTS_FILE, write_json
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


REFERENCE_KEYS = {"env", "algo", "steps", "mean", "std", "source"}


def load_references(path: Path | None) -> list[dict[str, Any]]:
    """Reference results (zoo/references.toml): [[reference]] tables of env, algo, steps, mean, std, source."""
    if path is None:
        return []
    references = read_toml(path, "reference").get("reference", [])
    for number, reference in enumerate(references, 1):
        missing = REFERENCE_KEYS - set(reference)
        if missing:
            raise ConfigError(f"{path}, reference {number} lacks {', '.join(sorted(missing))}")
    return references


def _reference_for(references: list[dict], env_id: str, algo: str, steps: int) -> str:
    family = algo_spec(algo).family  # its Gaussian baseline, whose published results are the reference
    found = [r for r in references if r["env"] == env_id and r["algo"] == family and r["steps"] == steps]
    return "; ".join(f"{family.upper()} {r['mean']:,.0f} +/- {r['std']:,.0f} ({r['source']})" for r in found) or "-"


def _steps_per_second(run_dir: Path) -> float | None:
    """Whole-run speed of a finished run, evaluations included (results.json)."""
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        return results["total_steps"] / results["train_time_s"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def summarize(grid: Grid, references: list[dict] | None = None) -> list[dict[str, Any]]:
    """One row per (env, algo, budget): per-seed scores, IQM with its interval over seeds (`seed_interval`), and
    more."""
    references = references or []
    curves = {job.run_dir: read_curve(job.run_dir) for job in grid.jobs}  # each metrics file read once
    rows = []
    for (env_id, algo), budgets in grid.budgets.items():
        for budget in sorted(budgets):
            jobs = [j for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo) and j.steps >= budget]
            scores, times, missing, partial = {}, [], [], {}
            for job in jobs:
                curve = curves[job.run_dir]
                score = score_at(curve, budget)
                if score is None:
                    missing.append(job.seed)
                    if curve:  # stopped (or still running) short of the budget: say how far it got
                        partial[job.seed] = (max(curve), curve[max(curve)])
                    continue
                scores[job.seed] = score
                speed = _steps_per_second(job.run_dir)
                if speed:
                    times.append(speed)
            values = list(scores.values())
            row = {"env": env_id, "algo": algo, "steps": budget, "seeds": sorted(scores), "missing_seeds": missing,
                   "partial": partial,
                   "scores": scores, "reference": _reference_for(references, env_id, algo, budget),
                   "command": shlex.join(jobs[0].train_command()), "steps_per_second": float(np.median(times)) if times else None}
            if values:
                interval, (low, high) = seed_interval(values)
                row.update(iqm=iqm(values), ci=(low, high), interval=interval, mean=float(np.mean(values)),
                           std=float(np.std(values)))
            rows.append(row)
    return rows


def _format_row(row: dict[str, Any]) -> list[str]:
    if "iqm" not in row:
        reached = "; ".join(f"seed {seed}: {score:,.1f} at {step:,} steps" for seed, (step, score) in row["partial"].items())
        return [row["env"], row["algo"], f"{row['steps']:,}", "0", f"not finished ({reached})" if reached else "not run",
                "-", "-", row["reference"]]
    low, high = row["ci"]
    speed = f"{row['steps_per_second']:.0f}" if row["steps_per_second"] else "-"
    spread = f"{row['mean']:,.1f} +/- {row['std']:,.1f}"
    centre = f"{row['iqm']:,.1f} [{row['interval']} {low:,.1f}, {high:,.1f}]"
    if len(row["seeds"]) == 1:  # one seed has no spread to report
        centre, spread = f"{row['iqm']:,.1f} (one seed)", "-"
    return [row["env"], row["algo"], f"{row['steps']:,}", str(len(row["seeds"])), centre, spread, speed,
            row["reference"]]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results table: IQM [its interval] over seeds, mean +/- std, speed, the reference beside."""
    header = ["env", "algo", "steps", "seeds", "IQM [interval]", "mean +/- std", "steps/s", "reference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format_row(row)) + " |" for row in rows]
    return "\n".join(lines)


# one colour per family: the Gaussian baseline dashed, its diffusion version solid
FAMILY_COLOURS = {"sac": "tab:blue", "wpo": "tab:green", "ppo": "tab:purple"}


def plot_curves(grid: Grid, env_id: str, path: Path) -> Path | None:
    """Learning curves on `env_id`: IQM over seeds with a band (`seed_interval`: a bootstrap 95% CI from 5 seeds,
    the seeds' range below), one panel for the off-policy algorithms and one for the on-policy ones (their
    budgets differ tenfold)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    algos = list(dict.fromkeys(j.algo for j in grid.jobs if j.env_id == env_id))
    on_policy = {algo: algo_spec(algo).algorithm.on_policy for algo in algos}
    panels = [group for group in ([a for a in algos if not on_policy[a]], [a for a in algos if on_policy[a]]) if group]
    fig = Figure(figsize=(6.4 * len(panels), 4.2), layout="constrained")
    drawn = False
    for ax, group in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for algo in group:
            curves = [c for c in (read_curve(j.run_dir) for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo)) if c]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []  # reached by every seed
            if not steps:
                continue
            centre = [iqm(c[s] for c in curves) for s in steps]
            bands = np.array([seed_interval([c[s] for c in curves], samples=500)[1] for s in steps])
            spec = algo_spec(algo)
            colour = FAMILY_COLOURS[spec.family]
            band = "95% CI" if len(curves) >= MIN_SEEDS_FOR_CI else "min-max"
            ax.plot(steps, centre, color=colour, linestyle="--" if algo == spec.family else "-",
                    label=f"{algo} ({len(curves)} seed{'s' if len(curves) > 1 else ''}, {band})")
            ax.fill_between(steps, bands[:, 0], bands[:, 1], color=colour, alpha=0.15)
            drawn = True
        ax.set(title=f"{env_id}: evaluation return (IQM and its band)", xlabel="environment steps", ylabel="return")
        ax.grid(alpha=0.3)
        ax.legend()
    if not drawn:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def multimodal_section(grid: Grid, env_id: str) -> list[str]:
    """For a multimodal bandit: modes covered and per-mode mass against exp(Q/alpha), per algorithm,
    and a plot of the first seed's sampled actions of every algorithm side by side."""
    bandit = make_bandit(env_id)
    rows, first_seed = [], {}
    for algo in dict.fromkeys(j.algo for j in grid.jobs if j.env_id == env_id):
        coverages = []
        for job in (j for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo) and j.status() == "done"):
            agent = Agent.from_pretrained(job.run_dir)
            learned = last_metrics(job.run_dir).get("alpha")  # an autotuned alpha lives in the metrics only
            coverage = mode_coverage(agent, alpha=learned, seed=job.seed, bandit=bandit)
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


def write_report(grid: Grid, references_path: Path | None = None, echo: Callable[[str], None] = print) -> Path:
    """Write RESULTS/GRID.md (table, plots, commands), GRID.json (every number) and one PNG per env.

    `references_path`: published results shown beside ours (see `load_references`), or None.
    """
    references = load_references(references_path)
    if not grid.out.is_dir():
        echo(f"warning: {grid.out} (the grid's `out`) does not exist: no run of this grid has started")
    rows = summarize(grid, references)
    grid.results.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    plots = {}
    try:
        for env_id in dict.fromkeys(j.env_id for j in grid.jobs):
            png = plot_curves(grid, env_id, grid.results / f"{grid.name}-{env_file_name(env_id)}.png")
            if png is not None:
                plots[env_id] = png.name
    except ImportError:
        echo("no plots: they need matplotlib (pip install 'diffagent[bench]')")
    machine = info["machine"]
    lines = [f"# {grid.name}: results", "",
             f"Grid `{grid.path.name}`; report written {info['date']} on {machine['cpu']} ({machine['cores']} "
             "cores) with " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
             "Score: deterministic evaluation return at the step budget (the mean over the evaluation episodes "
             f"of each seed); IQM across seeds, with a percentile-bootstrap 95% interval from {MIN_SEEDS_FOR_CI} "
             "seeds on and the seeds' min-max below; steps/s is the "
             "median over seeds of each whole run, evaluations included (one thread per run). Each run's own "
             "machine, versions and wall time are in its results.json.", "",
             markdown_table(rows), ""]
    for env_id, png in plots.items():
        lines += [f"![{env_id}]({png})", ""]
    for env_id in dict.fromkeys(j.env_id for j in grid.jobs):
        if env_id in BANDITS:
            lines += multimodal_section(grid, env_id)
    lines += ["Commands (one per seed; the runner adds --out, --threads 1 and --checkpoint-every):", ""]
    lines += [f"    {row['command']}" for row in rows if row["steps"] == max(grid.budgets[(row['env'], row['algo'])])]
    not_run = [f"{row['algo']} on {row['env']} at {row['steps']:,} steps (seeds {', '.join(map(str, row['missing_seeds']))})"
               for row in rows if row["missing_seeds"]]
    if not_run:
        lines += ["", "Not finished yet: " + "; ".join(not_run) + "."]
    markdown = grid.results / f"{grid.name}.md"
    markdown.write_text("\n".join(lines) + "\n")
    write_json(grid.results / f"{grid.name}.json", {**info, "grid": str(grid.path), "rows": _jsonable(rows)})
    echo(f"wrote {markdown}")
    return markdown


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "scores": {str(seed): score for seed, score in row["scores"].items()},
             "partial": {str(seed): {"step": step, "score": score} for seed, (step, score) in row["partial"].items()}}
            for row in rows]
