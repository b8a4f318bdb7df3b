"""Action latency through `diffagent serve`, beside a no-op server and a hand-written FastAPI/JSON server.

    python benchmarks/serve_latency.py                       # exports Agent("diffsac", "Hopper-v4") first
    python benchmarks/serve_latency.py --model runs/hopper --requests 10000 --rate 500

What is measured, with the client in this process and each server in its own process:

- inproc:   onnxruntime in this process (`OnnxPolicy.run`), no transport: the floor of the K = 8 chain.
- serve:    `python -m serve.server MODEL` over its binary TCP protocol (`serve.Client`).
- noop:     the same server and transport with the graph call replaced by returning zeros.
- fastapi:  FastAPI + uvicorn, JSON over HTTP/1.1 keep-alive, the same model in onnxruntime with the
            same session options: what a user would write by hand, with `pip install fastapi
            "uvicorn[standard]"` (uvicorn then runs on uvloop and httptools, its fastest stack).

Every server runs from the start, and each mode takes its requests in blocks of `--block` that the
servers take in turn (the first of each round rotating), so a change in a shared machine's load
falls on all of them alike: the ratios are side by side. Each gets `--warmup` requests, then
`--requests` at batch 1 in a closed loop (send, wait, repeat) and `--requests` at a fixed rate
(`--rate` Hz, the way a controller calls), then `--batch-requests` at batch 1024. A last section
runs `--clients` client processes at once against the server with request batching on and off.
The chain noise is drawn by the server (stochastic actions). `--baseline CHECKOUT` adds serve and
noop as another checkout builds them (its server and its client), taking their turns in the same
rounds: a before/after comparison in one run.

The goals of issue 18 (item 5) are checked on the closed loop at batch 1 and printed as met or
not: serve's p50 within 1.5x of the no-op server's, and FastAPI's p50 at least 4x serve's. The
no-op server does not run the chain, so serve cannot beat noop + inproc: the first goal can only be
met where the chain costs at most half the transport; the overhead beyond both floors is printed too.
Results (p50/p90/p99/max in microseconds) go to benchmarks/results/serve_latency.json with the
command, versions, CPU, date and load average.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

# `serve` from this checkout, or, in the child processes of --baseline, from the baseline's checkout.
ROOT_ENV = "SERVE_LATENCY_ROOT"
ROOT_CHECKOUT = os.environ.get(ROOT_ENV) or str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT_CHECKOUT)

from common import markdown_table, write_results  # noqa: E402

import serve  # noqa: E402
from serve.demo import launch_server, start_server, stop_server  # noqa: E402

BATCH_LARGE = 1024
_READY_TIMEOUT = 60.0
# Issue 18, item 5, at batch 1 in the closed loop: serve p50 <= 1.5 x noop p50, FastAPI p50 >= 4 x serve p50.
GOAL_SERVE_OVER_NOOP = 1.5
GOAL_FASTAPI_OVER_SERVE = 4.0


# --- servers (each runs in its own process: `python serve_latency.py _noop|_fastapi ...`) --------------
def run_noop_server(model: str, threads: int) -> None:
    """The serve transport and checks with the model call replaced by zeros: the cost of everything but the chain."""
    from serve.runtime import OnnxPolicy
    from serve.server import PolicyServer

    class NoopPolicy(OnnxPolicy):
        def run(self, obs: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
            return np.zeros((obs.shape[0], self.act_dim), np.float32)

    loaded = serve.load_policy(model, threads=threads)
    server = PolicyServer(NoopPolicy(loaded.session, loaded.metadata, source=loaded.source), port=0)
    host, port = server.address
    print(f"serving noop on {loaded.metadata.env_id} at {host}:{port}", flush=True)
    server.serve_forever()


def run_fastapi_server(model: str, threads: int, port: int) -> None:
    """What a user would write by hand: FastAPI, pydantic, JSON lists, onnxruntime (same session options as serve)."""
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    from serve.runtime import resolve_model, session_options

    session = ort.InferenceSession(str(resolve_model(model)), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    noise_tail = (int(props["num_steps"]) + 1, int(props["act_dim"]))
    rng = np.random.default_rng()
    app = FastAPI()

    class ActRequest(BaseModel):
        obs: list[list[float]]
        deterministic: bool = False

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    async def act(request: ActRequest) -> dict:  # async: no thread-pool hop, the faster choice for one client
        obs = np.asarray(request.obs, np.float32)
        shape = (obs.shape[0], *noise_tail)
        noise = np.zeros(shape, np.float32) if request.deterministic else rng.standard_normal(shape, np.float32)
        return {"action": session.run(["action"], {"obs": obs, "noise": noise})[0].tolist()}

    # This module's `from __future__ import annotations` leaves "ActRequest" a string FastAPI cannot
    # resolve for a class local to this function; hand it the class itself before registering.
    act.__annotations__["request"] = ActRequest
    app.post("/act")(act)

    # Keep-alive as long as serve's idle timeout (60 s; uvicorn's default is 5 s): while the other servers
    # take their turns, this connection waits for seconds, and a reconnect would count against FastAPI.
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=60)


def start_fastapi(model: str, threads: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:  # a free port for uvicorn, which cannot report the one it picked
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "_fastapi", model, str(threads), str(port)])
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError('the FastAPI server did not start; is `pip install fastapi "uvicorn[standard]"` done?')


class JsonClient:
    """A keep-alive HTTP/1.1 client (stdlib, the lightest a user would reach for)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        body = json.dumps({"obs": obs.tolist()})
        self.conn.request("POST", "/act", body, {"Content-Type": "application/json"})
        return np.asarray(json.loads(self.conn.getresponse().read())["action"], np.float32)

    def close(self) -> None:
        self.conn.close()


