"""Grid files: the experiments of a benchmark, parsed and checked into one `Job` per training run.

A grid file (TOML, see zoo/grids/) lists experiments:

    name = "classic"
    out = "../../runs/zoo"           # run directories         (paths are relative to this file)
    hyperparams = "../hyperparams"   # per-env files <env>.toml with an [algo] table each (optional)
    results = "../results"           # where `report` writes tables and plots
    references = "../references.toml"  # published numbers, and each env's score normalisation (optional)
    archive = "../runs/classic"      # where each finished run's small files are kept in git (optional)
    target_returns = { "Pendulum-v1" = -200 }  # sample efficiency: steps until a run first reaches it (optional)

    [[experiment]]
    envs = ["Pendulum-v1"]           # an env of your own: "my_module:MyEnv-v0" (importing my_module registers it)
    algos = ["sac", "diffsac", "sb3-sac"]  # sb3-sac, sb3-ppo: Stable-Baselines3's (diffagent/bench/sb3.py)
    seeds = [0, 1, 2, 3, 4]
    steps = 6000
    eval_every = 500
    eval_episodes = 10
    env_kwargs = { g = 9.81 }        # gym.make's keyword arguments (optional)
    gym_packages = ["my_envs"]       # modules to import first: they register envs or define wrappers (optional)

Each run lives in OUT/ENV/ALGO/sSEED, one per (env, algo, seed): a larger budget extends the same
run from its checkpoint, and a budget's score is the evaluation at that step (an on-policy run's, at the end of
the rollout that crosses it), so every budget of a run is a multiple of its eval_every. With an
`archive`, a finished run's config.json, results.json and metrics.jsonl are copied to ARCHIVE/ENV/ALGO/sSEED
(not its checkpoints, weights or logs): committed to git, they let `report` rebuild every table and figure on
another machine, where there is no run directory, and `run` counts those runs as done.

A hyperparameter file's [algo] table may hold, beside the algorithm's hyperparameters, rl-zoo3's
`env_wrapper` (a wrapper or a list of them, each "module.Class" or { "module.Class" = { kwargs } })
and `env_kwargs`; `split_env_settings` takes them out.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from diffagent.bench.sb3 import SB3_ALGORITHMS, is_sb3, sb3_hyperparameters
from diffagent.config import algo_spec, cli_value, make_config
from diffagent.envs import WrapperSpec, import_packages, split_env_id
from diffagent.errors import ConfigError
from diffagent.io import (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, WEIGHTS_FILE, checkpoint_step, has_checkpoint,
                          read_jsonl, run_is_locked)
from diffagent.multimodal import BANDITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

GRID_KEYS = {"name", "out", "hyperparams", "results", "references", "archive", "target_returns", "experiment"}
# what an archived run keeps: enough for every table and figure, small enough for git
ARCHIVED_FILES = (CONFIG_FILE, RESULTS_FILE, METRICS_FILE)
DETERMINISTIC_RETURN, STOCHASTIC_RETURN = "eval_return", "eval_return_stochastic"  # metrics.jsonl's keys
ENTROPY_ESTIMATE = "entropy_estimate"  # the policy's entropy as training logs it (docs/algorithms.md, section 6)
EXPERIMENT_KEYS = {"envs", "algos", "seeds", "steps", "eval_every", "eval_episodes", "checkpoint_every", "set",
                   "env_kwargs", "gym_packages"}


def env_file_name(env_id: str) -> str:
    """File-system name of an env id ('diffagent/FourPeaks-v0' -> 'diffagent-FourPeaks-v0'; a module:Env-v0
    id is named by its env)."""
    return split_env_id(env_id)[1].replace("/", "-")


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


def _checked_env_kwargs(where: str, env_kwargs: Any) -> dict[str, Any]:
    if not isinstance(env_kwargs, dict):
        raise ConfigError(f"{where}: env_kwargs must be a table of gym.make's keyword arguments, e.g. "
                          "env_kwargs = { g = 9.81 }")
    return env_kwargs


def split_env_settings(table: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hyperparameters, env settings) of a hyperparameter table: its env_kwargs and env_wrapper (rl-zoo3's
    names) make the env, as Agent's `env_kwargs` and `wrappers`; the rest configure the algorithm."""
    hyperparameters = {k: v for k, v in table.items() if k not in ("env_kwargs", "env_wrapper")}
    env_kwargs, wrappers = _checked_env_kwargs(where, table.get("env_kwargs", {})), table.get("env_wrapper", [])
    wrappers = wrappers if isinstance(wrappers, list) else [wrappers]
    try:
        [WrapperSpec.parse(wrapper) for wrapper in wrappers]
    except ConfigError as err:
        raise ConfigError(f"{where}: env_wrapper: {err}") from None
    return hyperparameters, {"env_kwargs": env_kwargs, "wrappers": wrappers}


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
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    gym_packages: tuple[str, ...] = ()
    archive_dir: Path | None = None
    """Where the finished run's small files are kept (the grid's `archive`), or None."""

    @property
    def name(self) -> str:
        return f"{self.algo} {self.env_id} seed {self.seed} ({self.steps:,} steps)"

    def source_dir(self) -> Path:
        """Where this run's files are read from: its run directory once training has written metrics there,
        else its archived copy when there is one (on a machine that did not train it)."""
        if (self.run_dir / METRICS_FILE).is_file() or self.archive_dir is None:
            return self.run_dir
        return self.archive_dir if (self.archive_dir / METRICS_FILE).is_file() else self.run_dir

    def is_archived_only(self) -> bool:
        """Whether this run is known here only from its archived files (its checkpoints stayed where it trained)."""
        return self.source_dir() != self.run_dir

    def trained_steps(self) -> int | None:
        """Steps of the finished run (its results.json, in the run directory or archived), or None when it has
        not finished."""
        try:
            return int(json.loads((self.source_dir() / RESULTS_FILE).read_text())["total_steps"])
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
        """The command line that trains this run (what the report quotes): `diffagent train`, or `diffagent bench
        sb3` for Stable-Baselines3's."""
        trainer = ["bench", "sb3"] if is_sb3(self.algo) else ["train"]
        command = [executable, *trainer, *self._gym_packages_options(), "--algo", self.algo, "--env", self.env_id,
                   "--steps", str(self.steps), "--seed", str(self.seed), "--eval-every", str(self.eval_every),
                   "--eval-episodes", str(self.eval_episodes)]
        for key, value in self.env_kwargs:
            command += ["--env-kwargs", f"{key}={json.dumps(value)}"]
        if self.hyperparams is not None:
            command += ["--hparams", str(self.hyperparams)]
        for key, value in self.overrides:  # an SB3 keyword argument may be a table (policy_kwargs): JSON
            command += ["--set", f"{key}={json.dumps(value) if is_sb3(self.algo) else cli_value(value)}"]
        return command

    def _gym_packages_options(self) -> list[str]:
        return [option for package in self.gym_packages for option in ("--gym-packages", package)]

    def process_command(self) -> list[str]:
        """What the runner executes: train (new) or resume (a checkpoint exists), one thread. An SB3 run's
        command continues from its checkpoint by itself."""
        cli = [sys.executable, "-m", "diffagent.cli"]
        if self.has_checkpoint() and not is_sb3(self.algo):
            module = split_env_id(self.env_id)[0]  # a resumed run imports what its training imported
            packages = self._gym_packages_options() + (["--gym-packages", module] if module else [])
            return cli + ["resume", str(self.run_dir), *packages, "--steps", str(self.steps), "--threads", "1"]
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
    archive: Path | None = None
    target_returns: dict[str, float] = field(default_factory=dict)
    """env -> the return whose first crossing measures sample efficiency."""
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


