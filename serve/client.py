"""A small blocking Python client for `diffagent serve` (numpy only).

    with serve.Client("127.0.0.1", 8870) as client:
        action = client.act(obs)                      # (obs_dim,) -> (act_dim,)
        actions = client.act(obs_batch, deterministic=True)
        action = client.act({"observation": o, "desired_goal": g})   # a Dict observation, by its keys
        info = client.metadata()
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from serve.contract import flatten_observation, observation_layout
from serve.protocol import (DEFAULT_MAX_PAYLOAD, DEFAULT_PORT, FATAL_ERRORS, HEADER_SIZE, WIRE_FLOAT32, DType,
                            ErrorCode, Flags, MsgType, ProtocolError, float32_payload, pack_header, parse_error,
                            parse_header)

_RECV_SIZE = 1 << 16
# Plain ints on the per-request path: reading an enum member costs about 0.3 us in Python 3.11, and IntFlag
# arithmetic about a microsecond per operation.
_ACT, _ACT_REPLY, _ERROR = int(MsgType.ACT), int(MsgType.ACT_REPLY), int(MsgType.ERROR)
_DETERMINISTIC, _NOISE, _FLOAT32 = int(Flags.DETERMINISTIC), int(Flags.NOISE), int(DType.FLOAT32)


class RemoteError(RuntimeError):
    """The server answered with an ERROR frame; `code` is a `serve.protocol.ErrorCode` value."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{_code_name(code)} ({code}): {message}")
        self.code = code
        self.message = message


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return "UNKNOWN_ERROR"


