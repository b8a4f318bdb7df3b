"""`diffagent serve`: a TCP server for an exported policy, speaking the binary protocol of PROTOCOL.md.

Design, and why:

- **One thread, one selector (epoll), one onnxruntime session.** A control loop sends one small
  request and waits; what matters is the time between the request's last byte arriving and the
  reply's first byte leaving. A single thread that owns the session pays no lock, no GIL hand-off
  between threads (which can cost milliseconds when a thread-per-client server has several
  threads runnable) and no event-loop machinery (asyncio adds tens of microseconds a round).
- **Opportunistic batching.** Each round the loop reads every socket that is ready and runs all
  the ACT requests it found as one graph call. A lone client therefore never waits for a batching
  window (its batch is itself), while under load the requests that arrived during one inference
  form the next batch: the window adapts to the inference time, with no tuning knob to get wrong.
  On a few cores one batched call is far cheaper than N calls, so this lowers latency under load.
- Replies on a connection go out in request order; a request id in every header matches them.
- Malformed input never takes the server down: a frame whose framing is intact gets an ERROR reply
  and the connection stays open; a frame whose framing cannot be trusted (bad magic, unknown
  version, oversized, unauthorised) gets an ERROR reply and the connection is closed. A client that
  stalls mid-frame is dropped after `frame_timeout` seconds, one that hangs up mid-frame is
  forgotten, and a client that does not read its replies is dropped when its backlog is too large.
- **A slot is lent, not given.** Each connection holds one of `max_connections` slots, so a peer
  that takes one and never uses it must lose it: with a token, AUTH must be complete within
  `auth_timeout` (5 s: a client sends it in its first round trip, so this allows a slow link and
  still frees a squatted slot soon), and any connection that sends no complete frame for
  `idle_timeout` (60 s, about a keep-alive's; 0 or None: no limit) is closed with a TIMED_OUT error
  that says which. `serve.Client` reconnects by itself, so the idle timeout costs a paused control
  loop one reconnect.
- **Room for a good client.** When every slot is taken, a newcomer displaces the oldest connection
  that has not proven itself (not yet authenticated; without a token, no frame sent yet), which
  gets BUSY; only when every slot belongs to a proven client is the newcomer refused with BUSY.
  So sockets that connect and stay silent can never lock a good client out, and no stream of
  anonymous connections can push out a client that holds the token (evicting the longest-idle
  connection whatever it is would let anyone without the token disconnect paused token holders
  one by one; reserved slots would run out just the same). Proven clients that fall silent give
  their slots back through the idle timeout.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import math
import os
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from serve.contract import ModelLoadError
from serve.protocol import (DEFAULT_MAX_PAYLOAD, DEFAULT_PORT, HEADER_SIZE, KNOWN_FLAGS, VERSION, DType, ErrorCode,
                            WIRE_FLOAT32, Flags, Header, MsgType, ProtocolError, error_frame, pack_header,
                            parse_header)
from serve.runtime import NOISE_POOL_SIZE, InputError, OnnxPolicy, all_finite, check_finite, load_policy

DEFAULT_HOST = "127.0.0.1"
TOKEN_ENV = "DIFFAGENT_SERVE_TOKEN"
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_FRAME_TIMEOUT = 10.0
DEFAULT_AUTH_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 60.0
_RECV_SIZE = 1 << 16  # below glibc's mmap threshold: a larger recv buffer costs an mmap per call
# A client whose unread replies pass this many bytes is not reading them; drop it rather than buffer forever.
_MAX_BACKLOG = 4 * DEFAULT_MAX_PAYLOAD
_ACCEPT_BACKLOG = 128
# Plain ints for the per-request checks: reading an enum member costs about 0.3 us in Python 3.11, and IntFlag
# arithmetic about a microsecond per operation.
_ACT, _ACT_REPLY, _FLOAT32 = int(MsgType.ACT), int(MsgType.ACT_REPLY), int(DType.FLOAT32)
_DETERMINISTIC, _NOISE = int(Flags.DETERMINISTIC), int(Flags.NOISE)
_NOISE_LOW_WATER = NOISE_POOL_SIZE // 4
# What the selector's keys carry besides connections; compared by identity, as `==` would call _Connection.__eq__.
_LISTENER, _WAKE = "listener", "wake"

log = logging.getLogger("serve")


class ServeConfigError(ValueError):
    """A server setting that is refused (e.g. a non-loopback bind without --allow-remote and --token)."""


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1 or 'localhost')."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, allow_remote: bool, token: str | None) -> None:
    """Refuse a bind that would expose the policy beyond this machine unless asked for explicitly with a token."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ServeConfigError(f"refusing to bind {host}: it is reachable from other machines. Pass --allow-remote "
                               "together with --token SECRET (or DIFFAGENT_SERVE_TOKEN) to serve beyond loopback.")
    if not token:
        raise ServeConfigError(f"binding {host} with --allow-remote also needs a shared token: pass --token SECRET "
                               "or set DIFFAGENT_SERVE_TOKEN; clients then call Client(..., token=SECRET).")


