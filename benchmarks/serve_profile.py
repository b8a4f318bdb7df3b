"""Where a `serve` round trip's time goes: CPU time per batch-1 request in the client, the server and the chain.

    python benchmarks/serve_profile.py                       # exports Agent("diffsac", "Hopper-v4") first
    python benchmarks/serve_profile.py --model runs/hopper --baseline /tmp/before

Latency percentiles (benchmarks/serve_latency.py) say how long a round trip takes; this says whose
CPU it takes. CPU time moves less with the machine's load than wall time, but it moves: a process
woken on a core where other work ran finds its caches cold and pays for that in CPU time too.
Servers, each in its own process:

- floor:    a bare Python TCP server that answers each ACT frame with a fixed ACT_REPLY: the
            transport (Python, syscalls, loopback TCP) with nothing of serve's.
- noop:     serve's server with the chain replaced by zeros (benchmarks/serve_latency.py's no-op).
- serve:    `python -m serve.server MODEL`.

The client is `serve.Client` in this process. The servers take turns in blocks of `--block`
requests, and for each block the client's own CPU time (its thread's: waiting for a reply costs
none) and the server process's (its threads' times in /proc/PID/task/*/schedstat: Linux only) are
divided by the requests. In this process, with no transport, the chain is run the way the server
runs it (`OnnxPolicy.run`: an IOBinding at batch 1) and with `session.run`, the way it was run
before. serve's server CPU minus noop's, against the chain alone, is what the chain costs more in
a live server than in a tight loop: between two requests the TCP stack, the client and the
machine's other work evict its code and weights from the caches. `--baseline CHECKOUT` adds noop
and serve as another checkout builds them (their servers; the client is this checkout's). Medians
over the blocks; results go to benchmarks/results/serve_profile.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `serve` from this checkout

from common import markdown_table, write_results  # noqa: E402
from serve_latency import ROOT_ENV  # noqa: E402

import serve  # noqa: E402
from serve.demo import launch_server, stop_server  # noqa: E402
from serve.protocol import HEADER, MAGIC, VERSION, DType, MsgType  # noqa: E402

LATENCY_SCRIPT = str(Path(__file__).with_name("serve_latency.py"))


def run_floor_server(act_dim: int) -> None:
    """Answer every frame with an ACT_REPLY of zeros carrying its request id; assumes whole frames per recv."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"serving floor at 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = bytearray(HEADER.pack(MAGIC, VERSION, MsgType.ACT_REPLY, DType.FLOAT32, 0, 0, 1, act_dim, 4 * act_dim)
                      + bytes(4 * act_dim))
    while data := conn.recv(1 << 16):
        reply[8:12] = data[8:12]  # the request id, at the same offset in both headers
        conn.sendall(reply)