def load_grid(path: str | Path, archive: str | Path | None = None) -> Grid:
    """Parse and check a grid file; every env, algorithm, hyperparameter and override is validated
    before anything runs, so a typo fails here and not in a job hours later. `archive` replaces the grid's
    own (a grid run from another checkout archives into the one that commits the results)."""
    import gymnasium as gym  # diffagent's own envs are registered: importing this module ran diffagent/__init__

    path = Path(path)
    spec = read_toml(path, "grid")
    _unknown_keys(str(path), spec, GRID_KEYS)
    experiments = spec.get("experiment")
    if not isinstance(experiments, list) or not experiments:
        raise ConfigError(f"{path} has no [[experiment]] tables; see the example in diffagent/bench/grid.py")

    def beside(key: str, default: str | None = None) -> Path | None:  # paths in a grid file are relative to it
        value = spec.get(key, default)
        return None if value is None else Path(os.path.normpath(path.parent / _checked(str(path), key, value, str)))

    hyper_dir = beside("hyperparams")
    if hyper_dir is not None and not hyper_dir.is_dir():
        raise ConfigError(f"{path}: hyperparams folder {hyper_dir} does not exist")
    grid = Grid(name=_checked(str(path), "name", spec.get("name", path.stem), str), path=path,
                out=beside("out", f"runs/{path.stem}"), results=beside("results", "results"),
                references=beside("references"), archive=Path(archive) if archive else beside("archive"))
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
        env_kwargs = _checked_env_kwargs(where, experiment.get("env_kwargs", {}))
        gym_packages = (_checked_list(where, "gym_packages", experiment["gym_packages"], str)
                        if "gym_packages" in experiment else [])
        import_packages(gym_packages)  # the grid's author named them: they register the grid's own envs
        envs = _checked_list(where, "envs", experiment["envs"], str)
        algos = [algo.lower() for algo in _checked_list(where, "algos", experiment["algos"], str)]
        for env_id in envs:
            module, name = split_env_id(env_id)
            import_packages([module] if module else [])
            if name not in gym.registry:
                raise ConfigError(f"{where}: unknown environment id {env_id!r}")
        for seed in _checked_list(where, "seeds", experiment["seeds"], int):
            for env_id in envs:
                for algo in algos:
                    hyper_file = _checked_algo(where, algo, env_id, hyper_dir, dict(overrides))
                    run_path = Path(env_file_name(env_id)) / algo / f"s{seed}"
                    run_dir = grid.out / run_path
                    job = Job(algo, env_id, seed, steps, eval_every, eval_episodes, checkpoint_every, run_dir,
                              hyper_file, overrides, tuple(sorted(env_kwargs.items())), tuple(gym_packages),
                              grid.archive / run_path if grid.archive else None)
                    grid.budgets.setdefault((env_id, algo), [])
                    if steps not in grid.budgets[(env_id, algo)]:
                        grid.budgets[(env_id, algo)].append(steps)
                    previous = seen.get(run_dir)
                    if previous is not None:
                        _check_shared_run(where, previous, job)
                        if previous.steps >= steps:
                            continue  # the larger budget's run covers this one
                    seen[run_dir] = job
    grid.target_returns = _target_returns(path, spec.get("target_returns", {}), {job.env_id for job in seen.values()})
    # seed-major across experiments: a grid stopped early holds comparable seeds of every algorithm
    grid.jobs = sorted(seen.values(), key=lambda job: job.seed)
    return grid


