"""Benchmark grids: train every (algorithm, env, seed, budget) of a grid file in the background,
resumably, then aggregate the runs into IQM tables with bootstrap intervals and learning-curve plots.

A grid file (TOML, see zoo/grids/) lists experiments:

    name = "classic"
    out = "../../runs/zoo"           # run directories         (paths are relative to this file)
    hyperparams = "../hyperparams"   # per-env files <env>.toml with an [algo] table each (optional)
    results = "../results"           # where `report` writes tables and plots
    references = "../references.toml"  # published numbers shown beside ours (optional)

    [[experiment]]
    envs = ["Pendulum-v1"]
    algos = ["sac", "diffsac"]
    seeds = [0, 1, 2, 3, 4]
    steps = 6000
    eval_every = 500
    eval_episodes = 10

Each run lives in OUT/ENV/ALGO/sSEED, one per (env, algo, seed): a larger budget extends the same
run from its checkpoint, and a budget's score is the last evaluation at or before that step.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from diffagent.config import PPOConfig, algo_spec, cli_value, make_config
from diffagent.errors import ConfigError, DiffAgentError
from diffagent.io import (CHECKPOINT_DIR, HELD_LOCK_ENV, METRICS_FILE, RESULTS_FILE, has_checkpoint, read_jsonl,
                          run_is_locked, run_lock, write_json)

LOG_FILE = "train.log"
BOOTSTRAP_SAMPLES = 2000
GRID_KEYS = {"name", "out", "hyperparams", "results", "references", "experiment"}
EXPERIMENT_KEYS = {"envs", "algos", "seeds", "steps", "eval_every", "eval_episodes", "checkpoint_every", "set"}


def is_on_policy(algo: str) -> bool:
    """PPO-family algorithms train at ten times the budget, so reports keep them apart."""
    return algo_spec(algo).config_class is PPOConfig


# --- grid files ------------------------------------------------------------------------------------
def env_file_name(env_id: str) -> str:
    """File-system name of an env id ('diffagent/FourPeaks-v0' -> 'diffagent-FourPeaks-v0')."""
    return env_id.replace("/", "-")


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables, or a ConfigError naming the `what` file that is missing or malformed."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} file {path} is not valid TOML: {err}") from None


def load_hyperparameters(path: str | Path, algo: str) -> dict[str, Any]:
    """The [algo] table of a hyperparameter file, or a ConfigError saying what the file holds."""
    tables = read_toml(path, "hyperparameter")
    table = tables.get(algo.lower())
    if not isinstance(table, dict):
        have = ", ".join(k for k, v in tables.items() if isinstance(v, dict)) or "none"
        raise ConfigError(f"{path} has no [{algo}] table (it has: {have}); add one (an empty table means "
                          "the library defaults)")
    return table


@dataclass(frozen=True)
class Job:
    """One training run of a grid."""

    algo: str
    env_id: str
    seed: int
    steps: int
    eval_every: int
    eval_episodes: int
    checkpoint_every: int
    run_dir: Path
    hyperparams: Path | None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.algo} {self.env_id} seed {self.seed} ({self.steps:,} steps)"

    def trained_steps(self) -> int | None:
        """Steps of the finished run in run_dir (from its results.json), or None when it has not finished."""
        try:
            return int(json.loads((self.run_dir / RESULTS_FILE).read_text())["total_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has_checkpoint(self) -> bool:
        return has_checkpoint(self.run_dir)

    def is_running(self) -> bool:
        """Whether a process is training into this run's directory now (it holds the run's lock)."""
        return run_is_locked(self.run_dir)

    def status(self) -> str:
        """'done', 'resume' (a checkpoint to continue from), 'new', or 'stale' (results, no checkpoint)."""
        trained = self.trained_steps()
        if trained is not None and trained >= self.steps:
            return "done"
        if self.has_checkpoint():
            return "resume"
        return "new" if trained is None else "stale"

    def train_command(self, executable: str = "diffagent") -> list[str]:
        """The `diffagent train` command line of this run (what the report quotes)."""
        command = [executable, "train", "--algo", self.algo, "--env", self.env_id, "--steps", str(self.steps),
                   "--seed", str(self.seed), "--eval-every", str(self.eval_every),
                   "--eval-episodes", str(self.eval_episodes)]
        if self.hyperparams is not None:
            command += ["--hparams", str(self.hyperparams)]
        for key, value in self.overrides:
            command += ["--set", f"{key}={cli_value(value)}"]
        return command

    def process_command(self) -> list[str]:
        """What the runner executes: train (new) or resume (a checkpoint exists), one thread."""
        cli = [sys.executable, "-m", "diffagent.cli"]
        if self.has_checkpoint():
            return cli + ["resume", str(self.run_dir), "--steps", str(self.steps), "--threads", "1"]
        return (cli + self.train_command("")[1:]
                + ["--out", str(self.run_dir), "--threads", "1", "--checkpoint-every", str(self.checkpoint_every)])


@dataclass
class Grid:
    """A parsed grid file."""

    name: str
    path: Path
    out: Path
    results: Path
    references: Path | None = None
    jobs: list[Job] = field(default_factory=list)
    budgets: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """(env, algo) -> every step budget the grid asks of it (a run covers all of them up to its largest)."""


def _checked(where: str, name: str, value: Any, kind: type, positive: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind) or (positive and value < 1):
        expected = {int: "a positive integer" if positive else "an integer", str: "a string"}.get(kind, kind.__name__)
        raise ConfigError(f"{where}: {name} must be {expected}, got {value!r}")
    return value


def _checked_list(where: str, name: str, value: Any, kind: type) -> list:
    if not isinstance(value, list) or not value:
        example = "[0, 1, 2]" if kind is int else '["a", "b"]'
        raise ConfigError(f"{where}: {name} must be a non-empty list, e.g. {name} = {example}, got {value!r}")
    return [_checked(where, f"an entry of {name}", item, kind) for item in value]


def _unknown_keys(where: str, keys: Iterable[str], known: set[str]) -> None:
    import difflib

    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def load_grid(path: str | Path) -> Grid:
    """Parse and check a grid file; every env, algorithm, hyperparameter and override is validated
    before anything runs, so a typo fails here and not in a job hours later."""
    import gymnasium as gym  # diffagent's own envs are registered: importing this module ran diffagent/__init__

    path = Path(path)
    spec = read_toml(path, "grid")
    _unknown_keys(str(path), spec, GRID_KEYS)
    experiments = spec.get("experiment")
    if not isinstance(experiments, list) or not experiments:
        raise ConfigError(f"{path} has no [[experiment]] tables; see the example in diffagent/bench.py")

    def beside(key: str, default: str | None = None) -> Path | None:  # paths in a grid file are relative to it
        value = spec.get(key, default)
        return None if value is None else Path(os.path.normpath(path.parent / _checked(str(path), key, value, str)))

    hyper_dir = beside("hyperparams")
    if hyper_dir is not None and not hyper_dir.is_dir():
        raise ConfigError(f"{path}: hyperparams folder {hyper_dir} does not exist")
    grid = Grid(name=_checked(str(path), "name", spec.get("name", path.stem), str), path=path,
                out=beside("out", f"runs/{path.stem}"), results=beside("results", "results"),
                references=beside("references"))
    seen: dict[Path, Job] = {}
    for number, experiment in enumerate(experiments, 1):
        where = f"{path}, experiment {number}"
        _unknown_keys(where, experiment, EXPERIMENT_KEYS)
        missing = {"envs", "algos", "seeds", "steps"} - set(experiment)
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(sorted(missing))}")
        steps = _checked(where, "steps", experiment["steps"], int, positive=True)
        eval_every = _checked(where, "eval_every", experiment.get("eval_every", max(steps // 10, 1)), int, True)
        eval_episodes = _checked(where, "eval_episodes", experiment.get("eval_episodes", 10), int, True)
        # at least every evaluation's worth of steps: a checkpoint costs about as much as an evaluation
        checkpoint_every = _checked(where, "checkpoint_every",
                                    experiment.get("checkpoint_every", max(steps // 10, eval_every)), int, True)
        overrides = experiment.get("set", {})
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: set must be a table of overrides, e.g. set = {{ batch_size = 512 }}")
        overrides = tuple(sorted(overrides.items()))
        envs = _checked_list(where, "envs", experiment["envs"], str)
        algos = [algo.lower() for algo in _checked_list(where, "algos", experiment["algos"], str)]
        for env_id in envs:
            if env_id not in gym.registry:
                raise ConfigError(f"{where}: unknown environment id {env_id!r}")
        for seed in _checked_list(where, "seeds", experiment["seeds"], int):
            for env_id in envs:
                for algo in algos:
                    algo_spec(algo)
                    hyper_file = hyper_dir / f"{env_file_name(env_id)}.toml" if hyper_dir else None
                    if hyper_file is not None and not hyper_file.is_file():
                        hyper_file = None  # the library defaults; `bench run --dry-run` shows which file each run uses
                    hyper = load_hyperparameters(hyper_file, algo) if hyper_file is not None else {}
                    try:
                        make_config(algo, {**hyper, **dict(overrides)})
                    except ConfigError as err:
                        raise ConfigError(f"{where}, {algo} on {env_id}: {err}") from None
                    run_dir = grid.out / env_file_name(env_id) / algo / f"s{seed}"
                    job = Job(algo, env_id, seed, steps, eval_every, eval_episodes, checkpoint_every, run_dir,
                              hyper_file, overrides)
                    grid.budgets.setdefault((env_id, algo), [])
                    if steps not in grid.budgets[(env_id, algo)]:
                        grid.budgets[(env_id, algo)].append(steps)
                    previous = seen.get(run_dir)
                    if previous is not None:
                        if (previous.eval_every, previous.eval_episodes, previous.overrides) != (
                                job.eval_every, job.eval_episodes, job.overrides):
                            raise ConfigError(f"{where}: {algo} on {env_id} seed {seed} is also in an earlier "
                                              "experiment with other eval_every, eval_episodes or set; one run "
                                              "directory serves both budgets, so they must agree")
                        if previous.steps >= steps:
                            continue  # the larger budget's run covers this one
                    seen[run_dir] = job
    # seed-major across experiments: a grid stopped early holds comparable seeds of every algorithm
    grid.jobs = sorted(seen.values(), key=lambda job: job.seed)
    return grid


# --- running ---------------------------------------------------------------------------------------
@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    log: Any
    lock: contextlib.AbstractContextManager  # the run's lock, held from before the start to after the exit
    started: float

    def close(self) -> None:
        self.log.close()
        self.lock.__exit__(None, None, None)


def run_grid(grid: Grid, parallel: int | None = None, echo: Callable[[str], None] = print,
             poll_seconds: float = 1.0) -> dict[str, list[str]]:
    """Run every unfinished job of `grid`, `parallel` at a time (default: one per core), one thread each.

    A job with a checkpoint resumes from it; a finished job is skipped; a job whose directory is
    locked by a training still running (another runner's, or one started by hand) is skipped. The
    runner takes each job's lock before starting it and hands it to the child, so two runners on
    one grid never start the same job. Each job's output goes to RUN_DIR/train.log. Returns the
    job names per outcome: already_done, trained, failed, skipped.
    """
    parallel = max(1, parallel or os.cpu_count() or 1)
    outcome: dict[str, list[str]] = {"already_done": [], "trained": [], "failed": [], "skipped": []}
    queue: list[Job] = []
    for job in grid.jobs:
        status = job.status()
        if status == "done":
            outcome["already_done"].append(job.name)
        elif status == "stale":
            outcome["skipped"].append(job.name)
            echo(f"skip {job.name}: {job.run_dir} holds a finished {job.trained_steps():,}-step run and no "
                 "checkpoint to extend it from; move it away to train again")
        else:
            queue.append(job)
    echo(f"{grid.name}: {len(grid.jobs)} runs, {len(outcome['already_done'])} done, {len(queue)} to run, "
         f"{parallel} at a time")
    running: list[_Running] = []
    # `kill RUNNER` should stop its trainings too, as Ctrl-C does: both unwind through `finally`
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                job = queue.pop(0)
                lock = run_lock(job.run_dir, wait_seconds=0.0)
                try:
                    handle = lock.__enter__()
                except DiffAgentError:
                    outcome["skipped"].append(job.name)
                    echo(f"skip {job.name}: another process is training it")
                    continue
                try:
                    if job.status() == "done":  # finished meanwhile by another runner on the same runs
                        lock.__exit__(None, None, None)
                        outcome["already_done"].append(job.name)
                        continue
                    if not job.has_checkpoint():  # killed before its first complete checkpoint: start over
                        (job.run_dir / METRICS_FILE).unlink(missing_ok=True)
                        shutil.rmtree(job.run_dir / CHECKPOINT_DIR, ignore_errors=True)
                    verb = "resume" if job.has_checkpoint() else "start"
                    log = open(job.run_dir / LOG_FILE, "a")
                    env = {**os.environ, HELD_LOCK_ENV: str(Path(handle.name).resolve())}
                    # the child inherits the lock file, so the lock outlives this runner if it is killed -9
                    process = subprocess.Popen(job.process_command(), stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, env=env, pass_fds=(handle.fileno(),))
                except BaseException:
                    lock.__exit__(None, None, None)
                    raise
                running.append(_Running(job, process, log, lock, time.perf_counter()))
                echo(f"{verb} {job.name} -> {job.run_dir}")
            time.sleep(poll_seconds)
            for entry in [r for r in running if r.process.poll() is not None]:
                running.remove(entry)
                entry.close()
                minutes = (time.perf_counter() - entry.started) / 60
                if entry.process.returncode == 0:
                    outcome["trained"].append(entry.job.name)
                    echo(f"finished {entry.job.name} in {minutes:.1f} min")
                else:
                    outcome["failed"].append(entry.job.name)
                    echo(f"FAILED {entry.job.name} (exit {entry.process.returncode}); see {entry.job.run_dir / LOG_FILE}")
    finally:
        for entry in running:  # interrupted: stop the children; their checkpoints let a rerun resume
            entry.process.terminate()
        for entry in running:
            try:
                entry.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                entry.process.kill()
                entry.process.wait()
            entry.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return outcome


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- statistics ------------------------------------------------------------------------------------
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


# --- reading runs ----------------------------------------------------------------------------------
def read_curve(run_dir: Path) -> dict[int, float]:
    """step -> deterministic evaluation return, from metrics.jsonl (the last record of a step wins)."""
    return {int(record["step"]): float(record["eval_return"])
            for record in read_jsonl(run_dir / METRICS_FILE) if "eval_return" in record}


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last record of metrics.jsonl (losses and alpha at the end of training)."""
    records = read_jsonl(run_dir / METRICS_FILE)
    return records[-1] if records else {}


def score_at(curve: dict[int, float], budget: int) -> float | None:
    """The evaluation at `budget` steps: the last one at or before it, if the run got that far."""
    if not curve or max(curve) < budget:
        return None
    return curve[max(step for step in curve if step <= budget)]


# --- the report --------------------------------------------------------------------------------------
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
    family = "ppo" if is_on_policy(algo) else "sac"  # the Gaussian baseline the paper compares against
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
    """One row per (env, algo, budget): per-seed scores, IQM with a bootstrap 95% interval, and more."""
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
                row.update(iqm=iqm(values), ci=bootstrap_interval(values), mean=float(np.mean(values)),
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
    centre = f"{row['iqm']:,.1f} [{low:,.1f}, {high:,.1f}]"
    if len(row["seeds"]) == 1:  # one seed has no spread to report
        centre, spread = f"{row['iqm']:,.1f} (one seed)", "-"
    return [row["env"], row["algo"], f"{row['steps']:,}", str(len(row["seeds"])), centre, spread, speed,
            row["reference"]]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results table: IQM [bootstrap 95% CI] over seeds, mean +/- std, speed, the reference beside."""
    header = ["env", "algo", "steps", "seeds", "IQM [95% CI]", "mean +/- std", "steps/s", "reference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format_row(row)) + " |" for row in rows]
    return "\n".join(lines)


# one colour per family: the Gaussian baseline dashed, its diffusion version solid
FAMILY_COLOURS = {"sac": "tab:blue", "wpo": "tab:green", "ppo": "tab:purple"}


def plot_curves(grid: Grid, env_id: str, path: Path) -> Path | None:
    """Learning curves on `env_id`: IQM over seeds with a bootstrap 95% band, one panel for the
    off-policy algorithms and one for the on-policy ones (their budgets differ tenfold)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    algos = list(dict.fromkeys(j.algo for j in grid.jobs if j.env_id == env_id))
    panels = [group for group in ([a for a in algos if not is_on_policy(a)], [a for a in algos if is_on_policy(a)])
              if group]
    fig = Figure(figsize=(6.4 * len(panels), 4.2), layout="constrained")
    drawn = False
    for ax, group in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for algo in group:
            curves = [c for c in (read_curve(j.run_dir) for j in grid.jobs if (j.env_id, j.algo) == (env_id, algo)) if c]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []  # reached by every seed
            if not steps:
                continue
            centre = [iqm(c[s] for c in curves) for s in steps]
            bands = np.array([bootstrap_interval([c[s] for c in curves], samples=500) for s in steps])
            colour = FAMILY_COLOURS[algo.removeprefix("diff")]
            ax.plot(steps, centre, color=colour, linestyle="-" if algo.startswith("diff") else "--",
                    label=f"{algo} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
            ax.fill_between(steps, bands[:, 0], bands[:, 1], color=colour, alpha=0.15)
            drawn = True
        ax.set(title=f"{env_id}: evaluation return (IQM, 95% CI)", xlabel="environment steps", ylabel="return")
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
    from diffagent.agent import Agent
    from diffagent.multimodal import COVERAGE_THRESHOLD, MODE_RADIUS, make_bandit, mode_coverage, plot_samples

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
             "of each seed); IQM and a percentile-bootstrap 95% interval across seeds; steps/s is the "
             "median over seeds of each whole run, evaluations included (one thread per run). Each run's own "
             "machine, versions and wall time are in its results.json.", "",
             markdown_table(rows), ""]
    for env_id, png in plots.items():
        lines += [f"![{env_id}]({png})", ""]
    from diffagent.multimodal import BANDITS

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