class Client:
    """A connection to a policy server. Not thread-safe: use one client per thread.

    Args:
        host, port: the server's address.
        timeout: seconds to wait for each reply (and to connect); a timeout raises TimeoutError and
            drops the connection, since a late reply would arrive out of step.
        token: the server's shared secret, when it was started with --token.
        max_payload: the largest reply payload accepted, in bytes.

    After a dropped connection (timeout, server restart, fatal error) the next call reconnects. A
    connection the server closed while it sat unused (its idle timeout, its slot given to a
    newcomer, a restart) is replaced before the request goes out, so a paused loop sees no error.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, timeout: float | None = 5.0,
                 token: str | None = None, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.host, self.port, self.timeout = host, port, timeout
        self.token = token
        self.max_payload = max_payload
        self._sock: socket.socket | None = None
        self._input_waiting: Callable[[], bool] = lambda: False
        self._buf = bytearray()
        self._next_id = 1  # the server sends request id 0 with errors that answer no request (PROTOCOL.md)
        self._layout: list[tuple[str, int]] | None = None  # a Dict observation's keys, read from METADATA on first use
        self._connect()

    # --- connection -----------------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as err:
            raise ConnectionError(f"cannot connect to a policy server at {self.host}:{self.port} ({err}); start "
                                  "one with `diffagent serve MODEL --port PORT`") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one small write: send it now
        self._sock, self._buf = sock, bytearray()
        self._input_waiting = _input_waiting_check(sock)
        if self.token is not None:
            self._exchange(sock, MsgType.AUTH, self.token.encode("utf-8"), MsgType.AUTH_OK)
        return sock

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------------------
    def act(self, obs: Any, noise: Any = None, deterministic: bool = False) -> np.ndarray:
        """Actions for one observation (obs_dim,) -> (act_dim,) or a batch (B, obs_dim) -> (B, act_dim).

        `noise` ((K+1, act_dim) per observation) fixes the chain's randomness; without it the server
        draws the noise, or uses zeros when `deterministic`. Values are sent as float32. For a Dict
        observation space, `obs` may be a mapping of its keys to their values, concatenated here in the
        order the policy's metadata lists them (PROTOCOL.md, "Dict observations").
        """
        if isinstance(obs, Mapping):
            if self._layout is None:
                self._layout = observation_layout(self.metadata()["observation_space"])
            if self._layout is None:
                raise ValueError("the served policy's observation is a Box: pass an array, not a mapping")
            obs = flatten_observation(obs, self._layout)
        obs_array = float32_payload(obs)
        single = obs_array.ndim == 1
        if obs_array.ndim not in (1, 2):
            raise ValueError(f"expected an observation (obs_dim,) or a batch (B, obs_dim), got shape {obs_array.shape}")
        rows, cols = (1, obs_array.shape[0]) if single else obs_array.shape
        flags = _DETERMINISTIC if deterministic else 0
        payload = obs_array.tobytes()
        if noise is not None:
            # The server checks the noise length against K and act_dim; here it only has to be float32.
            flags |= _NOISE
            payload += float32_payload(noise).tobytes()
        header, body = self._request(_ACT, payload, _ACT_REPLY, _FLOAT32, flags, rows, cols)
        if header.dtype != _FLOAT32 or len(body) != 4 * header.rows * header.cols or header.rows != rows:
            self.close()
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"malformed ACT reply (rows={header.rows}, cols={header.cols}, "
                                                     f"{len(body)} bytes) for {rows} observations")
        actions = np.frombuffer(body, WIRE_FLOAT32).reshape(header.rows, header.cols)
        return actions[0] if single else actions

    def metadata(self) -> dict[str, Any]:
        """The served policy's metadata: algo, env_id, num_steps, obs_dim, act_dim, spaces, limits."""
        _, body = self._request(MsgType.METADATA, b"", MsgType.METADATA_REPLY)
        return json.loads(bytes(body).decode("utf-8"))

    def ping(self) -> float:
        """Round-trip time of a PING in seconds (a health check: raises if the server does not answer)."""
        start = time.perf_counter()
        self._request(MsgType.PING, b"", MsgType.PONG)
        return time.perf_counter() - start

    def _request(self, msg_type: int, payload: bytes, expect: int, dtype: int = DType.NONE, flags: int = 0,
                 rows: int = 0, cols: int = 0) -> tuple[Any, bytearray]:
        if self._sock is not None and self._input_waiting():
            # Every reply is read before the next request goes out, so bytes waiting now are unsolicited:
            # the server's goodbye (an ERROR with request id 0) and the end of the stream. No request was
            # in flight, so this one simply goes out on a fresh connection.
            self.close()
        sock = self._sock if self._sock is not None else self._connect()
        return self._exchange(sock, msg_type, payload, expect, dtype, flags, rows, cols)

    def _exchange(self, sock: socket.socket, msg_type: int, payload: bytes, expect: int, dtype: int = DType.NONE,
                  flags: int = 0, rows: int = 0, cols: int = 0) -> tuple[Any, bytearray]:
        request_id = self._next_id
        self._next_id = request_id % 0xFFFFFFFF + 1  # 1, 2, ..., 2**32 - 1, then 1 again
        frame = pack_header(msg_type, request_id, len(payload), dtype=dtype, flags=flags, rows=rows, cols=cols)
        try:
            sock.sendall(frame + payload)
            header, body = self._read_frame(sock)
        except (TimeoutError, socket.timeout):
            self.close()
            raise TimeoutError(f"no reply from {self.host}:{self.port} within {self.timeout} s; the connection "
                               "was dropped and the next call reconnects") from None
        except ProtocolError:
            self.close()  # the byte stream can no longer be trusted
            raise
        except OSError as err:
            self.close()
            raise ConnectionError(f"lost the connection to {self.host}:{self.port} ({err}); the next call "
                                  "reconnects") from None
        if header.type == _ERROR:
            code, message = parse_error(body)
            if code in FATAL_ERRORS:
                self.close()  # the server closes its end after a fatal error
            raise RemoteError(code, message)
        if header.type != expect or header.request_id != request_id:
            self.close()
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unexpected reply (type 0x{header.type:02x}, id "
                                                        f"{header.request_id}) to request {request_id}; the "
                                                        "connection was dropped")
        return header, body

    def _read_frame(self, sock: socket.socket) -> tuple[Any, bytearray]:
        buf = self._buf
        while len(buf) < HEADER_SIZE:
            self._fill(sock, buf)
        header = parse_header(buf, 0, self.max_payload)
        end = HEADER_SIZE + header.payload_len
        while len(buf) < end:
            self._fill(sock, buf)
        body = buf[HEADER_SIZE:end]
        del buf[:end]
        return header, body

    def _fill(self, sock: socket.socket, buf: bytearray) -> None:
        chunk = sock.recv(_RECV_SIZE)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        buf += chunk


def _input_waiting_check(sock: socket.socket) -> Callable[[], bool]:
    """A non-blocking test for bytes (or the end of the stream) waiting on `sock`.

    poll(2) with the socket registered once costs about half of select(2) a call; Windows has only select.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return lambda: bool(poller.poll(0))
    return lambda: bool(select.select([sock], [], [], 0)[0])


__all__ = ["Client", "RemoteError"]