def _check_shared_run(where: str, previous: Job, job: Job) -> None:
    """Two experiments that ask one run for two budgets must train it alike, and the smaller budget must fall on
    an evaluation: the run trains straight through it."""
    shared = ("eval_every", "eval_episodes", "overrides", "env_kwargs", "gym_packages")  # not the checkpoints' cadence
    differ = [name for name in shared if getattr(previous, name) != getattr(job, name)]
    name = f"{job.algo} on {job.env_id} seed {job.seed}"
    if differ:
        raise ConfigError(f"{where}: {name} is also in an earlier experiment, with another "
                          f"{', '.join(n if n != 'overrides' else 'set' for n in differ)}; one run directory serves "
                          "both budgets, so they must agree (eval_every defaults to a tenth of steps: set it in both)")
    smaller = min(previous.steps, job.steps)
    if smaller % job.eval_every:
        raise ConfigError(f"{where}: {name} is scored at {smaller:,} steps on the way to "
                          f"{max(previous.steps, job.steps):,}, but evaluates every {job.eval_every:,}: no evaluation "
                          f"falls at {smaller:,}. Make eval_every divide it.")


def _checked_algo(where: str, algo: str, env_id: str, hyper_dir: Path | None, overrides: dict[str, Any]) -> Path | None:
    """Check an algorithm of an experiment with its hyperparameters and overrides; its hyperparameter file, or
    None for the library defaults (and for an SB3 run, which takes rl-baselines3-zoo's and the overrides)."""
    if is_sb3(algo):
        try:
            sb3_hyperparameters(algo, overrides)
        except ConfigError as err:
            raise ConfigError(f"{where}, {algo} on {env_id}: {err}") from None
        return None
    try:
        algo_spec(algo)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}; a grid also runs Stable-Baselines3's: "
                          f"{', '.join(SB3_ALGORITHMS)}") from None
    hyper_file = hyper_dir / f"{env_file_name(env_id)}.toml" if hyper_dir else None
    if hyper_file is not None and not hyper_file.is_file():
        hyper_file = None  # the library defaults; `bench run --dry-run` shows which file each run uses
    hyper = load_hyperparameters(hyper_file, algo) if hyper_file is not None else {}
    try:
        make_config(algo, {**split_env_settings(hyper, str(hyper_file))[0], **overrides})
    except ConfigError as err:
        raise ConfigError(f"{where}, {algo} on {env_id}: {err}") from None
    return hyper_file