def check_timeouts(auth_timeout: float, idle_timeout: float | None) -> None:
    """Refuse an AUTH deadline that is not positive and a negative idle timeout (0 or None: no idle limit)."""
    if not auth_timeout > 0:  # also refuses NaN
        raise ServeConfigError(f"--auth-timeout must be > 0 seconds, got {auth_timeout}")
    if idle_timeout is not None and not idle_timeout >= 0:
        raise ServeConfigError(f"--idle-timeout must be >= 0 seconds (0 means no limit), got {idle_timeout}")


@dataclass
class _Connection:
    sock: socket.socket
    peer: str
    authed: bool
    accepted: float  # time.monotonic() at accept: the AUTH deadline and the idle clock start here
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    partial_since: float | None = None  # when the unfinished frame in inbuf started arriving
    last_frame: float | None = None  # when the latest complete frame arrived; None: it has sent none (unproven)
    closing: bool = False  # a fatal error was queued or the peer hung up: send what is queued, then close
    events: int = selectors.EVENT_READ  # what the selector watches for


@dataclass(slots=True)
class _Act:
    """One parsed ACT request waiting for the round's graph call."""

    conn: _Connection
    request_id: int
    obs: np.ndarray
    noise: np.ndarray | None  # None: draw from the policy's generator (or the graph draws its own)
    deterministic: bool
    start: int = 0  # first row in the batch
    reply: bytes = b""


