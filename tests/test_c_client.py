"""The C client of serve/c against a live server, and the in-process C example against onnxruntime.

Each program is compiled into a temporary directory with the commands serve/c/README.md gives (warnings
are errors). The server is `python -m serve.server`, the command `diffagent serve` runs, in a process of
its own, or a PolicyServer in this one where a test sets its limits or reads its counters; always on
loopback with an ephemeral port. Every C call is bounded by the client's timeout, every subprocess by
TIMEOUT.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_serve import ACT_DIM, HIGH, K, OBS_DIM, build_toy, random_inputs  # the toy policy of the ONNX contract

import serve
from serve.demo import start_server, stop_server
from serve.server import PolicyServer

pytestmark = pytest.mark.serve

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "serve" / "c"
ORT_DIR = Path(os.environ.get("DIFFAGENT_ORT_DIR", C_DIR / "build" / "onnxruntime"))
COMPILER = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
TIMEOUT = 30.0
TOKEN = "s3cret"

if COMPILER is None:
    pytest.skip("no C compiler found (gcc or cc; CC names another): apt-get install gcc", allow_module_level=True)


def compile_c(out: Path, *sources: Path, flags: tuple[str, ...] = ()) -> Path:
    result = subprocess.run([COMPILER, *CFLAGS, f"-I{C_DIR}", "-o", str(out), *map(str, sources), *flags, "-lm"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    build = tmp_path_factory.mktemp("c-build")
    client = C_DIR / "diffagent_client.c"
    return {"check": compile_c(build / "c_client_check", ROOT / "tests" / "c_client_check.c", client),
            "loop": compile_c(build / "example_control_loop", C_DIR / "example_control_loop.c", client)}


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory) -> Path:
    return build_toy(tmp_path_factory.mktemp("toy") / "policy.onnx")


@pytest.fixture(scope="module")
def served(toy_path):
    """(host, port) of `python -m serve.server` serving the toy policy."""
    process, host, port = start_server(str(toy_path), ["--seed", "0"])
    yield host, port
    stop_server(process)


@pytest.fixture()
def server(toy_path):
    with PolicyServer(serve.load_policy(toy_path, seed=0), port=0) as srv:
        yield srv


def run_check(programs, address, *commands: str, token: str | None = None, timeout_ms: int = 5000) -> list[str]:
    """Run c_client_check against host:port; one output line per command."""
    options = ["--timeout-ms", str(timeout_ms)] + (["--token", token] if token is not None else [])
    result = subprocess.run([str(programs["check"]), *options, address[0], str(address[1]), *commands],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def write(path: Path, array: np.ndarray) -> str:
    np.ascontiguousarray(array, dtype=np.float32).tofile(path)
    return str(path)


def act_command(tmp_path: Path, name: str, obs: np.ndarray, noise: np.ndarray | None = None,
                deterministic: bool = False, obs_dim: int = OBS_DIM) -> list[str]:
    """The words of an `act` command for c_client_check, its inputs written to files named after `name`."""
    obs = np.atleast_2d(obs)
    noise_file = write(tmp_path / f"{name}-noise.f32", noise) if noise is not None else "-"
    return ["act", str(obs.shape[0]), str(obs_dim), str(ACT_DIM), write(tmp_path / f"{name}-obs.f32", obs), noise_file,
            str(int(deterministic)), str(tmp_path / f"{name}-actions.f32")]


def actions_of(tmp_path: Path, name: str) -> np.ndarray:
    return np.fromfile(tmp_path / f"{name}-actions.f32", dtype=np.float32).reshape(-1, ACT_DIM)


def test_c_client_actions_equal_the_python_clients_and_onnxruntimes(programs, served, toy_path, tmp_path):
    obs, noise = random_inputs(5, seed=1)
    lines = run_check(programs, served, "metadata", "ping",
                      *act_command(tmp_path, "single", obs[0], noise[:1]),
                      *act_command(tmp_path, "batch", obs, noise),
                      *act_command(tmp_path, "deterministic", obs, deterministic=True),
                      *act_command(tmp_path, "drawn", obs))
    assert lines == [f"metadata obs_dim={OBS_DIM} act_dim={ACT_DIM} num_steps={K} max_batch=1024 noise_input=1",
                     "ping ok", "act ok", "act ok", "act ok", "act ok"]
    in_process = serve.load_policy(toy_path)
    with serve.Client(*served, timeout=TIMEOUT) as python:
        for name, rows, expected in [("single", 1, python.act(obs[:1], noise=noise[:1])),
                                     ("batch", 5, python.act(obs, noise=noise)),
                                     ("deterministic", 5, python.act(obs, deterministic=True))]:
            np.testing.assert_array_equal(actions_of(tmp_path, name), expected, err_msg=name)
            reference = in_process.act(obs[:rows], deterministic=True) if name == "deterministic" else \
                in_process.act(obs[:rows], noise=noise[:rows])
            np.testing.assert_allclose(actions_of(tmp_path, name), reference, atol=1e-6, err_msg=name)
    drawn = actions_of(tmp_path, "drawn")
    assert drawn.shape == (5, ACT_DIM) and np.all(np.abs(drawn) <= HIGH)


def test_c_client_reports_error_replies_and_keeps_the_connection(programs, server, tmp_path):
    obs, noise = random_inputs(1, seed=2)
    poisoned = obs.copy()
    poisoned[0, 1] = np.nan
    lines = run_check(programs, server.address,
                      *act_command(tmp_path, "wide", np.ones(OBS_DIM + 1), obs_dim=OBS_DIM + 1),
                      *act_command(tmp_path, "nan", poisoned),
                      *act_command(tmp_path, "both", obs, noise, deterministic=True),
                      "ping")
    assert lines[0].startswith("act error 6 BAD_SHAPE 0: server error BAD_SHAPE (6): ACT needs")
    assert "cols = obs_dim = 3" in lines[0] and lines[0].endswith("[the connection stays open]")
    assert lines[1].startswith("act error 7 NON_FINITE 0: server error NON_FINITE (7): observation holds NaN")
    assert lines[2].startswith("act error -5 E_ARGUMENT 0: dfsv_act takes noise or deterministic, not both")
    assert lines[3] == "ping ok"
    assert server.stats["connections"] == 1  # the errors cost no reconnect


def test_c_client_authenticates_with_the_token(programs, toy_path):
    with PolicyServer(serve.load_policy(toy_path), port=0, token=TOKEN) as srv:
        assert run_check(programs, srv.address, "ping", "metadata", token=TOKEN)[0] == "ping ok"
        for token in ("guess", None):
            (line,) = run_check(programs, srv.address, "ping", token=token)
            assert line.startswith("ping error 9 UNAUTHORIZED 1: server error UNAUTHORIZED (9): this server needs a "
                                   "token"), line
            assert line.endswith("[check the token; the connection was closed]")


def test_c_client_reconnects_by_itself_after_an_idle_timeout(programs, toy_path):
    with PolicyServer(serve.load_policy(toy_path), port=0, idle_timeout=0.3) as srv:
        assert run_check(programs, srv.address, "ping", "sleep", "900", "ping") == ["ping ok", "sleep ok", "ping ok"]
        assert srv.stats["connections"] == 2


def test_c_client_busy_timeout_and_refused_say_what_to_do(programs, toy_path):
    with PolicyServer(serve.load_policy(toy_path), port=0, max_connections=1) as srv, \
            serve.Client(*srv.address, timeout=TIMEOUT) as holder:
        holder.ping()  # a proven connection keeps its slot against a newcomer
        (line,) = run_check(programs, srv.address, "ping")
        assert line.startswith("ping error 10 BUSY 1: server error BUSY (10): the server holds"), line
        assert line.endswith("[back off, then try again: the next call reconnects]")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (through the backlog), never answers
        (line,) = run_check(programs, silent.getsockname(), "ping", timeout_ms=200)
        assert line.startswith("ping error -2 E_TIMEOUT 1: no reply from 127.0.0.1:") and "within 200 ms" in line
        port = silent.getsockname()[1]
    (line,) = run_check(programs, ("127.0.0.1", port), "ping", timeout_ms=200)
    assert line.startswith(f"ping error -1 E_CONNECT 1: cannot connect to a policy server at 127.0.0.1:{port}")
    assert "diffagent serve MODEL" in line


def test_example_control_loop_drives_the_server(programs, served):
    result = subprocess.run([str(programs["loop"]), *map(str, served), "20", "200"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert f"policy: obs_dim {OBS_DIM}, act_dim {ACT_DIM}, K = {K}; 20 ticks at 200 Hz" in result.stdout
    assert "tick 0: action" in result.stdout
    answered = re.search(r"^20 ticks: (\d+) answered, (\d+) missed", result.stdout, re.MULTILINE)
    assert answered and int(answered[1]) >= 1, result.stdout  # a tick a busy machine missed holds the last action


# --- the robot path with no server: policy.onnx through onnxruntime's C API ---------------------------
@pytest.fixture(scope="module")
def inprocess(tmp_path_factory) -> Path:
    if not (ORT_DIR / "include" / "onnxruntime_c_api.h").is_file() or not (ORT_DIR / "lib").is_dir():
        pytest.skip(f"onnxruntime's C API is not in {ORT_DIR}: run `bash serve/c/get_onnxruntime.sh` (scripts/setup.sh "
                    "does; it needs Debian's package archive for the headers)")
    return compile_c(tmp_path_factory.mktemp("c-ort") / "example_onnx_inprocess", C_DIR / "example_onnx_inprocess.c",
                     flags=(f"-I{ORT_DIR / 'include'}", f"-L{ORT_DIR / 'lib'}", "-lonnxruntime",
                            f"-Wl,-rpath,{ORT_DIR / 'lib'}"))


def run_inprocess(program: Path, model: Path, obs: np.ndarray, tmp_path: Path, *mode: str) -> np.ndarray:
    out = tmp_path / "actions.f32"
    result = subprocess.run([str(program), str(model), write(tmp_path / "obs.f32", obs), str(out), *mode],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert f"{len(obs)} observations -> {len(obs)} actions of {ACT_DIM} values (K = {K})" in result.stdout
    return np.fromfile(out, dtype=np.float32).reshape(-1, ACT_DIM)


def test_inprocess_c_example_equals_onnxruntime_in_python(inprocess, toy_path, tmp_path):
    policy = serve.load_policy(toy_path)
    obs, noise = random_inputs(7, seed=4)
    given = run_inprocess(inprocess, toy_path, obs, tmp_path, "--noise", write(tmp_path / "noise.f32", noise))
    np.testing.assert_allclose(given, policy.act(obs, noise=noise), atol=1e-6)
    deterministic = run_inprocess(inprocess, toy_path, obs, tmp_path, "--deterministic")
    np.testing.assert_allclose(deterministic, policy.act(obs, deterministic=True), atol=1e-6)
    drawn = run_inprocess(inprocess, toy_path, obs, tmp_path, "--seed", "3")
    np.testing.assert_array_equal(drawn, run_inprocess(inprocess, toy_path, obs, tmp_path, "--seed", "3"))
    assert np.all(np.abs(drawn) <= HIGH) and not np.allclose(drawn, deterministic)


def test_inprocess_c_example_runs_a_graph_that_draws_its_own_noise(inprocess, tmp_path):
    model = build_toy(tmp_path / "sampling.onnx", noise_input=False)
    obs = random_inputs(3, seed=5)[0]
    assert np.all(np.abs(run_inprocess(inprocess, model, obs, tmp_path)) <= HIGH)
    result = subprocess.run([str(inprocess), str(model), write(tmp_path / "obs.f32", obs), str(tmp_path / "a.f32"),
                             "--deterministic"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1 and "draws its own noise, so it takes neither --deterministic" in result.stderr
