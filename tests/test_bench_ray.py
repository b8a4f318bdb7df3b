"""`diffagent bench run --backend ray`: a grid on a two-CPU Ray cluster started by the test keeps the local runner's
guarantees (a killed grid resumes, a finished run is not redone, a run another runner trains is not trained twice)
and writes what the local runner writes; its errors say what to do."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffagent import Agent, ConfigError
from diffagent.bench import load_grid, read_curve, run_grid, run_grid_on_ray
from diffagent.cli import main
from diffagent.io import run_lock
from test_bench import write_grid  # the tiny grid of the local runner's tests (pytest puts this folder on sys.path)

pytestmark = pytest.mark.artifacts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def ray_cluster():
    """A Ray head on this machine with 2 CPUs (two workers at once), stopped after the test. Ray listens on the
    machine's address, not only on loopback, so the cluster has its own token. Yields (address, the environment
    a runner needs to join it: the token; Ray reads it once, at import, hence runners in their own processes)."""
    pytest.importorskip("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    # a short folder of its own: Ray's socket paths must fit in 107 bytes, and /tmp/ray is the user's
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                             "--port", str(port), "--ray-client-server-port", str(free_port()), "--temp-dir", temp_dir,
                             "--include-dashboard", "false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def listening() -> bool:
            assert head.poll() is None, f"ray start exited with {head.returncode}; see {temp_dir}/session_latest/logs"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 120, "the Ray head")
        yield f"127.0.0.1:{port}", env
    finally:
        head.terminate()  # `ray start --block` stops its processes when terminated
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own session: every process it started, and none else
            head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def bench_run_on_ray(grid_file: Path, address: str, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffagent.cli", "bench", "run", str(grid_file), "--backend", "ray",
                             "--address", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(runner: subprocess.Popen, seconds: float) -> str:
    output = runner.communicate(timeout=seconds)[0]
    assert runner.returncode == 0, output
    return output


def files_of(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())


def test_a_grid_on_ray_resumes_when_killed_never_trains_a_run_twice_and_writes_what_the_local_runner_writes(
        tmp_path, ray_cluster):
    address, env = ray_cluster
    (tmp_path / "ray").mkdir()
    grid_file = write_grid(tmp_path / "ray", 100, seeds=(0, 1, 2))
    grid_file.write_text(grid_file.read_text() + "\n[[experiment]]\nenvs = [\"Pendulum-v1\"]\nalgos = [\"sac\"]\n"
                         "seeds = [3]\nsteps = 1500\neval_every = 500\neval_episodes = 1\ncheckpoint_every = 100\n")
    grid = load_grid(grid_file)
    locked, killed = grid.jobs[2], grid.jobs[3]
    assert [job.seed for job in grid.jobs] == [0, 1, 2, 3]

    # another runner holds seed 2; the grid is killed once seed 3 (queued behind 0 and 1) has a checkpoint
    with run_lock(locked.run_dir):
        runner = bench_run_on_ray(grid_file, address, env)
        try:
            wait_for(lambda: killed.has_checkpoint() or runner.poll() is not None, 240, "seed 3's first checkpoint")
            assert runner.poll() is None, runner.communicate()[0]
        finally:
            runner.terminate()
            output = runner.communicate(timeout=120)[0]
    assert f"skip {locked.name}: another process is training it" in output, output
    assert not killed.is_running() and killed.status() == "resume"  # the runner stopped its training on the way out
    assert not locked.run_dir.joinpath("metrics.jsonl").exists()  # nor was the locked run touched

    # a rerun trains what is left, the killed run from its checkpoint; then nothing is left
    output = finish(bench_run_on_ray(grid_file, address, env), 300)
    assert output.rstrip().endswith("0 failed, 0 skipped"), output
    assert f"finished {locked.name}" in output and f"finished {killed.name}" in output
    assert all(job.status() == "done" for job in grid.jobs)
    assert Agent.resume(killed.run_dir).num_timesteps == 1500
    steps = [json.loads(line)["step"] for line in (killed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice across the kill
    output = finish(bench_run_on_ray(grid_file, address, env), 120)
    assert output.rstrip().endswith("4 already_done, 0 trained, 0 failed, 0 skipped"), output

    # the local runner trains seed 2 into the same files, with the same weights and returns
    (tmp_path / "local").mkdir()
    local = load_grid(write_grid(tmp_path / "local", 100, seeds=(2,)))
    assert run_grid(local, echo=lambda _: None, poll_seconds=0.2)["trained"] == [local.jobs[0].name]
    here, there = local.jobs[0].run_dir, locked.run_dir
    assert files_of(here) == files_of(there)
    assert (here / "config.json").read_text() == (there / "config.json").read_text()
    assert (here / "model.safetensors").read_bytes() == (there / "model.safetensors").read_bytes()
    assert read_curve(here) == read_curve(there)


def test_ray_errors_say_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    grid_file = write_grid(tmp_path, 100, seeds=(0,))
    grid = load_grid(grid_file)
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match=f"nothing answers at the Ray address {nobody}.*ray start --head"):
        run_grid_on_ray(grid, address=nobody, echo=lambda _: None)
    result = CliRunner().invoke(main, ["bench", "run", str(grid_file), "--backend", "ray", "--address", nobody])
    assert result.exit_code == 1 and f"Error: nothing answers at the Ray address {nobody}" in result.output
    result = CliRunner().invoke(main, ["bench", "run", str(grid_file), "--address", nobody])
    assert result.exit_code == 2 and "--address names a Ray cluster: add --backend ray" in result.output
    assert not grid.jobs[0].run_dir.exists()  # nothing ran

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'diffagent\[ray\]'"):
        run_grid_on_ray(grid, echo=lambda _: None)