class PolicyServer:
    """Serve `policy` on host:port until `stop()`; see the module docstring for the design.

    Args:
        policy: a loaded `OnnxPolicy` (or a subclass, e.g. a no-op one for measuring the transport).
        host, port: where to listen; port 0 picks a free port (read it back from `address`).
        token: when set, every connection must first send AUTH with this token.
        allow_remote: required (with `token`) for a host other than loopback.
        max_batch: the most observation rows in one request and in one graph call.
        batching: run the ACT requests found in one round as a single graph call.
        max_payload: the largest accepted payload in bytes; larger frames are refused and the
            connection is closed.
        max_connections: the most connections held at once; a newcomer beyond this displaces the oldest
            connection that has not authenticated (without a token: sent no frame), or gets BUSY.
        frame_timeout: seconds a started frame may take to arrive in full.
        auth_timeout: with `token`, seconds a connection has to complete AUTH before it is closed.
        idle_timeout: seconds a connection may go without sending a complete frame before it is
            closed; 0 or None for no limit.
    """

    def __init__(self, policy: OnnxPolicy, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 token: str | None = None, allow_remote: bool = False, max_batch: int = DEFAULT_MAX_BATCH,
                 batching: bool = True, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
                 auth_timeout: float = DEFAULT_AUTH_TIMEOUT, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT):
        check_bind(host, allow_remote, token)
        check_timeouts(auth_timeout, idle_timeout)
        if max_batch < 1:
            raise ServeConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.policy = policy
        self.token = token.encode("utf-8") if token else None
        self.max_batch = max_batch
        self.batching = batching
        self.max_payload = max_payload
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout or None
        meta = policy.metadata
        self._obs_dim, self._noise_input = meta.obs_dim, meta.noise_input
        self._noise_row = (meta.num_steps + 1) * meta.act_dim
        self._metadata_json = json.dumps({**meta.to_dict(), "protocol_version": VERSION, "max_batch": max_batch,
                                          "max_payload": max_payload, "provider": policy.provider}).encode("utf-8")
        self.stats = {"connections": 0, "requests": 0, "act_requests": 0, "errors": 0, "batches": 0, "rows": 0}
        self._listener = socket.create_server((host, port), family=_family(host), backlog=_ACCEPT_BACKLOG,
                                              reuse_port=False)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        # A socketpair wakes the selector for stop() from another thread or a signal handler.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._connections: dict[int, _Connection] = {}
        self._next_deadline = math.inf  # the earliest frame, AUTH or idle deadline of any connection
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "PolicyServer":
        """Serve in a background daemon thread (for tests and embedding); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="diffagent-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to finish and, if it runs in `start`'s thread, wait for it."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the loop already closed the pair
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Run the event loop until `stop()`; closes every socket on the way out."""
        try:
            while not self._stopping:
                self._round()
        finally:
            for conn in list(self._connections.values()):
                self._close(conn)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    # --- the event loop -------------------------------------------------------------------------------
    def _round(self) -> None:
        events = self._selector.select(self._select_timeout())
        acts: list[_Act] = []
        ordered: list[tuple[_Connection, bytes | _Act]] = []
        for key, mask in events:
            if key.data is _LISTENER:
                self._accept()
            elif key.data is _WAKE:
                self._wake_r.recv(4096)
            else:
                conn: _Connection = key.data
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn)
                if mask & selectors.EVENT_READ and conn.sock.fileno() != -1:
                    self._read(conn, acts, ordered)
        if acts:
            self._run_acts(acts)
        touched: dict[int, _Connection] = {}
        for conn, item in ordered:
            conn.out += item.reply if isinstance(item, _Act) else item
            touched[id(conn)] = conn
        for conn in touched.values():
            self._flush(conn)
        if acts:  # replies are out: top up the noise block now rather than inside a later request
            self.policy.refill_noise(low_water=_NOISE_LOW_WATER)
        self._expire_connections()

    def _select_timeout(self) -> float | None:
        if self._next_deadline == math.inf:
            return None
        return max(0.0, self._next_deadline - time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. out of file descriptors: keep serving the connections we have
                log.warning("accept failed: %s", err)
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies are tiny: never wait for Nagle
            sock.setblocking(False)
            if len(self._connections) >= self.max_connections and not self._make_room():
                _send_and_close(sock, error_frame(0, ErrorCode.BUSY, self._full_message()))
                continue
            conn = _Connection(sock, f"{peer[0]}:{peer[1]}", authed=self.token is None, accepted=time.monotonic())
            self._connections[id(conn)] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self.stats["connections"] += 1

    def _make_room(self) -> bool:
        """Dismiss the oldest unproven connection to free a slot for a newcomer; False if every one is proven."""
        unproven = [conn for conn in self._connections.values() if conn.last_frame is None]
        if not unproven:
            return False
        oldest = min(unproven, key=lambda conn: conn.accepted)
        lapse, fix = ("had not completed AUTH", "send AUTH") if self.token else ("sent no request", "send one")
        self._dismiss(oldest, ErrorCode.BUSY, f"the server holds its maximum of {self.max_connections} connections "
                                              f"and gave this one's slot to a newcomer, as this one {lapse}; "
                                              f"{fix} as soon as you connect, or raise --max-connections")
        return True

    def _full_message(self) -> str:
        """BUSY's text for a newcomer refused because every slot belongs to a proven client."""
        proof = "authenticated" if self.token else "sent requests"
        release = f" (a client idle for {self.idle_timeout:g} s loses its slot)" if self.idle_timeout else ""
        return (f"the server holds its maximum of {self.max_connections} connections, all from clients that have "
                f"{proof}; retry later{release} or raise --max-connections")

    def _read(self, conn: _Connection, acts: list[_Act], ordered: list) -> None:
        try:
            data: bytes | bytearray = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the peer hung up, possibly mid-frame: that frame is dropped, queued replies still go
            conn.inbuf = bytearray()  # replaced, as below, never resized under a view
            conn.partial_since = None
            conn.closing = True
            ordered.append((conn, b""))
            return
        if conn.closing:
            return  # a fatal error is queued; ignore anything else the peer sends
        if conn.inbuf:  # continue a frame that started in an earlier recv
            conn.inbuf += data
            data = conn.inbuf
        pos, size = 0, len(data)
        while size - pos >= HEADER_SIZE:
            try:
                header = parse_header(data, pos, self.max_payload)
            except ProtocolError as err:
                self._fatal(conn, 0, err, ordered)
                return
            end = pos + HEADER_SIZE + header.payload_len
            if size < end:
                break
            start, pos = pos + HEADER_SIZE, end
            self.stats["requests"] += 1
            self._dispatch(conn, header, data, start, acts, ordered)
            if conn.closing:
                return
        if pos:  # a frame arrived whole: the connection is in use (and, from now on, proven)
            conn.last_frame = time.monotonic()
        # The common case (whole frames in one recv) never copies into inbuf. The ACT arrays parsed above
        # are views into `data`, so an inbuf they read is replaced, never resized (numpy holds its buffer).
        if pos == size:
            if conn.inbuf:
                conn.inbuf = bytearray()
        elif pos or data is not conn.inbuf:
            conn.inbuf = bytearray(memoryview(data)[pos:])
        # The clock runs from the start of the unfinished frame, so a client streaming large frames
        # back to back is never mistaken for one that stalls.
        if not conn.inbuf:
            conn.partial_since = None
        elif pos or conn.partial_since is None:
            conn.partial_since = time.monotonic()

    def _dispatch(self, conn: _Connection, header: Header, data: bytes | bytearray, start: int, acts: list[_Act],
                  ordered: list) -> None:
        """Answer the frame whose payload is `data[start:start + header.payload_len]` (ACT: later, in the batch)."""
        request_id = header.request_id
        if not conn.authed:
            payload = data[start:start + header.payload_len]
            if header.type == MsgType.AUTH and hmac.compare_digest(payload, self.token):
                conn.authed = True
                ordered.append((conn, pack_header(MsgType.AUTH_OK, request_id, 0)))
            else:
                self._fatal(conn, request_id, ProtocolError(
                    ErrorCode.UNAUTHORIZED, "this server needs a token: send AUTH with it first "
                                            "(Client(..., token=SECRET))"), ordered)
            return
        try:
            if header.type == _ACT:
                act = self._parse_act(conn, header, data, start)
                acts.append(act)
                ordered.append((conn, act))
            elif header.type == MsgType.PING:
                ordered.append((conn, pack_header(MsgType.PONG, request_id, 0)))
            elif header.type == MsgType.METADATA:
                ordered.append((conn, pack_header(MsgType.METADATA_REPLY, request_id, len(self._metadata_json))
                                + self._metadata_json))
            elif header.type == MsgType.AUTH:
                ordered.append((conn, pack_header(MsgType.AUTH_OK, request_id, 0)))  # already authorised
            else:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{header.type:02x}; expected "
                                                            "ACT, PING, METADATA or AUTH (see serve/PROTOCOL.md)")
        except (ProtocolError, InputError) as err:
            self.stats["errors"] += 1
            ordered.append((conn, error_frame(request_id, err.code, str(err))))

    def _parse_act(self, conn: _Connection, header: Header, data: bytes | bytearray, start: int) -> _Act:
        rows, flags = header.rows, header.flags
        if header.dtype != _FLOAT32:
            raise ProtocolError(ErrorCode.BAD_DTYPE, f"ACT payloads are float32 (dtype code {int(DType.FLOAT32)}), "
                                                     f"got dtype code {header.dtype}; send float32")
        if flags & ~KNOWN_FLAGS or (flags & _DETERMINISTIC and flags & _NOISE):
            raise ProtocolError(ErrorCode.BAD_FLAGS, f"ACT flags 0x{flags:02x} are invalid: use DETERMINISTIC (0x01) "
                                                     "or NOISE (0x02), not both, and no other bits")
        if flags & KNOWN_FLAGS and not self._noise_input:
            raise ProtocolError(ErrorCode.BAD_FLAGS, "this policy's graph draws its own noise, so ACT takes neither "
                                                     "DETERMINISTIC nor NOISE; send flags 0")
        if header.cols != self._obs_dim or not 1 <= rows <= self.max_batch:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"ACT needs rows in [1, {self.max_batch}] and cols = obs_dim = "
                                                     f"{self._obs_dim}, got rows={rows}, cols={header.cols}")
        obs_len = rows * self._obs_dim
        noise_len = rows * self._noise_row if flags & _NOISE else 0
        if header.payload_len != 4 * (obs_len + noise_len):
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"ACT payload is {header.payload_len} bytes, but rows={rows} "
                                                     f"need {4 * obs_len} bytes of obs" +
                                                     (f" + {4 * noise_len} of noise" if noise_len else ""))
        values = np.frombuffer(data, WIRE_FLOAT32, obs_len + noise_len, start)  # a view: no copy
        obs = values[:obs_len].reshape(rows, self._obs_dim)
        noise = values[obs_len:].reshape(self.policy.noise_shape(rows)) if noise_len else None
        if not all_finite(values):
            # One pass over the whole payload on the hot path; a failure goes through the runtime's checks,
            # which name the culprit in the words `OnnxPolicy.act` uses. Finite observations here mean
            # the noise is at fault, so it is present.
            check_finite(obs, "observation")
            check_finite(noise, "noise")
        return _Act(conn, header.request_id, obs, noise, bool(flags & _DETERMINISTIC))

    def _run_acts(self, acts: list[_Act]) -> None:
        self.stats["act_requests"] += len(acts)
        if len(acts) == 1:  # the lone-client case: no grouping to do
            self._run_group(acts)
            return
        groups: list[list[_Act]] = []
        rows = 0
        for act in acts:  # consecutive groups of at most max_batch rows (each request fits by _parse_act)
            n = act.obs.shape[0]
            if not groups or not self.batching or rows + n > self.max_batch:
                groups.append([])
                rows = 0
            act.start = rows
            groups[-1].append(act)
            rows += n
        for group in groups:
            self._run_group(group)

    def _run_group(self, group: list[_Act]) -> None:
        policy = self.policy
        try:
            if len(group) == 1:
                act = group[0]
                obs, noise = act.obs, self._noise_for(act)
            else:
                obs = np.concatenate([a.obs for a in group])
                noise = None if not self._noise_input else np.concatenate([self._noise_for(a) for a in group])
            actions = np.ascontiguousarray(policy.run(obs, noise), dtype=WIRE_FLOAT32)
        except Exception as err:  # an onnxruntime failure must not take the server down; report it per request
            log.exception("inference failed")
            for act in group:
                self.stats["errors"] += 1
                act.reply = error_frame(act.request_id, ErrorCode.INTERNAL, f"inference failed ({type(err).__name__}: "
                                                                            f"{err}); see the server log")
            return
        self.stats["batches"] += 1
        self.stats["rows"] += actions.shape[0]
        act_dim = actions.shape[1]
        for act in group:
            n = act.obs.shape[0]
            block = actions[act.start:act.start + n]
            act.reply = pack_header(_ACT_REPLY, act.request_id, block.nbytes, dtype=_FLOAT32, rows=n,
                                    cols=act_dim) + block.tobytes()

    def _noise_for(self, act: _Act) -> np.ndarray | None:
        if not self._noise_input:
            return None
        if act.noise is not None:
            return act.noise
        n = act.obs.shape[0]
        if act.deterministic:
            return self.policy.zeros(n)
        return self.policy.draw_noise(n)

    def _fatal(self, conn: _Connection, request_id: int, err: ProtocolError, ordered: list) -> None:
        self.stats["errors"] += 1
        log.info("closing %s: %s", conn.peer, err)
        ordered.append((conn, error_frame(request_id, err.code, str(err))))
        conn.closing = True
        conn.inbuf = bytearray()
        conn.partial_since = None

    def _flush(self, conn: _Connection) -> None:
        if conn.sock.fileno() == -1:
            return
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # the peer is gone; nothing more to deliver
                self._close(conn)
                return
        if len(conn.out) > _MAX_BACKLOG:
            log.warning("closing %s: it does not read its replies (%d bytes queued)", conn.peer, len(conn.out))
            self._close(conn)
            return
        # A closing connection is no longer read (a hung-up peer would wake the selector forever).
        events = (0 if conn.closing else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.out else 0)
        if not events:
            self._close(conn)
        elif events != conn.events:
            conn.events = events
            self._selector.modify(conn.sock, events, conn)

    def _expire_connections(self) -> None:
        """Close the connections whose deadline has passed, and note the earliest deadline left for select."""
        now = time.monotonic()
        next_deadline = math.inf
        for conn in list(self._connections.values()):
            deadline = self._deadline(conn)
            if deadline <= now:
                self._expire(conn, now)
            else:
                next_deadline = min(next_deadline, deadline)
        self._next_deadline = next_deadline

    def _deadline(self, conn: _Connection) -> float:
        """When `conn` is closed unless it makes progress: the earliest of its frame, AUTH and idle clocks."""
        if conn.partial_since is not None:  # a frame under way is timed by frame_timeout, not by the idle clock
            deadline = conn.partial_since + self.frame_timeout
        elif self.idle_timeout is not None:
            deadline = (conn.accepted if conn.last_frame is None else conn.last_frame) + self.idle_timeout
        else:
            deadline = math.inf
        if not conn.authed:
            deadline = min(deadline, conn.accepted + self.auth_timeout)
        return deadline

    def _expire(self, conn: _Connection, now: float) -> None:
        """Close `conn`, whose deadline has passed, saying which clock ran out."""
        if not conn.authed and now >= conn.accepted + self.auth_timeout:
            self._dismiss(conn, ErrorCode.TIMED_OUT, f"no AUTH within {self.auth_timeout:g} s of connecting: this "
                                                     "server needs a token; send AUTH with it as the first frame "
                                                     "(Client(..., token=SECRET))")
        elif conn.partial_since is not None:
            log.info("closing %s: a frame stayed incomplete for %.1f s", conn.peer, self.frame_timeout)
            self._close(conn)
        else:
            self._dismiss(conn, ErrorCode.TIMED_OUT, f"no request for {self.idle_timeout:g} s, so the server closed "
                                                     "this idle connection to free its slot; reconnect when you "
                                                     "next need it (serve.Client does so by itself)")

    def _dismiss(self, conn: _Connection, code: ErrorCode, message: str) -> None:
        """Close `conn` now, with an ERROR (request id 0) that says why; nothing waits for the peer to read it."""
        log.info("closing %s: %s", conn.peer, message)
        farewell = conn.out if conn.closing else conn.out + error_frame(0, code, message)  # closing: ERROR queued
        self._close(conn, farewell)

    def _close(self, conn: _Connection, farewell: bytes | bytearray = b"") -> None:
        if self._connections.pop(id(conn), None) is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        _send_and_close(conn.sock, farewell)


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def _send_and_close(sock: socket.socket, farewell: bytes | bytearray) -> None:
    """Close `sock` after sending what of `farewell` its buffer takes now: the connection goes either way."""
    if farewell:
        try:
            sock.send(farewell)
        except OSError:
            pass  # best effort: the peer may be gone already
    sock.close()


