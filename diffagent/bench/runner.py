"""The resumable runner: every unfinished job of a grid, one process and one thread each, each holding its
run's lock. The steps of one job (claim it, start its training, stop it, report how it ended) are the
functions below, which the Ray backend (ray_backend.py) runs on its workers as this runner runs them here."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from diffagent.bench.grid import Grid, Job, archive_run
from diffagent.errors import DiffAgentError
from diffagent.io import CHECKPOINT_DIR, METRICS_FILE, run_lock

LOG_FILE = "train.log"
LOCKED = "locked"
"""claim's status of a job that another process is training."""
STOP_SECONDS = 60
"""How long a stopped training may take to exit (it saves nothing more) before it is killed."""


@dataclass
class Training:
    """A job training in its child process."""

    job: Job
    status: str
    """'new' or 'resume', when it was claimed."""
    process: subprocess.Popen
    log: Any
    started: float

    def minutes(self) -> float:
        return (time.perf_counter() - self.started) / 60

    def close(self) -> None:
        self.log.close()


def run_grid(grid: Grid, parallel: int | None = None, echo: Callable[[str], None] = print,
             poll_seconds: float = 1.0) -> dict[str, list[str]]:
    """Run every unfinished job of `grid`, `parallel` at a time (default: one per core), one thread each.

    A job with a checkpoint resumes from it; a finished job is skipped; a job whose directory is
    locked by a training still running (another runner's, or one started by hand) is skipped. The
    runner checks and tidies a job under its lock, and the training it starts takes the lock itself,
    so a run is never trained by two processes at once: of two runners that start one job in the
    same instant, the second's training is refused and reported skipped. Each job's output goes to
    RUN_DIR/train.log. A run that finishes is archived (the grid's `archive`, see archive_run). Returns the job
    names per outcome: already_done, trained, failed, skipped.
    """
    parallel = max(1, parallel or os.cpu_count() or 1)
    queue, outcome = unfinished_jobs(grid, echo)
    echo(f"{grid.name}: {len(grid.jobs)} runs, {len(outcome['already_done'])} done, {len(queue)} to run, "
         f"{parallel} at a time")
    running: list[Training] = []
    # `kill RUNNER` should stop its trainings too, as Ctrl-C does: both unwind through `finally`
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                job = queue.pop(0)
                status = claim(job)
                if status in (LOCKED, "done"):
                    report(job, status, None, 0.0, outcome, echo)
                    continue
                running.append(start_training(job, status))
                echo(f"{'resume' if status == 'resume' else 'start'} {job.name} -> {job.run_dir}")
            time.sleep(poll_seconds)
            for training in [t for t in running if t.process.poll() is not None]:
                running.remove(training)
                training.close()
                report(training.job, training.status, training.process.returncode, training.minutes(), outcome, echo)
    finally:
        stop_trainings(running)  # interrupted: their checkpoints let a rerun resume
        signal.signal(signal.SIGTERM, previous_handler)
    return outcome


def unfinished_jobs(grid: Grid, echo: Callable[[str], None]) -> tuple[list[Job], dict[str, list[str]]]:
    """The jobs of `grid` to train, in its order, and the outcome so far, the job names per outcome that a runner
    returns (already_done, trained, failed, skipped): the finished jobs are already done, and a stale one (a
    finished run to extend, without the checkpoint to extend it from) is skipped, saying why."""
    queue: list[Job] = []
    outcome: dict[str, list[str]] = {"already_done": [], "trained": [], "failed": [], "skipped": []}
    for job in grid.jobs:
        status = job.status()
        if status == "done":
            outcome["already_done"].append(job.name)
        elif status == "stale":
            outcome["skipped"].append(job.name)
            where = (f"{job.archive_dir} holds the archived files of a finished {job.trained_steps():,}-step run, "
                     "whose checkpoints stayed on the machine that trained it" if job.is_archived_only() else
                     f"{job.run_dir} holds a finished {job.trained_steps():,}-step run and no checkpoint")
            echo(f"skip {job.name}: {where}; nothing to extend it from, so move that directory away to train it "
                 "again from the start")
        else:
            queue.append(job)
    return queue, outcome


def claim(job: Job) -> str:
    """Check and tidy `job` under its run lock, just before it is trained: its status then, 'done' (finished
    meanwhile by another runner), 'resume', 'new' (a run killed before its first complete checkpoint is
    cleared to start over), or LOCKED when another process is training it."""
    try:
        with run_lock(job.run_dir, wait_seconds=0.0):
            status = job.status()
            if status == "new":
                (job.run_dir / METRICS_FILE).unlink(missing_ok=True)
                shutil.rmtree(job.run_dir / CHECKPOINT_DIR, ignore_errors=True)
    except DiffAgentError:
        return LOCKED
    return status


def start_training(job: Job, status: str, cwd: str | Path | None = None) -> Training:
    """Start training a claimed job in a child process (which takes the run's lock itself), its output appended
    to RUN_DIR/train.log; `cwd` is the directory the grid was started from, where the job's relative paths and
    the user's modules are (default: this process's)."""
    log = open(job.run_dir / LOG_FILE, "a")
    try:
        process = subprocess.Popen(job.process_command(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=cwd)
    except BaseException:
        log.close()
        raise
    return Training(job, status, process, log, time.perf_counter())


def stop_trainings(trainings: list[Training]) -> None:
    """Stop trainings (all at once, then wait for each) and close their logs; one that has exited is only closed."""
    for training in trainings:
        training.process.terminate()
    for training in trainings:
        try:
            training.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            training.process.kill()
            training.process.wait()
        training.close()


def report(job: Job, status: str, returncode: int | None, minutes: float, outcome: dict[str, list[str]],
           echo: Callable[[str], None]) -> None:
    """Record how a claimed job ended in `outcome`, and say it: skipped (LOCKED, or its training refused because
    another runner claimed the job in the same instant and holds it now), already done, trained (then archived),
    or failed (exit code `returncode`)."""
    if status == LOCKED or (returncode not in (None, 0) and job.is_running()):
        outcome["skipped"].append(job.name)
        echo(f"skip {job.name}: another process is training it")
    elif status == "done":  # finished meanwhile by another runner on the same runs
        outcome["already_done"].append(job.name)
    elif returncode == 0:
        outcome["trained"].append(job.name)
        archived = f"; archived in {job.archive_dir}" if archive_run(job) else ""
        echo(f"finished {job.name} in {minutes:.1f} min{archived}")
    else:
        outcome["failed"].append(job.name)
        echo(f"FAILED {job.name} (exit {returncode}); see {job.run_dir / LOG_FILE}")


def raise_interrupt(signum: int, frame: Any) -> None:
    """A SIGTERM handler: unwind as Ctrl-C does, through the `finally` that stops the trainings."""
    raise KeyboardInterrupt(f"signal {signum}")
