"""serve: the torch-free runtime, the binary protocol under good and hostile input, the client, the CLI, the demo.

Every network test uses loopback, an ephemeral port, bounded loops and socket timeouts.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

import serve
from serve.protocol import (DEFAULT_MAX_PAYLOAD, HEADER_SIZE, DType, ErrorCode, Flags, MsgType, pack_header,
                            parse_error, parse_header)
from serve.runtime import InputError, ModelLoadError
from serve.server import PolicyServer, ServeConfigError, check_bind

pytestmark = pytest.mark.serve

OBS_DIM, ACT_DIM, K = 3, 2, 2
HIGH = np.array([2.0, 0.5], np.float32)
W = np.arange(OBS_DIM * ACT_DIM, dtype=np.float32).reshape(OBS_DIM, ACT_DIM) / 10 - 0.2
TIMEOUT = 5.0


# --- a tiny graph that follows the ONNX contract, and its numpy reference ------------------------------
def toy_reference(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return HIGH * np.tanh(obs @ W + noise.sum(axis=-2))


def build_toy(path: Path, *, noise_input: bool = True, **meta_overrides: str) -> Path:
    """action = high * tanh(obs @ W + sum over the K+1 noise rows), with diffagent's metadata_props."""
    nodes = []
    if not noise_input:  # the sample-noise form: standard normal noise drawn inside the graph
        nodes += [helper.make_node("Shape", ["obs"], ["batch"], start=0, end=1),
                  helper.make_node("Concat", ["batch", "tail"], ["shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
                  helper.make_node("RandomNormalLike", ["zeros"], ["noise"])]
    nodes += [helper.make_node("MatMul", ["obs", "W"], ["z"]),
              helper.make_node("ReduceSum", ["noise", "axis"], ["n"], keepdims=0),
              helper.make_node("Add", ["z", "n"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
              helper.make_node("Mul", ["t", "high"], ["action"])]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", OBS_DIM])]
    if noise_input:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", K + 1, ACT_DIM]))
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(HIGH, "high"),
             numpy_helper.from_array(np.array([1], np.int64), "axis"),
             numpy_helper.from_array(np.array([K + 1, ACT_DIM], np.int64), "tail")]
    graph = helper.make_graph(nodes, "toy", inputs,
                              [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", ACT_DIM])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def box(n: int, low: float | None, high: list[float] | None) -> str:
        return json.dumps({"shape": [n], "low": [low] * n, "high": high or [None] * n, "dtype": "float32"})

    props = {"diffagent_format_version": "1", "algo": "diffsac", "policy": "diffusion", "env_id": "Toy-v0",
             "num_steps": str(K), "obs_dim": str(OBS_DIM), "act_dim": str(ACT_DIM),
             "observation_space": box(OBS_DIM, None, None), "action_space": box(ACT_DIM, -2.0, HIGH.tolist()),
             "library_version": "0.1.0", "noise_input": "true" if noise_input else "false", **meta_overrides}
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory) -> Path:
    return build_toy(tmp_path_factory.mktemp("toy") / "policy.onnx")


@pytest.fixture(scope="module")
def toy(toy_path) -> serve.OnnxPolicy:
    return serve.load_policy(toy_path, seed=0)


@pytest.fixture()
def server(toy_path):
    """A fresh server per test (so one test's hostile input cannot hide another's)."""
    srv = PolicyServer(serve.load_policy(toy_path, seed=0), port=0, frame_timeout=0.5).start()
    yield srv
    srv.stop()


def random_inputs(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, OBS_DIM)).astype(np.float32),
            rng.standard_normal((batch, K + 1, ACT_DIM)).astype(np.float32))


# --- the no-torch promise ----------------------------------------------------------------------------
def test_importing_serve_never_imports_torch():
    code = ("import sys, serve, serve.client, serve.protocol, serve.runtime, serve.demo\n"
            "assert 'click' not in sys.modules, 'import serve pulled in click'\n"
            "import serve.server; serve.server.main; serve.PolicyServer\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffagent'))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr


# --- runtime -----------------------------------------------------------------------------------------
def test_runtime_actions_equal_the_reference_with_the_same_noise(toy):
    obs, noise = random_inputs(5, seed=1)
    np.testing.assert_allclose(toy.act(obs, noise=noise), toy_reference(obs, noise), atol=1e-6)
    single = toy.act(obs[0], noise=noise[0])
    assert single.shape == (ACT_DIM,)
    np.testing.assert_allclose(single, toy_reference(obs[:1], noise[:1])[0], atol=1e-6)
    np.testing.assert_allclose(toy.act(obs, deterministic=True), toy_reference(obs, np.zeros_like(noise)), atol=1e-6)
    assert toy.act(obs.astype(np.float64).tolist(), noise=noise).dtype == np.float32  # lists and float64 convert


def test_drawn_noise_is_seeded_and_random(toy_path):
    first, second = serve.load_policy(toy_path, seed=3), serve.load_policy(toy_path, seed=3)
    obs = np.ones((4, OBS_DIM), np.float32)
    a, b = first.act(obs), second.act(obs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, first.act(obs))


@pytest.mark.parametrize("obs, noise, deterministic, code", [
    (np.ones(OBS_DIM + 1), None, False, ErrorCode.BAD_SHAPE),
    (np.ones((1, 1, OBS_DIM)), None, False, ErrorCode.BAD_SHAPE),
    (np.ones((0, OBS_DIM)), None, False, ErrorCode.BAD_SHAPE),
    (np.ones(OBS_DIM, bool), None, False, ErrorCode.BAD_DTYPE),
    (np.array(["a"] * OBS_DIM), None, False, ErrorCode.BAD_DTYPE),
    (np.array([0.0, np.nan, 1.0]), None, False, ErrorCode.NON_FINITE),
    (np.array([0.0, 1e39, 1.0]), None, False, ErrorCode.NON_FINITE),  # finite float64, inf as float32
    (np.ones(OBS_DIM), np.ones((K, ACT_DIM)), False, ErrorCode.BAD_SHAPE),
    (np.ones(OBS_DIM), np.full((K + 1, ACT_DIM), np.inf), False, ErrorCode.NON_FINITE),
    (np.ones(OBS_DIM), np.zeros((K + 1, ACT_DIM)), True, ErrorCode.BAD_FLAGS),
])
def test_runtime_refuses_bad_input_with_a_clear_error(toy, obs, noise, deterministic, code):
    with pytest.raises(InputError) as info:
        toy.act(obs, noise=noise, deterministic=deterministic)
    assert info.value.code == code
    assert np.isfinite(toy.act(np.ones(OBS_DIM, np.int64))).all()  # and integers are fine


def test_batch_of_one_runs_on_a_shared_binding_yet_returns_its_own_actions_in_any_thread(toy):
    obs, noise = random_inputs(64, seed=2)
    want = toy_reference(obs, noise)
    first = toy.run(obs[:1], noise[:1])
    toy.run(obs[1:2], noise[1:2])  # the same bound output buffer computes another action...
    np.testing.assert_allclose(first, want[:1], atol=1e-6)  # ...which does not overwrite the one returned before
    got, failures = np.full_like(want, np.nan), []

    def run(rows: range) -> None:
        try:
            for row in rows:
                got[row] = toy.run(obs[row:row + 1], noise[row:row + 1])[0]
        except Exception as err:  # reported below: an exception in a thread would be lost
            failures.append(repr(err))

    threads = [threading.Thread(target=run, args=(range(start, 64, 4),)) for start in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    np.testing.assert_allclose(got, want, atol=1e-6)  # every thread got its own observation's action


def test_batch_of_one_without_noise_is_refused_rather_than_run_on_stale_noise(toy):
    obs, noise = random_inputs(2, seed=3)
    toy.run(obs[:1], noise[:1])  # leaves this call's noise in the bound input
    with pytest.raises(ValueError, match="takes noise"):
        toy.run(obs[1:2], None)


def test_sample_noise_graph(tmp_path):
    policy = serve.load_policy(build_toy(tmp_path / "sample.onnx", noise_input=False), seed=5)
    assert policy.act(np.ones(OBS_DIM)).shape == (ACT_DIM,)
    assert policy.act(np.ones((7, OBS_DIM))).shape == (7, ACT_DIM)
    for kwargs in ({"deterministic": True}, {"noise": np.zeros((K + 1, ACT_DIM))}):
        with pytest.raises(InputError, match="draws its own noise"):
            policy.act(np.ones(OBS_DIM), **kwargs)


def test_load_errors_say_what_to_do(tmp_path, toy_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="not found"):
        serve.load_policy(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="export it first"):
        serve.load_policy(tmp_path)
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not an onnx model" * 10)
    with pytest.raises(ModelLoadError, match="re-export"):
        serve.load_policy(tmp_path / "garbage.onnx")
    with pytest.raises(ModelLoadError, match="newer"):
        serve.load_policy(build_toy(tmp_path / "future.onnx", diffagent_format_version="99"))
    bare = onnx.load(toy_path)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    with pytest.raises(ModelLoadError, match="not a diffagent policy"):
        serve.load_policy(tmp_path / "bare.onnx")
    with pytest.raises(ModelLoadError, match="not available"):
        serve.load_policy(toy_path, provider="NoSuchExecutionProvider")


@pytest.mark.parametrize("meta", [{"num_steps": "99"}, {"act_dim": "3"}, {"obs_dim": "7"}])
def test_metadata_that_disagrees_with_the_graph_is_a_load_error(tmp_path, meta):
    with pytest.raises(ModelLoadError, match="inconsistent, re-export it"):
        serve.load_policy(build_toy(tmp_path / "policy.onnx", **meta))


def test_an_artifacts_onnx_file_may_not_link_outside_it(tmp_path, toy_path):
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "policy.onnx").symlink_to(toy_path)
    with pytest.raises(ModelLoadError, match="links outside"):
        serve.load_policy(tmp_path / "artifact")


def test_hub_ids_download_only_inert_files(tmp_path, toy_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        (tmp_path / "policy.onnx").write_bytes(toy_path.read_bytes())
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert serve.load_policy("org/diffsac-Toy-v0").metadata.env_id == "Toy-v0"
    assert calls == [("org/diffsac-Toy-v0", ["*.json", "*.onnx", "*.md"])]


# --- protocol doc and server -------------------------------------------------------------------------
def test_protocol_doc_example_matches_the_implementation():
    doc = (Path(serve.__file__).parent / "PROTOCOL.md").read_text()
    block = doc.split("deterministic:\n\n", 1)[1].split("\n\n", 1)[0]
    dumped = bytes.fromhex("".join(line.strip().split("   ")[0][6:] for line in block.splitlines()))
    obs = np.array([0.5, -0.25, 1.0], "<f4")
    assert dumped == pack_header(MsgType.ACT, 7, 12, dtype=DType.FLOAT32, flags=Flags.DETERMINISTIC, rows=1,
                                 cols=3) + obs.tobytes()
    assert HEADER_SIZE == 24
    for code in ErrorCode:  # the error table names every code a client can receive
        assert f"| {code.value:<4} | {code.name:<19} |" in doc, code.name


def raw(server: PolicyServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock: socket.socket):
    """(header, payload), or None when the server closed the connection."""
    head = recv_exact(sock, HEADER_SIZE)
    if head is None:
        return None
    header = parse_header(head)
    payload = recv_exact(sock, header.payload_len)
    return None if payload is None else (header, payload)


def act_frame(obs: np.ndarray, *, request_id: int = 1, noise: np.ndarray | None = None, flags: int = 0,
              dtype: int = DType.FLOAT32, rows: int | None = None, cols: int | None = None) -> bytes:
    payload = np.ascontiguousarray(obs, "<f4").tobytes()
    if noise is not None:
        payload += np.ascontiguousarray(noise, "<f4").tobytes()
        flags |= Flags.NOISE
    rows = obs.shape[0] if rows is None else rows
    cols = obs.shape[1] if cols is None else cols
    return pack_header(MsgType.ACT, request_id, len(payload), dtype=dtype, flags=flags, rows=rows, cols=cols) + payload


def assert_serves(server: PolicyServer, sock: socket.socket | None = None) -> None:
    """A good request, on `sock` or on a fresh connection, gets the right actions."""
    obs, noise = random_inputs(2, seed=99)
    own = sock is None
    sock = raw(server) if own else sock
    try:
        sock.sendall(act_frame(obs, noise=noise, request_id=42))
        header, payload = read_frame(sock)
    finally:
        if own:
            sock.close()
    assert (header.type, header.request_id, header.rows, header.cols) == (MsgType.ACT_REPLY, 42, 2, ACT_DIM)
    np.testing.assert_allclose(np.frombuffer(payload, "<f4").reshape(2, ACT_DIM), toy_reference(obs, noise), atol=1e-6)


GOOD_OBS = np.ones((1, OBS_DIM), np.float32)
BAD_FRAMES = {  # name: (frame, error code, whether the server then closes the connection)
    "wrong obs_dim": (act_frame(np.ones((1, OBS_DIM + 1))), ErrorCode.BAD_SHAPE, False),
    "zero rows": (act_frame(np.ones((0, OBS_DIM))), ErrorCode.BAD_SHAPE, False),
    "rows disagree with payload": (act_frame(GOOD_OBS, rows=2), ErrorCode.BAD_SHAPE, False),
    "wrong noise length": (act_frame(GOOD_OBS, noise=np.ones((1, K, ACT_DIM))), ErrorCode.BAD_SHAPE, False),
    "float64 dtype code": (act_frame(GOOD_OBS, dtype=2), ErrorCode.BAD_DTYPE, False),
    "NaN observation": (act_frame(np.array([[0.0, np.nan, 1.0]])), ErrorCode.NON_FINITE, False),
    "inf noise": (act_frame(GOOD_OBS, noise=np.full((1, K + 1, ACT_DIM), -np.inf)), ErrorCode.NON_FINITE, False),
    "both flags": (act_frame(GOOD_OBS, noise=np.zeros((1, K + 1, ACT_DIM)), flags=Flags.DETERMINISTIC),
                   ErrorCode.BAD_FLAGS, False),
    "unknown flag": (act_frame(GOOD_OBS, flags=0x40), ErrorCode.BAD_FLAGS, False),
    "unknown type": (pack_header(0x09, 1, 0), ErrorCode.UNKNOWN_TYPE, False),
    "protocol version 2": (struct.pack("<4sBBBBIIII", b"DFSV", 2, 1, 1, 0, 1, 1, 3, 12) + bytes(12),
                           ErrorCode.UNSUPPORTED_VERSION, True),
    "garbage bytes": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrorCode.BAD_MAGIC, True),
    "oversized frame": (pack_header(MsgType.ACT, 1, DEFAULT_MAX_PAYLOAD + 1, dtype=DType.FLOAT32, rows=1, cols=3),
                        ErrorCode.FRAME_TOO_LARGE, True),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_malformed_request_gets_an_error_and_the_server_keeps_serving(server, name):
    frame, code, closes = BAD_FRAMES[name]
    with raw(server) as sock:
        sock.sendall(frame)
        header, payload = read_frame(sock)
        assert header.type == MsgType.ERROR
        got, message = parse_error(payload)
        assert got == code, message
        assert message
        if closes:
            assert read_frame(sock) is None
        else:
            assert_serves(server, sock)  # the same connection goes on
    assert_serves(server)


@pytest.mark.parametrize("obs, noise", [
    (np.array([0.0, np.nan, 1.0]), None),
    (np.array([[np.inf, 0.0, 1.0], [0.0, 0.0, 0.0]]), None),
    pytest.param(np.array([0.0, 1e39, 1.0]), None,  # finite float64, inf once sent as float32
                 marks=pytest.mark.filterwarnings("ignore:overflow encountered in cast")),
    (np.ones(OBS_DIM), np.full((K + 1, ACT_DIM), -np.inf)),
    (np.ones((2, OBS_DIM)), np.where(np.arange(2 * (K + 1) * ACT_DIM) == 7, np.nan, 0.0).reshape(2, K + 1, ACT_DIM)),
], ids=["NaN observation", "inf in a batch", "float64 beyond float32", "-inf noise", "one NaN in a noise batch"])
def test_non_finite_input_is_refused_alike_in_process_and_over_the_wire(server, toy, obs, noise):
    with pytest.raises(InputError) as local:
        toy.act(obs, noise=noise)
    with serve.Client(*server.address, timeout=TIMEOUT) as client:
        with pytest.raises(serve.RemoteError) as remote:
            client.act(obs, noise=noise)
        connection = client._sock
        assert client.act(np.ones(OBS_DIM)).shape == (ACT_DIM,)
        assert client._sock is connection  # the frame was skipped, the connection goes on
    assert local.value.code == remote.value.code == ErrorCode.NON_FINITE
    assert remote.value.message == str(local.value)  # one message, naming the culprit, in both places
    assert remote.value.message.startswith("observation" if noise is None else "noise")


def test_frames_split_anywhere_across_reads_are_answered_in_order(server):
    obs, noise = random_inputs(4, seed=8)
    stream = b"".join(act_frame(obs[i:i + 1], noise=noise[i:i + 1], request_id=20 + i) for i in range(4))
    with raw(server) as sock:
        for cut in range(0, len(stream), 7):  # frames of 60 bytes in pieces of 7: most reads end mid-frame
            sock.sendall(stream[cut:cut + 7])
            time.sleep(0.002)  # so that the server reads the pieces one by one
        replies = [read_frame(sock) for _ in range(4)]
    assert [header.request_id for header, _ in replies] == [20, 21, 22, 23]
    actions = np.stack([np.frombuffer(payload, "<f4") for _, payload in replies])
    np.testing.assert_allclose(actions, toy_reference(obs, noise), atol=1e-6)


def test_truncated_frames_and_hang_ups_cost_only_that_connection(server):
    frame = act_frame(GOOD_OBS)
    for cut in (5, HEADER_SIZE, len(frame) - 3):  # mid-header, header only, mid-payload
        with raw(server) as sock:
            sock.sendall(frame[:cut])
        assert_serves(server)
    with raw(server) as sock:  # a client that stalls mid-frame is dropped after frame_timeout (0.5 s here)
        sock.sendall(frame[:-3])
        assert read_frame(sock) is None
    assert_serves(server)
    assert len(server._connections) <= 1


def test_pipelined_requests_are_batched_and_answered_in_order(server):
    obs, noise = random_inputs(3, seed=7)
    frames = [act_frame(obs[i:i + 1], noise=noise[i:i + 1], request_id=10 + i) for i in range(3)]
    frames.insert(1, pack_header(MsgType.PING, 99, 0))
    with raw(server) as sock:
        sock.sendall(b"".join(frames))  # one write: the server reads all four in one round
        replies = [read_frame(sock) for _ in range(4)]
    assert [h.request_id for h, _ in replies] == [10, 99, 11, 12]
    assert replies[1][0].type == MsgType.PONG
    actions = np.stack([np.frombuffer(p, "<f4") for h, p in replies if h.type == MsgType.ACT_REPLY])
    np.testing.assert_allclose(actions, toy_reference(obs, noise), atol=1e-6)
    assert server.stats["batches"] == 1 and server.stats["rows"] == 3


def test_concurrent_clients_lose_no_request(server):
    clients, per_client = 6, 150
    answered, failures = [0] * clients, []

    def run(index: int) -> None:
        rng = np.random.default_rng(index)
        try:
            with serve.Client(*server.address, timeout=TIMEOUT) as client:
                for i in range(per_client):
                    batch = int(rng.integers(1, 5))
                    obs, noise = random_inputs(batch, seed=1000 * index + i)
                    if i % 3 == 0:
                        got, want = client.act(obs, deterministic=True), toy_reference(obs, 0 * noise)
                    else:
                        got, want = client.act(obs, noise=noise), toy_reference(obs, noise)
                    np.testing.assert_allclose(got, want, atol=1e-5)
                    answered[index] += 1
        except Exception as err:  # reported below: an assertion in a thread would be lost
            failures.append(f"client {index}: {err!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert answered == [per_client] * clients
    assert server.stats["act_requests"] == clients * per_client
    assert server.stats["errors"] == 0


def test_client_api(server, toy):
    with serve.Client(*server.address, timeout=TIMEOUT) as client:
        meta = client.metadata()
        assert (meta["obs_dim"], meta["act_dim"], meta["num_steps"], meta["env_id"]) == (OBS_DIM, ACT_DIM, K, "Toy-v0")
        assert meta["protocol_version"] == 1
        assert 0 < client.ping() < TIMEOUT
        obs, noise = random_inputs(1, seed=3)
        np.testing.assert_allclose(client.act(obs[0], noise=noise[0]), toy.act(obs[0], noise=noise[0]), atol=1e-6)
        np.testing.assert_allclose(client.act(obs, deterministic=True), toy.act(obs, deterministic=True), atol=1e-6)
        assert client.act(obs).shape == (1, ACT_DIM)
        with pytest.raises(serve.RemoteError) as info:
            client.act(np.ones(OBS_DIM + 2))
        assert info.value.code == ErrorCode.BAD_SHAPE and "obs_dim = 3" in str(info.value)
        assert client.act(obs[0]).shape == (ACT_DIM,)  # still connected


def test_token(toy_path):
    with PolicyServer(serve.load_policy(toy_path), port=0, token="s3cret") as srv:
        with serve.Client(*srv.address, timeout=TIMEOUT, token="s3cret") as client:
            assert client.act(np.ones(OBS_DIM)).shape == (ACT_DIM,)
        with serve.Client(*srv.address, timeout=TIMEOUT) as anonymous:
            with pytest.raises(serve.RemoteError) as info:
                anonymous.ping()
            assert info.value.code == ErrorCode.UNAUTHORIZED
        with pytest.raises(serve.RemoteError) as info:
            serve.Client(*srv.address, timeout=TIMEOUT, token="guess")
        assert info.value.code == ErrorCode.UNAUTHORIZED


# --- connection slots: deadlines, and room for a good client ----------------------------------------
def wait_until(condition, timeout: float = TIMEOUT) -> None:
    """Poll `condition` on the server's state until it holds; bounded, so a bug fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.01)


def assert_closed_with(sock: socket.socket, code: ErrorCode, words: str) -> None:
    """The server sent `sock` an ERROR `code` with request id 0 (it answers no request) and closed it."""
    header, payload = read_frame(sock)
    got, message = parse_error(payload)
    assert (header.type, header.request_id, got) == (MsgType.ERROR, 0, code), message
    assert words in message, message
    assert read_frame(sock) is None


@pytest.mark.parametrize("token", [None, "s3cret"], ids=["no token", "token"])
def test_connection_limit_keeps_proven_clients_and_refuses_newcomers_with_busy(toy_path, token):
    with PolicyServer(serve.load_policy(toy_path), port=0, token=token, max_connections=1) as srv:
        with serve.Client(*srv.address, timeout=TIMEOUT, token=token) as client:
            client.ping()  # accepted, and proven: no newcomer can take its slot
            connection = client._sock
            with raw(srv) as extra:
                assert_closed_with(extra, ErrorCode.BUSY, "retry later")
            with pytest.raises(serve.RemoteError) as info:  # serve.Client gets it too, in AUTH or its first request
                serve.Client(*srv.address, timeout=TIMEOUT, token=token).ping()
            assert info.value.code == ErrorCode.BUSY
            assert client.ping() > 0
            assert client._sock is connection


@pytest.mark.parametrize("token", [None, "s3cret"], ids=["no token", "token"])
def test_idle_sockets_cannot_lock_a_good_client_out(toy_path, token):
    with PolicyServer(serve.load_policy(toy_path), port=0, token=token, max_connections=3) as srv:
        squatters = [raw(srv) for _ in range(3)]  # connect, never send a byte
        wait_until(lambda: len(srv._connections) == 3)
        with serve.Client(*srv.address, timeout=TIMEOUT, token=token) as first:
            first.ping()
            connection = first._sock
            with serve.Client(*srv.address, timeout=TIMEOUT, token=token) as second:
                obs = np.ones((1, OBS_DIM), np.float32)
                np.testing.assert_allclose(second.act(obs, deterministic=True),
                                           toy_reference(obs, np.zeros((1, K + 1, ACT_DIM))), atol=1e-6)
            first.ping()
            assert first._sock is connection  # the newcomer displaced a squatter, not the proven client
        for squatter in squatters[:2]:  # the oldest squatters went first
            assert_closed_with(squatter, ErrorCode.BUSY, "gave this one's slot to a newcomer")
        for squatter in squatters:
            squatter.close()


def test_auth_deadline_closes_a_connection_that_does_not_authenticate(toy_path):
    auth = pack_header(MsgType.AUTH, 1, 6) + b"s3cret"
    with (PolicyServer(serve.load_policy(toy_path), port=0, token="s3cret", auth_timeout=0.2) as srv,
          serve.Client(*srv.address, timeout=TIMEOUT, token="s3cret") as client):
        connection = client._sock
        with raw(srv) as silent, raw(srv) as trickling:
            trickling.sendall(auth[:-2])  # all but the end of an AUTH frame: the deadline is for the whole of it
            for sock in (silent, trickling):
                assert_closed_with(sock, ErrorCode.TIMED_OUT, "no AUTH within 0.2 s")
        client.ping()
        assert client._sock is connection  # an authenticated connection has no AUTH deadline


def test_idle_timeout_closes_a_silent_connection_and_says_why(toy_path):
    with (PolicyServer(serve.load_policy(toy_path), port=0, idle_timeout=0.25) as timed,
          PolicyServer(serve.load_policy(toy_path), port=0, idle_timeout=0) as untimed,
          raw(timed) as sock, raw(untimed) as unlimited):
        for request_id in range(1, 4):  # 0.3 s of requests 0.1 s apart: each complete frame restarts the clock
            for conn in (unlimited, sock):  # `unlimited` first, so it ends up idle the longer of the two
                conn.sendall(pack_header(MsgType.PING, request_id, 0))
                assert read_frame(conn)[0].type == MsgType.PONG
            time.sleep(0.1)
        assert_closed_with(sock, ErrorCode.TIMED_OUT, "no request for 0.25 s")
        unlimited.sendall(pack_header(MsgType.PING, 9, 0))  # idle_timeout=0: no limit
        assert read_frame(unlimited)[0].request_id == 9


def test_client_reconnects_by_itself_after_an_idle_timeout(toy_path):
    with (PolicyServer(serve.load_policy(toy_path), port=0, token="s3cret", idle_timeout=0.1) as srv,
          serve.Client(*srv.address, timeout=TIMEOUT, token="s3cret") as client):
        client.ping()
        assert select.select([client._sock], [], [], TIMEOUT)[0]  # the server's goodbye has arrived
        assert client.act(np.ones(OBS_DIM), deterministic=True).shape == (ACT_DIM,)  # no error: a new connection
        assert srv.stats["connections"] == 2


def test_client_times_out_and_reconnects(server):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (via the backlog) and never answers
        address = silent.getsockname()[:2]
        client = serve.Client(*address, timeout=0.2)
        with pytest.raises(TimeoutError, match="reconnects"):
            client.ping()
        client.host, client.port = server.address  # the next call opens a fresh connection
        assert client.ping() > 0
        client.close()
    with pytest.raises(ConnectionError, match="diffagent serve"):
        serve.Client(*address, timeout=0.2)  # nothing listens there any more


def test_remote_bind_needs_the_flag_and_a_token(toy, capsys):
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_bind(host, allow_remote=False, token=None)
    for host in ("0.0.0.0", "192.168.1.10", "::", "robot.local"):
        with pytest.raises(ServeConfigError, match="--allow-remote"):
            check_bind(host, allow_remote=False, token=None)
        with pytest.raises(ServeConfigError, match="--token"):
            check_bind(host, allow_remote=True, token=None)
        check_bind(host, allow_remote=True, token="s3cret")
    with pytest.raises(ServeConfigError):
        PolicyServer(toy, host="0.0.0.0", port=0)  # refused before anything binds
    assert serve.server.main(["model", "--host", "0.0.0.0", "--port", "0"]) != 0
    assert "--allow-remote" in capsys.readouterr().err


def test_cli_bad_model_path(tmp_path, capsys):
    from diffagent.cli import main

    assert serve.server.main([str(tmp_path / "missing"), "--port", "0"]) != 0  # python -m serve.server
    assert "not found" in capsys.readouterr().err
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "missing"), "--port", "0"])
    assert result.exit_code != 0
    assert "not found" in result.output and "policy.onnx" in result.output


def test_bad_timeouts_are_refused_before_the_model_loads(tmp_path, toy, capsys):
    for option, value, words in (("--auth-timeout", "0", "must be > 0"), ("--idle-timeout", "-1", "must be >= 0")):
        assert serve.server.main([str(tmp_path / "missing"), "--port", "0", option, value]) != 0
        assert f"{option} {words}" in capsys.readouterr().err
        with pytest.raises(ServeConfigError, match=words):
            PolicyServer(toy, port=0, **{option[2:].replace("-", "_"): float(value)})


# --- real exported policies --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    """An exported DiffSAC policy on Pendulum-v1, its weights moved off the near-zero initialisation."""
    import torch
    from diffagent import Agent
    from diffagent.export import export_onnx

    agent = Agent("diffsac", "Pendulum-v1")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in agent.policy.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    directory = tmp_path_factory.mktemp("pendulum")
    agent.save_pretrained(directory)
    export_onnx(agent, directory / "policy.onnx", verify=False)  # parity is checked here, against serve
    return agent, directory


def test_runtime_equals_agent_act(pendulum):
    agent, directory = pendulum
    policy = serve.load_policy(directory)
    assert (policy.obs_dim, policy.act_dim, policy.metadata.env_id) == (3, 1, "Pendulum-v1")
    rng = np.random.default_rng(0)
    obs = (rng.standard_normal((64, 3)) * [0.7, 0.7, 5.0]).astype(np.float32)
    noise = rng.standard_normal((64, policy.num_steps + 1, 1)).astype(np.float32)
    assert np.abs(policy.act(obs, noise=noise) - agent.act(obs, noise=noise)).max() < 1e-5
    assert np.abs(policy.act(obs[0], noise=noise[0]) - agent.act(obs[0], noise=noise[0])).max() < 1e-5
    assert np.abs(policy.act(obs, deterministic=True) - agent.act(obs, deterministic=True)).max() < 1e-5


def test_served_policy_in_another_process_equals_agent_act_and_drives_the_demo(pendulum, capsys):
    from serve.demo import main as demo, start_server, stop_server

    agent, directory = pendulum
    proc, host, port = start_server(str(directory))
    try:
        rng = np.random.default_rng(1)
        obs = (rng.standard_normal((8, 3)) * [0.7, 0.7, 5.0]).astype(np.float32)
        noise = rng.standard_normal((8, agent.policy.num_steps + 1, 1)).astype(np.float32)
        with serve.Client(host, port, timeout=TIMEOUT) as client:
            assert np.abs(client.act(obs, noise=noise) - agent.act(obs, noise=noise)).max() < 1e-5
            assert np.abs(client.act(obs[0], deterministic=True) - agent.act(obs[0], deterministic=True)).max() < 1e-5
        demo(["--connect", f"{host}:{port}", "--episodes", "2", "--max-steps", "25"])
    finally:
        stop_server(proc)
    out = capsys.readouterr().out
    assert "episode 1: return" in out and "round trip over 50 requests" in out
    assert proc.returncode == 0  # SIGTERM stops the server cleanly


# --- fuzzing the ACT path: in-process and over the wire alike ------------------------------------------
FLOAT32 = np.finfo(np.float32)
# Hypothesis reaches the extremes by itself, but not on every run: these are always in the mix.
EXTREME_FLOAT32 = [float(FLOAT32.max), -float(FLOAT32.max), float(FLOAT32.smallest_subnormal),
                   -float(FLOAT32.smallest_subnormal), float(FLOAT32.smallest_normal), 0.0, -0.0]
finite_floats = st.one_of(st.sampled_from(EXTREME_FLOAT32), st.floats(width=32, allow_nan=False, allow_infinity=False))
# Bit patterns as they may arrive on the wire: quiet, negative, signalling and all-payload NaNs, +inf, -inf.
NON_FINITE_BITS = [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0x7F800000, 0xFF800000]
NOISE_MODES = ("drawn", "deterministic", "sent")  # by the policy's generator, zero, or by the caller


@pytest.fixture(scope="module", params=["toy", "pendulum"])
def served(request, toy_path):
    """(a policy in-process, a client of a server running the same graph): the two ACT paths side by side."""
    path = toy_path if request.param == "toy" else request.getfixturevalue("pendulum")[1]
    with PolicyServer(serve.load_policy(path), port=0) as srv, serve.Client(*srv.address, timeout=TIMEOUT) as client:
        yield serve.load_policy(path), client


def finite_arrays(shape) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shape, elements=finite_floats)


def draw_act_inputs(data, policy: serve.OnnxPolicy, noise_modes=NOISE_MODES):
    """(obs, noise, deterministic): finite float32 observations, and chain noise in one of `noise_modes`."""
    rows = data.draw(st.integers(1, 3), label="rows")
    obs = data.draw(finite_arrays((rows, policy.obs_dim)), label="obs")
    mode = data.draw(st.sampled_from(noise_modes), label="noise mode")
    if mode != "sent":
        return obs, None, mode == "deterministic"
    return obs, data.draw(finite_arrays(policy.noise_shape(rows)), label="noise"), False


def action_box(policy: serve.OnnxPolicy) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the policy's action space, a null bound read as unbounded."""
    space = policy.metadata.action_space
    return tuple(np.array([fill if bound is None else bound for bound in space[key]], np.float32)
                 for key, fill in (("low", -np.inf), ("high", np.inf)))


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_fuzz_finite_input_gets_a_finite_action_in_the_box(served, data):
    policy, client = served
    obs, noise, deterministic = draw_act_inputs(data, policy)
    local = policy.act(obs, noise=noise, deterministic=deterministic)
    remote = client.act(obs, noise=noise, deterministic=deterministic)
    low, high = action_box(policy)
    for actions in (local, remote):
        assert actions.shape == (obs.shape[0], policy.act_dim)
        assert np.isfinite(actions).all() and (actions >= low).all() and (actions <= high).all(), actions
    if noise is not None or deterministic:  # the same chain noise: the same actions on both paths
        np.testing.assert_allclose(remote, local, rtol=1e-6, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_fuzz_non_finite_input_gets_the_non_finite_error_and_the_connection_stays(served, data):
    policy, client = served
    culprit = data.draw(st.sampled_from(["observation", "noise"]), label="culprit")
    obs, noise, deterministic = draw_act_inputs(data, policy, NOISE_MODES if culprit == "observation" else ("sent",))
    bits = (obs if culprit == "observation" else noise).view(np.uint32).reshape(-1)
    for index in data.draw(st.sets(st.integers(0, bits.size - 1), min_size=1, max_size=3), label="spoilt"):
        bits[index] = data.draw(st.sampled_from(NON_FINITE_BITS), label="bits")
    with pytest.raises(InputError) as local:
        policy.act(obs, noise=noise, deterministic=deterministic)
    connection = client._sock
    with pytest.raises(serve.RemoteError) as remote:
        client.act(obs, noise=noise, deterministic=deterministic)
    assert local.value.code == remote.value.code == ErrorCode.NON_FINITE
    assert remote.value.message == str(local.value) and remote.value.message.startswith(culprit)
    client.ping()
    assert client._sock is connection  # the frame was skipped, the connection goes on
