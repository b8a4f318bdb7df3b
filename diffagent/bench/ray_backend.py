"""Grids on a Ray cluster: each unfinished job of a grid is a Ray task with one CPU, on whichever machine
Ray puts it, run as the local runner runs its jobs (runner.py: claim it under its run lock, train it in a child
process that holds the lock, stop it when stopped), so the guarantees are the same: a killed grid resumes, a
finished run is not redone, and two runners never train one run directory.

Every machine needs diffagent installed and must see the run directories (the grid's `out`) at the same path,
on a file system they share; the runner reports each job and archives the finished runs where it runs. Ray is
imported here only, when a grid runs: `pip install 'diffagent[ray]'`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

from diffagent.bench.grid import Grid, Job
from diffagent.bench.runner import (LOCKED, STOP_SECONDS, claim, raise_interrupt, report, start_training,
                                    stop_trainings, unfinished_jobs)
from diffagent.errors import ConfigError

CONNECT_SECONDS = 10.0
"""How long the runner tries to reach a cluster's address; Ray's own connection retries for minutes."""
CANCEL_POLL_SECONDS = 0.5
"""How often a task looks at its training, and so how soon a cancelled one stops it."""
TOKEN_AUTH_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


def run_grid_on_ray(grid: Grid, address: str | None = None, parallel: int | None = None,
                    echo: Callable[[str], None] = print, poll_seconds: float = 1.0) -> dict[str, list[str]]:
    """Run every unfinished job of `grid` as a Ray task with one CPU, on the cluster at `address` (what `ray
    start --head` printed, HOST:PORT or ray://HOST:PORT; default: RAY_ADDRESS, else a Ray instance started here
    with `parallel` CPUs). `parallel` caps the jobs in flight at once (default: as many as the cluster's CPUs
    take). Stopped (Ctrl-C, SIGTERM), it cancels its tasks, which stop their trainings. Returns the job names per
    outcome, as run_grid does: already_done, trained, failed, skipped."""
    ray = _import_ray()
    queue, outcome = unfinished_jobs(grid, echo)
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable, as ray.init reads it
    _connect(ray, address, parallel)
    try:
        train = ray.remote(num_cpus=1)(train_job)
        echo(f"{grid.name}: {len(grid.jobs)} runs, {len(outcome['already_done'])} done, {len(queue)} to run on "
             f"Ray at {address or 'a local instance'} ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)")
        cwd, limit = os.getcwd(), parallel or len(queue)
        in_flight: dict[Any, Job] = {}
        # `kill RUNNER` should stop the trainings too, as Ctrl-C does: both unwind through `finally`
        previous_handler = signal.signal(signal.SIGTERM, raise_interrupt)
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    job = queue.pop(0)
                    in_flight[train.remote(_with_absolute_paths(job), cwd)] = job
                    echo(f"queue {job.name} -> {job.run_dir}")
                finished, _ = ray.wait(list(in_flight), num_returns=1, timeout=poll_seconds)
                for ref in finished:
                    job = in_flight.pop(ref)
                    try:
                        status, returncode, minutes = ray.get(ref)
                    except ray.exceptions.RayError as err:  # it raised, or its worker or machine died
                        outcome["failed"].append(job.name)
                        echo(f"FAILED {job.name} on Ray: {_last_line(err)}; a rerun picks it up where it stopped")
                    else:
                        report(job, status, returncode, minutes, outcome, echo)
        finally:
            # interrupted: each running task stops its training (train_job's `finally`) before the runner leaves
            for ref in in_flight:
                ray.cancel(ref)
            if in_flight:
                ray.wait(list(in_flight), num_returns=len(in_flight), timeout=STOP_SECONDS + 30)
            signal.signal(signal.SIGTERM, previous_handler)
    finally:
        ray.shutdown()
    return outcome


def train_job(job: Job, cwd: str) -> tuple[str, int | None, float]:
    """One job, on a Ray worker: claim it and train it to its budget in a child process started in `cwd` (the
    runner's directory), as the local runner does. Returns its status when claimed, the training's exit code (None
    when it did not start: LOCKED or done) and its minutes. A cancelled task (the runner stopped) gets a
    KeyboardInterrupt and stops its training; the checkpoints let a rerun resume."""
    status = claim(job)
    if status in (LOCKED, "done"):
        return status, None, 0.0
    training = start_training(job, status, cwd)
    try:
        while training.process.poll() is None:  # not wait(): Ray's cancel raises its KeyboardInterrupt between
            time.sleep(CANCEL_POLL_SECONDS)       # Python steps, so it would come only once the training had ended
    finally:
        stop_trainings([training])  # only closes the log of a training that ended by itself
    return status, training.process.returncode, training.minutes()


def _with_absolute_paths(job: Job) -> Job:
    """The job with absolute paths: a worker runs in a directory of its own, maybe on another machine."""
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else path.absolute()

    return dataclasses.replace(job, run_dir=job.run_dir.absolute(), hyperparams=absolute(job.hyperparams),
                               archive_dir=absolute(job.archive_dir))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("running a grid on Ray needs Ray: pip install 'diffagent[ray]'") from None
    return ray


def _connect(ray: Any, address: str | None, parallel: int | None) -> None:
    """Connect to the cluster at `address`, or start a local instance with `parallel` CPUs (default: all); a
    ConfigError says which address failed and what to do."""
    if address is None:  # "local": a new instance, not one Ray finds running (in /tmp/ray) and would join instead
        ray.init(address="local", num_cpus=parallel or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        return
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError or its own for a cluster it cannot join
        refused = getattr(ray.exceptions, "AuthenticationError", ())  # absent before Ray had token authentication
        if any(isinstance(cause, refused) or "InvalidAuthToken" in str(cause) for cause in _causes(err)):
            raise ConfigError(f"the Ray cluster at {address} wants its authentication token: set RAY_AUTH_MODE=token "
                              "and give the token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token, as on the "
                              f"cluster's head), see {TOKEN_AUTH_DOCS}") from None
        raise ConfigError(f"cannot join the Ray cluster at {address} ({_last_line(err)}); check that it is the "
                          f"address `ray start --head` printed and that the cluster runs Ray {ray.__version__}, as "
                          "here") from None


def _last_line(err: BaseException) -> str:
    """What an exception says in one line: the last of a Ray task's traceback names the error that ended it."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _causes(err: BaseException | None) -> list[BaseException]:
    """An exception and the chain of exceptions that caused it (Ray wraps the one that says what went wrong)."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens at HOST:PORT (ray.init would retry for minutes)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray finds the cluster itself, or says that it found none
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        raise ConfigError(f"nothing answers at the Ray address {address} ({err.strerror or err}); start the "
                          f"cluster's head there with `ray start --head --port {port}`, or give the address it "
                          "printed, or leave the address out to start Ray on this machine") from None
