"""The resumable runner: every unfinished job of a grid, one process and one thread each, each holding its
run's lock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from diffagent.bench.grid import Grid, Job, archive_run
from diffagent.errors import DiffAgentError
from diffagent.io import CHECKPOINT_DIR, METRICS_FILE, run_lock

LOG_FILE = "train.log"


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    log: Any
    started: float

    def close(self) -> None:
        self.log.close()


def run_grid(grid: Grid, parallel: int | None = None, echo: Callable[[str], None] = print,
             poll_seconds: float = 1.0) -> dict[str, list[str]]:
    """Run every unfinished job of `grid`, `parallel` at a time (default: one per core), one thread each.

    A job with a checkpoint resumes from it; a finished job is skipped; a job whose directory is
    locked by a training still running (another runner's, or one started by hand) is skipped. The
    runner checks and tidies a job under its lock, and the training it starts takes the lock itself,
    so a run is never trained by two processes at once: of two runners that start one job in the
    same instant, the second's training is refused and reported failed. Each job's output goes to
    RUN_DIR/train.log. A run that finishes is archived (the grid's `archive`, see archive_run). Returns the job
    names per outcome: already_done, trained, failed, skipped.
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
            where = (f"{job.archive_dir} holds the archived files of a finished {job.trained_steps():,}-step run, "
                     "whose checkpoints stayed on the machine that trained it" if job.is_archived_only() else
                     f"{job.run_dir} holds a finished {job.trained_steps():,}-step run and no checkpoint")
            echo(f"skip {job.name}: {where}; nothing to extend it from, so move that directory away to train it "
                 "again from the start")
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
                try:
                    with run_lock(job.run_dir, wait_seconds=0.0):
                        status = job.status()
                        if status == "new":  # killed before its first complete checkpoint: start over
                            (job.run_dir / METRICS_FILE).unlink(missing_ok=True)
                            shutil.rmtree(job.run_dir / CHECKPOINT_DIR, ignore_errors=True)
                except DiffAgentError:
                    outcome["skipped"].append(job.name)
                    echo(f"skip {job.name}: another process is training it")
                    continue
                if status == "done":  # finished meanwhile by another runner on the same runs
                    outcome["already_done"].append(job.name)
                    continue
                verb = "resume" if status == "resume" else "start"
                log = open(job.run_dir / LOG_FILE, "a")
                try:
                    process = subprocess.Popen(job.process_command(), stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
                except BaseException:
                    log.close()
                    raise
                running.append(_Running(job, process, log, time.perf_counter()))
                echo(f"{verb} {job.name} -> {job.run_dir}")
            time.sleep(poll_seconds)
            for entry in [r for r in running if r.process.poll() is not None]:
                running.remove(entry)
                entry.close()
                minutes = (time.perf_counter() - entry.started) / 60
                if entry.process.returncode == 0:
                    outcome["trained"].append(entry.job.name)
                    archived = f"; archived in {entry.job.archive_dir}" if archive_run(entry.job) else ""
                    echo(f"finished {entry.job.name} in {minutes:.1f} min{archived}")
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