# --- the command line: `python -m serve.server MODEL`, and `diffagent serve MODEL` -------------------------
def main(argv: Sequence[str] | None = None, prog: str = "python -m serve.server") -> int:
    """Serve an exported policy over TCP until interrupted; returns the exit status.

    serve's own command line, with neither torch nor click: `diffagent serve` hands its arguments here.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve an exported policy (artifact directory, .onnx file or Hub id org/name) over "
        "TCP. Clients speak the binary protocol of serve/PROTOCOL.md; from Python: serve.Client(host, port).")
    parser.add_argument("model")
    parser.add_argument("--host", default=DEFAULT_HOST, help="Address to bind. Anything but loopback needs "
                        "--allow-remote and --token. [default: %(default)s]")
    parser.add_argument("--port", default=DEFAULT_PORT, type=int, help="TCP port (0 picks a free one). "
                        "[default: %(default)s]")
    parser.add_argument("--allow-remote", action="store_true", help="Allow a non-loopback --host (requires --token).")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"Shared secret clients must send first [env: {TOKEN_ENV}]. It travels in clear: use an "
                             "SSH tunnel or a VPN on untrusted networks.")
    parser.add_argument("--provider", default=None, help="onnxruntime provider: cpu or cuda [default: cuda if "
                        "available].")
    parser.add_argument("--threads", default=1, type=int, help="onnxruntime intra-op threads (1 is fastest at batch "
                        "1; 0 = all cores). [default: %(default)s]")
    parser.add_argument("--spin", action="store_true", help="Let onnxruntime threads busy-wait between calls "
                        "(threads > 1 only).")
    parser.add_argument("--seed", default=None, type=int, help="Seed of the server's noise generator.")
    parser.add_argument("--max-batch", default=DEFAULT_MAX_BATCH, type=int, help="Most observation rows per request "
                        "and per graph call. [default: %(default)s]")
    parser.add_argument("--no-batching", action="store_true", help="Run each request alone instead of batching "
                        "concurrent ones.")
    parser.add_argument("--max-payload", default=DEFAULT_MAX_PAYLOAD, type=int, help="Largest accepted frame payload "
                        "in bytes. [default: %(default)s]")
    parser.add_argument("--max-connections", default=DEFAULT_MAX_CONNECTIONS, type=int,
                        help="Most connections held at once. A newcomer beyond this displaces a connection that has "
                             "not authenticated (without --token: sent no request) or is refused with a BUSY error. "
                             "[default: %(default)s]")
    parser.add_argument("--auth-timeout", default=DEFAULT_AUTH_TIMEOUT, type=float, help="Seconds a connection has "
                        "to complete AUTH (with --token) before it is closed. [default: %(default)s]")
    parser.add_argument("--idle-timeout", default=DEFAULT_IDLE_TIMEOUT, type=float, help="Seconds a connection may "
                        "send nothing before it is closed (0: no limit). [default: %(default)s]")
    parser.add_argument("--verbose", "-v", action="store_true", help="Log connections and errors to stderr.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        check_bind(args.host, args.allow_remote, args.token)
        check_timeouts(args.auth_timeout, args.idle_timeout)  # before a possibly slow model load
        policy = load_policy(args.model, provider=args.provider, threads=args.threads, seed=args.seed, spin=args.spin)
        server = PolicyServer(policy, args.host, args.port, token=args.token, allow_remote=args.allow_remote,
                              max_batch=args.max_batch, batching=not args.no_batching, max_payload=args.max_payload,
                              max_connections=args.max_connections, auth_timeout=args.auth_timeout,
                              idle_timeout=args.idle_timeout)
    except (ModelLoadError, ValueError) as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"Error: cannot listen on {args.host}:{args.port} ({err}); pick another --port (0 picks a free one)",
              file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
    bound_host, bound_port = server.address
    # serve.demo and the benchmark read this first stdout line to find the port: keep its format.
    print(f"serving {policy.metadata.algo} on {policy.metadata.env_id} ({policy.provider}, threads={args.threads}) "
          f"at {bound_host}:{bound_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