# --- measurement ------------------------------------------------------------------------------------
def summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    us = np.asarray(seconds) * 1e6
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {"n": int(us.size), "p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99),
            "max_us": float(us.max()), "mean_us": float(us.mean())}


def closed_loop(call: Callable[[], object], n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def fixed_rate(call: Callable[[], object], n: int, rate: float) -> list[float]:
    """One request every 1/rate s (sleeping in between, as a control loop does); late ticks go at once."""
    period, times = 1.0 / rate, []
    next_tick = time.perf_counter()
    for _ in range(n):
        next_tick += period
        start = time.perf_counter()
        call()
        end = time.perf_counter()
        times.append(end - start)
        if next_tick > end:
            time.sleep(next_tick - end)
    return times


def interleaved(timers: dict[str, Callable[[int], list[float]]], n: int, block: int) -> dict[str, list[float]]:
    """`n` timings of each server, in blocks of `block` that the servers take in turn, the first of each round rotating.

    `timers[name](count)` times `count` requests to one server. Every server sees the machine's load of
    the same minutes, so their ratios are side by side.
    """
    names, times = list(timers), {name: [] for name in timers}
    for round_index in range(math.ceil(n / block)):
        first = round_index % len(names)
        for name in names[first:] + names[:first]:
            times[name] += timers[name](min(block, n - len(times[name])))
    return times


def request_inputs(obs_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(one observation, a batch of BATCH_LARGE), the same in every process that measures."""
    rng = np.random.default_rng(0)
    return (rng.standard_normal(obs_dim).astype(np.float32),
            rng.standard_normal((BATCH_LARGE, obs_dim)).astype(np.float32))


def timer(act: Callable[[np.ndarray], object], mode: str, batch: int, obs_dim: int,
          takes_batch: bool = False) -> Callable[[int], list[float]]:
    """Times `count` requests of `act` at `batch` rows in `mode` ("closed loop" or "<rate> Hz").

    A controller sends one observation; `takes_batch` marks the callers that need a batch of one
    (the JSON client, OnnxPolicy.run).
    """
    one, big = request_inputs(obs_dim)
    call = functools.partial(act, big if batch == BATCH_LARGE else one[None] if takes_batch else one)
    if mode == "closed loop":
        return functools.partial(closed_loop, call)
    rate = float(mode.removesuffix(" Hz"))
    return lambda count: fixed_rate(call, count, rate)


def measure(acts: dict[str, Callable[[np.ndarray], object]], obs_dim: int, args: argparse.Namespace,
            baseline: Baseline | None = None) -> list[dict]:
    """Every mode for every server (and the baseline's), side by side (see `interleaved`); rows by server."""
    modes = [("closed loop", 1, args.requests, args.block), (f"{args.rate:g} Hz", 1, args.requests, args.block)]
    if args.batch_requests:
        modes.append(("closed loop", BATCH_LARGE, args.batch_requests, max(1, args.block // 25)))
    rows = []
    for mode, batch, n, block in modes:
        timers = {name: timer(act, mode, batch, obs_dim, takes_batch=name in ("fastapi", "inproc"))
                  for name, act in acts.items()}
        if baseline is not None:
            timers.update(baseline.timers(mode, batch))
        if mode == "closed loop":  # warm up before each batch size's first mode
            for time_requests in timers.values():
                time_requests(args.warmup if batch == 1 else 5)
        times = interleaved(timers, n, block)
        rows += [{"server": name, "mode": mode, "batch": batch, **summary(times[name])} for name in timers]
        print(f"  {mode}, batch {batch} done", flush=True)
    order = list(dict.fromkeys(row["server"] for row in rows))
    return sorted(rows, key=lambda row: order.index(row["server"]))


class Baseline:
    """`serve` and `noop` as another checkout builds them (its server and its client), measured beside this one's.

    A child process runs this script from that checkout's `serve`, starts both servers and times the
    blocks of requests this process asks for, so the baseline takes its turns in the same rounds.
    """

    SERVERS = ("serve", "noop")

    def __init__(self, checkout: str, model: str, threads: int, obs_dim: int):
        checkout = str(Path(checkout).resolve())
        self.proc = subprocess.Popen([sys.executable, __file__, "_baseline", model, str(threads), str(obs_dim)],
                                     cwd=checkout, env={**os.environ, ROOT_ENV: checkout}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"the baseline at {checkout} did not start; its error is above")

    def timers(self, mode: str, batch: int) -> dict[str, Callable[[int], list[float]]]:
        return {f"{name} (baseline)": functools.partial(self._time, name, mode, batch) for name in self.SERVERS}

    def _time(self, name: str, mode: str, batch: int, count: int) -> list[float]:
        self.proc.stdin.write(json.dumps([name, mode, batch, count]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()  # the child stops its servers and exits at the end of its input
        self.proc.wait(30)


def run_baseline(model: str, threads: int, obs_dim: int) -> None:
    """The child of `Baseline`: time the blocks of requests asked for on stdin, one JSON line of times each."""
    with contextlib.ExitStack() as servers:
        acts = {"serve": _client(servers, *start_server(model, ["--threads", str(threads)])),
                "noop": _client(servers, *_start_noop(model, threads))}
        print("ready", flush=True)
        for line in sys.stdin:
            name, mode, batch, count = json.loads(line)
            print(json.dumps(timer(acts[name], mode, batch, obs_dim)(count)), flush=True)


def load_client(host: str, port: int, n: int, obs_dim: int) -> None:
    """One of several concurrent clients (run as its own process); prints its latencies as JSON."""
    obs = np.random.default_rng(os.getpid()).standard_normal(obs_dim).astype(np.float32)
    with serve.Client(host, int(port), timeout=10) as client:
        closed_loop(lambda: client.act(obs), 200)
        start = time.perf_counter()
        times = closed_loop(lambda: client.act(obs), n)
        print(json.dumps({"times": times, "wall": time.perf_counter() - start}))


def concurrency(model: str, obs_dim: int, args: argparse.Namespace) -> list[dict]:
    rows = []
    for batching in (True, False):
        flags = ["--threads", str(args.threads)] + ([] if batching else ["--no-batching"])
        proc, host, port = start_server(model, flags)
        try:
            clients = [subprocess.Popen([sys.executable, __file__, "_load", host, str(port), str(args.load_requests),
                                         str(obs_dim)], stdout=subprocess.PIPE, text=True)
                       for _ in range(args.clients)]
            results = [json.loads(c.communicate(timeout=600)[0]) for c in clients]
        finally:
            stop_server(proc)
        times = [t for r in results for t in r["times"]]
        throughput = sum(len(r["times"]) for r in results) / max(r["wall"] for r in results)
        rows.append({"server": "serve" + ("" if batching else " --no-batching"), "mode": f"{args.clients} clients",
                     "batch": 1, "requests_per_s": throughput, **summary(times)})
        print(f"  {rows[-1]['server']}: {args.clients} clients, p50 {rows[-1]['p50_us']:.0f} us", flush=True)
    return rows


def export_default_model(directory: Path) -> None:
    """The benchmark's model: an untrained default DiffSAC (K = 8) on Hopper-v4, exported to ONNX."""
    import warnings

    warnings.filterwarnings("ignore")
    from diffagent import Agent
    from diffagent.export import export_onnx

    agent = Agent("diffsac", "Hopper-v4")
    agent.save_pretrained(directory)
    export_onnx(agent, directory / "policy.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="artifact dir or .onnx [default: export Agent('diffsac', 'Hopper-v4')]")
    parser.add_argument("--requests", type=int, default=10_000, help="measured requests per mode (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--block", type=int, default=250, help="requests per server before the next takes its turn")
    parser.add_argument("--rate", type=float, default=500.0, help="fixed-rate mode, requests per second")
    parser.add_argument("--batch-requests", type=int, default=200, help=f"requests at batch {BATCH_LARGE} (0: skip)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes (0: skip)")
    parser.add_argument("--load-requests", type=int, default=2_000, help="requests per concurrent client")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, every server")
    parser.add_argument("--skip-fastapi", action="store_true")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="also measure serve and noop as built by another "
                        "checkout of this repository (e.g. `git worktree add /tmp/before HEAD~3`), side by side")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_latency.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:  # exported in a child process, so this client process never imports torch
            model = str(Path(tmp) / "diffsac-Hopper-v4")
            subprocess.run([sys.executable, __file__, "_export", model], check=True)
        policy = serve.load_policy(model, threads=args.threads)
        meta = policy.metadata
        print(f"{meta.algo} on {meta.env_id}: K={meta.num_steps}, obs_dim={meta.obs_dim}, act_dim={meta.act_dim}; "
              f"{args.requests} requests per mode after {args.warmup} warm-up")
        with contextlib.ExitStack() as servers:  # all running at once: measured side by side
            acts = {"inproc": lambda obs: policy.run(obs, policy.draw_noise(obs.shape[0])),
                    "serve": _client(servers, *start_server(model, ["--threads", str(args.threads)])),
                    "noop": _client(servers, *_start_noop(model, args.threads))}
            if not args.skip_fastapi:
                proc, port = start_fastapi(model, args.threads)
                servers.callback(stop_server, proc)
                acts["fastapi"] = servers.enter_context(contextlib.closing(JsonClient(port))).act
            baseline = None
            if args.baseline:
                baseline = servers.enter_context(contextlib.closing(Baseline(args.baseline, model, args.threads,
                                                                             meta.obs_dim)))
            rows = measure(acts, meta.obs_dim, args, baseline)

        if args.clients:
            rows += concurrency(model, meta.obs_dim, args)

    load_after = os.getloadavg()
    print()
    print(markdown_table(rows, ["server", "mode", "batch", "n", "p50_us", "p90_us", "p99_us", "max_us"]))
    ratios = _ratios(rows)
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    goals = _goals(rows)
    for key, goal in goals.items():
        print(f"goal (issue 18, item 5): {key} {goal['target']}: {goal['value']:.2f}, "
              f"{'met' if goal['met'] else 'NOT met'}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores: "
          "absolute numbers move with the machine's load; the servers took turns, so the ratios are side by side.")
    write_results(args.out, {
        "model": {"algo": meta.algo, "env_id": meta.env_id, "num_steps": meta.num_steps, "obs_dim": meta.obs_dim,
                  "act_dim": meta.act_dim, "source": args.model or "untrained Agent('diffsac', 'Hopper-v4')"},
        "settings": {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1, "spinning": False,
                     "execution_mode": "sequential", "graph_optimization": "all", "pinning": "none",
                     "requests": args.requests, "warmup": args.warmup, "rate_hz": args.rate,
                     "order": f"interleaved: blocks of {args.block} requests (batch 1) taken by each server in turn",
                     "noise": "drawn by the server (stochastic actions)",
                     "fastapi": "async endpoint; uvicorn on uvloop and httptools when installed (fastapi_versions); "
                                "http.client keep-alive client"},
        "serve_commits": {"measured": _commit(ROOT_CHECKOUT), "baseline": args.baseline and _commit(args.baseline)},
        "fastapi_versions": _versions("fastapi", "uvicorn", "pydantic", "uvloop", "httptools"),
        "load_average_before_after": [load_before[0], load_after[0]],
        "note": "absolute times move with the machine's load; the servers took turns, so ratios are side by side",
        "rows": rows, "ratios": ratios, "goals": goals})


def _client(servers: contextlib.ExitStack, proc: subprocess.Popen, host: str, port: int) -> Callable:
    """`serve.Client.act` on a server that `servers` stops on exit (after closing the client)."""
    servers.callback(stop_server, proc)
    return servers.enter_context(serve.Client(host, port, timeout=10)).act


def _start_noop(model: str, threads: int) -> tuple[subprocess.Popen, str, int]:
    return launch_server([sys.executable, __file__, "_noop", model, str(threads)])


def _commit(checkout: str) -> str | None:
    """The commit of `checkout`, marked when its serve/ has uncommitted changes (None outside git)."""
    try:
        commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--", "serve"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + (" with uncommitted changes in serve/" if changed else "")


def _versions(*packages: str) -> dict[str, str | None]:
    """Installed versions (None: not installed; uvicorn without uvloop/httptools uses asyncio and h11)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return versions


def _ratios(rows: list[dict]) -> dict[str, float]:
    """Side-by-side ratios of p50s at batch 1, per mode; serve's floor is noop (the transport) + inproc (the chain)."""
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in rows if r["batch"] == 1):
        p50 = {r["server"]: r["p50_us"] for r in rows if r["mode"] == mode and r["batch"] == 1}
        if "serve" not in p50:
            continue
        if "fastapi" in p50:
            out[f"fastapi p50 / serve p50 ({mode}, batch 1)"] = p50["fastapi"] / p50["serve"]
        for name in ("serve", "noop"):
            if f"{name} (baseline)" in p50:
                out[f"{name} (baseline) p50 / {name} p50 ({mode}, batch 1)"] = p50[f"{name} (baseline)"] / p50[name]
        if "noop" in p50:
            out[f"serve p50 / noop p50 ({mode}, batch 1)"] = p50["serve"] / p50["noop"]
        if "noop" in p50 and "inproc" in p50:
            floor = p50["noop"] + p50["inproc"]
            out[f"serve p50 / (noop p50 + inproc p50) ({mode}, batch 1)"] = p50["serve"] / floor
            out[f"serve p50 - noop p50 - inproc p50 ({mode}, batch 1), us"] = p50["serve"] - floor
            out[f"inproc p50 / noop p50 ({mode}, batch 1): serve / noop <= 1.5 needs <= 0.5"] = \
                p50["inproc"] / p50["noop"]
    return out


def _goals(rows: list[dict]) -> dict[str, dict]:
    """Issue 18's item 5, on the closed loop at batch 1: each goal's value, target and whether it is met."""
    p50 = {r["server"]: r["p50_us"] for r in rows if r["mode"] == "closed loop" and r["batch"] == 1}
    goals = {}
    if "serve" in p50 and "noop" in p50:
        value = p50["serve"] / p50["noop"]
        goals["serve p50 / noop p50 (closed loop, batch 1)"] = {
            "value": value, "target": f"<= {GOAL_SERVE_OVER_NOOP:g}", "met": value <= GOAL_SERVE_OVER_NOOP}
    if "serve" in p50 and "fastapi" in p50:
        value = p50["fastapi"] / p50["serve"]
        goals["fastapi p50 / serve p50 (closed loop, batch 1)"] = {
            "value": value, "target": f">= {GOAL_FASTAPI_OVER_SERVE:g}", "met": value >= GOAL_FASTAPI_OVER_SERVE}
    return goals


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):  # the child processes this script starts
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "_export":
            export_default_model(Path(rest[0]))
        elif role == "_noop":
            run_noop_server(rest[0], int(rest[1]))
        elif role == "_fastapi":
            run_fastapi_server(rest[0], int(rest[1]), int(rest[2]))
        elif role == "_baseline":
            run_baseline(rest[0], int(rest[1]), int(rest[2]))
        elif role == "_load":
            load_client(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            raise SystemExit(f"unknown role {role}")
    else:
        main()