def _target_returns(path: Path, table: Any, envs: set[str]) -> dict[str, float]:
    if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in table.values()):
        raise ConfigError(f"{path}: target_returns must be a table of env ids to returns, e.g. "
                          'target_returns = { "Hopper-v4" = 1000 }')
    unknown = sorted(set(table) - envs)
    if unknown:
        raise ConfigError(f"{path}: target_returns names {', '.join(unknown)}, which no experiment runs; the grid's "
                          f"envs: {', '.join(sorted(envs))}")
    return {env_id: float(value) for env_id, value in table.items()}


def algo_family(algo: str) -> str:
    """The Gaussian baseline an algorithm belongs with (diffsac -> sac, sb3-ppo -> ppo): its colour, its
    references, and what a diffusion algorithm is compared against."""
    return SB3_ALGORITHMS[algo].family if is_sb3(algo) else algo_spec(algo).family


def is_on_policy(algo: str) -> bool:
    return SB3_ALGORITHMS[algo].on_policy if is_sb3(algo) else algo_spec(algo).algorithm.on_policy


def archived_files(job: Job) -> tuple[str, ...]:
    """ARCHIVED_FILES, and for a run on a multimodal bandit its policy's weights (tens to hundreds of kB): the
    report's modes table samples the policy, so that table too rebuilds from the archive alone."""
    return ARCHIVED_FILES + ((WEIGHTS_FILE,) if job.env_id in BANDITS and not is_sb3(job.algo) else ())


def archive_run(job: Job) -> bool:
    """Copy a finished run's small files (`archived_files`) to its archive folder, those that differ from the copy
    there; False when nothing was copied (no archive, the run has not finished here, or the copy is current)."""
    if job.archive_dir is None or job.is_archived_only() or not (job.run_dir / RESULTS_FILE).is_file():
        return False
    job.archive_dir.mkdir(parents=True, exist_ok=True)
    copied = False
    for name in archived_files(job):
        source, copy = job.run_dir / name, job.archive_dir / name
        if source.is_file() and not (copy.is_file() and filecmp.cmp(source, copy, shallow=False)):
            shutil.copyfile(source, copy)
            copied = True
    return copied



# --- reading runs ----------------------------------------------------------------------------------
def read_curve(run_dir: Path, key: str = DETERMINISTIC_RETURN) -> dict[int, float]:
    """step -> evaluation return (deterministic, or `key`=STOCHASTIC_RETURN), from metrics.jsonl (the last record
    of a step wins). A run recorded before the stochastic return was has an empty stochastic curve."""
    return read_curves(run_dir, (key,))[key]


def read_curves(run_dir: Path, keys: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """`read_curve` of several metrics.jsonl keys, the file read once: key -> (step -> value), empty for a key the
    run never logged."""
    records = read_jsonl(run_dir / METRICS_FILE)
    return {key: {int(record["step"]): float(record[key]) for record in records if key in record} for key in keys}


def steps_per_second(run_dir: Path) -> float | None:
    """A finished run's whole-run speed, evaluations included (its results.json), or None."""
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        return results["total_steps"] / results["train_time_s"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def training_time_left(grid: Grid) -> tuple[float, list[Job]]:
    """Seconds of one core's training left in `grid` at the pace of its finished runs (their results.json, here or
    archived): each run still to train, from where it will go on (a running run from its last evaluation, a
    resumed one from its checkpoint, a new one from the start), at the median speed of the finished runs of its
    env and algorithm; and the runs with no finished run of their kind to go by, which the sum leaves out. Stale
    runs, which the runner skips, count in neither."""
    speeds: dict[tuple[str, str], list[float]] = {}
    unfinished = []
    for job in grid.jobs:
        status = job.status()
        if status == "done":
            if (speed := steps_per_second(job.source_dir())) is not None:
                speeds.setdefault((job.env_id, job.algo), []).append(speed)
        elif status != "stale":
            unfinished.append(job)
    seconds, unknown = 0.0, []
    for job in unfinished:
        pace = speeds.get((job.env_id, job.algo))
        if not pace:
            unknown.append(job)
            continue
        restart = checkpoint_step(job.run_dir) or 0  # a new run (or one killed before its first checkpoint) starts over
        if job.is_running():
            restart = max(restart, max(read_curve(job.run_dir), default=0))
        seconds += max(job.steps - restart, 0) / statistics.median(pace)
    return seconds, unknown


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last record of metrics.jsonl (losses and alpha at the end of training)."""
    records = read_jsonl(run_dir / METRICS_FILE)
    return records[-1] if records else {}