def process_cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`'s threads so far: the first field of each one's schedstat, in nanoseconds."""
    return sum(int(stat.read_text().split()[0]) for stat in Path(f"/proc/{pid}/task").glob("*/schedstat")) * 1e-9


def profile_servers(clients: dict[str, tuple[subprocess.Popen, serve.Client]], obs: np.ndarray, blocks: int,
                    block: int) -> dict[str, dict[str, list[float]]]:
    """Per block and server: wall p50, client CPU and server CPU per request, in microseconds."""
    out = {name: {"wall_p50_us": [], "client_cpu_us": [], "server_cpu_us": []} for name in clients}
    names = list(clients)
    for round_index in range(blocks):
        first = round_index % len(names)
        for name in names[first:] + names[:first]:
            proc, client = clients[name]
            walls = np.empty(block)
            server_start, client_start = process_cpu_seconds(proc.pid), time.thread_time()
            for i in range(block):
                start = time.perf_counter()
                client.act(obs)
                walls[i] = time.perf_counter() - start
            client_cpu = time.thread_time() - client_start
            server_cpu = process_cpu_seconds(proc.pid) - server_start
            out[name]["wall_p50_us"].append(float(np.median(walls)) * 1e6)
            out[name]["client_cpu_us"].append(client_cpu / block * 1e6)
            out[name]["server_cpu_us"].append(server_cpu / block * 1e6)
    return out


def profile_chain(policy: serve.OnnxPolicy, obs: np.ndarray, blocks: int, block: int) -> dict[str, list[float]]:
    """CPU time of one batch-1 chain call, as the server makes it and as it did with session.run."""
    session = policy.single if policy.single is not None else policy.session
    calls: dict[str, Callable[[], object]] = {
        "chain: OnnxPolicy.run (IOBinding)": lambda: policy.run(obs[None], policy.draw_noise(1)),
        "chain: session.run": lambda: session.run(["action"], {"obs": obs[None], "noise": policy.draw_noise(1)}),
    }
    out: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            start = time.thread_time()
            for _ in range(block):
                call()
            out[name].append((time.thread_time() - start) / block * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="artifact dir or .onnx [default: export Agent('diffsac', 'Hopper-v4')]")
    parser.add_argument("--blocks", type=int, default=40, help="blocks per server")
    parser.add_argument("--block", type=int, default=250, help="requests per block")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="also profile noop and serve as another checkout "
                        "builds them (e.g. `git worktree add /tmp/before HEAD~3`)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_profile.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        model = args.model
        if model is None:  # exported in a child process, as benchmarks/serve_latency.py does
            model = str(Path(tmp) / "diffsac-Hopper-v4")
            subprocess.run([sys.executable, LATENCY_SCRIPT, "_export", model], check=True)
        policy = serve.load_policy(model, threads=1)
        obs = np.random.default_rng(0).standard_normal(policy.obs_dim).astype(np.float32)
        commands = {"floor": ([sys.executable, __file__, "_floor", str(policy.act_dim)], None),
                    "noop": ([sys.executable, LATENCY_SCRIPT, "_noop", model, "1"], None),
                    "serve": ([sys.executable, "-m", "serve.server", model, "--port", "0"], None)}
        if args.baseline:
            checkout = str(Path(args.baseline).resolve())
            commands["noop (baseline)"] = (commands["noop"][0], checkout)
            commands["serve (baseline)"] = (commands["serve"][0], checkout)
        clients = {}
        for name, (command, checkout) in commands.items():
            env = None if checkout is None else {**os.environ, ROOT_ENV: checkout}
            proc, host, port = launch_server(command, cwd=checkout, env=env)
            servers.callback(stop_server, proc)
            clients[name] = (proc, servers.enter_context(serve.Client(host, port, timeout=10)))
        for _, client in clients.values():  # warm-up
            for _ in range(500):
                client.act(obs)
        per_block = profile_servers(clients, obs, args.blocks, args.block)
        chain = profile_chain(policy, obs, args.blocks, args.block)

    rows = [{"server": name, **{key: float(np.median(values)) for key, values in measured.items()}}
            for name, measured in per_block.items()]
    chain_rows = [{"call": name, "cpu_us": float(np.median(values))} for name, values in chain.items()]
    by_name = {row["server"]: row for row in rows}
    chain_cpu = chain_rows[0]["cpu_us"]
    derived = {
        "serve server CPU - noop server CPU, us": by_name["serve"]["server_cpu_us"] - by_name["noop"]["server_cpu_us"],
        "chain alone (OnnxPolicy.run), us": chain_cpu,
        "chain beside the transport, extra, us": (by_name["serve"]["server_cpu_us"] - by_name["noop"]["server_cpu_us"]
                                                  - chain_cpu),
        "noop server CPU - floor server CPU, us": by_name["noop"]["server_cpu_us"] - by_name["floor"]["server_cpu_us"],
        "session.run - OnnxPolicy.run, us": chain_rows[1]["cpu_us"] - chain_cpu,
    }
    load_after = os.getloadavg()
    print(markdown_table(rows, ["server", "wall_p50_us", "client_cpu_us", "server_cpu_us"]))
    print()
    print(markdown_table(chain_rows, ["call", "cpu_us"]))
    print()
    for key, value in derived.items():
        print(f"{key}: {value:.1f}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    write_results(args.out, {"settings": {"blocks": args.blocks, "block": args.block, "batch": 1, "threads": 1,
                                          "noise": "drawn by the server", "baseline": args.baseline},
                             "load_average_before_after": [load_before[0], load_after[0]],
                             "rows": rows, "chain": chain_rows, "derived": derived})


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        run_floor_server(int(sys.argv[2]))
    else:
        main()
