"""Closed-loop demo: a Gymnasium environment driven by a policy server in another process.

    python -m serve.demo runs/pendulum --env Pendulum-v1 --episodes 3
    python -m serve.demo --connect 127.0.0.1:8870 --episodes 3        # a server that is already running

Starts `python -m serve.server MODEL --port 0` (unless --connect is given), steps the environment
with actions fetched over the wire, and prints each episode's return and the round-trip latency
percentiles of the ACT requests. Needs gymnasium (and mujoco for MuJoCo tasks), not torch.
"""

from __future__ import annotations

import argparse
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

from serve.client import Client

_START_TIMEOUT = 60.0


def start_server(model: str, extra_args: Sequence[str] = ()) -> tuple[subprocess.Popen, str, int]:
    """Run `python -m serve.server MODEL --port 0` and return (process, host, port) once it listens.

    The server's stderr is this process's, so its errors show where the user looks.
    """
    return launch_server([sys.executable, "-m", "serve.server", model, "--port", "0", *extra_args])


def launch_server(command: Sequence[str], cwd: str | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen, str, int]:
    """Run a server whose first line of output is `serving ... at HOST:PORT`; (process, host, port) once it
    listens, or SystemExit if it exits or stays silent for a minute."""
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, text=True, cwd=cwd,
                            env=None if env is None else dict(env))
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    ready = selector.select(_START_TIMEOUT)
    selector.close()
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("serving "):
        exited = proc.poll() is not None
        stop_server(proc)
        what = " ".join(command)
        raise SystemExit(f"the server ({what}) exited; its error is above" if exited else
                         f"the server ({what}) did not start within {_START_TIMEOUT:.0f} s")
    host, port = line.rsplit(" at ", 1)[1].strip().rsplit(":", 1)
    return proc, host, int(port)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_episodes(client: Client, env_id: str, episodes: int, seed: int, deterministic: bool,
                 max_steps: int | None) -> tuple[list[float], np.ndarray]:
    """Episode returns and the per-request round-trip latencies in seconds."""
    import gymnasium as gym

    meta = client.metadata()
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    if (obs_dim, act_dim) != (meta["obs_dim"], meta["act_dim"]):
        raise SystemExit(f"{env_id} has obs_dim={obs_dim}, act_dim={act_dim} but the served policy "
                         f"({meta['algo']} on {meta['env_id']}) has {meta['obs_dim']}, {meta['act_dim']}; "
                         "pass the policy's own --env")
    returns, latencies = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, steps, done = 0.0, 0, False
            while not done and (max_steps is None or steps < max_steps):
                start = time.perf_counter()
                action = client.act(obs, deterministic=deterministic)
                latencies.append(time.perf_counter() - start)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
            print(f"episode {episode}: return {total:.2f} over {steps} steps")
    finally:
        env.close()
    return returns, np.asarray(latencies)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="artifact directory, .onnx file or Hub id (omit with --connect)")
    parser.add_argument("--env", help="Gymnasium id [default: the policy's own env_id]")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    parser.add_argument("--stochastic", action="store_true", help="sample the chain noise (default: deterministic)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per episode")
    parser.add_argument("--connect", metavar="HOST:PORT", help="use a running server instead of starting one")
    parser.add_argument("--token", default=None, help="the server's shared token, if it has one")
    args = parser.parse_args(argv)
    if not args.model and not args.connect:
        parser.error("give a MODEL to serve, or --connect HOST:PORT")

    proc = None
    if args.connect:
        host, port_text = args.connect.rsplit(":", 1)
        port = int(port_text)
    else:
        proc, host, port = start_server(args.model)
        print(f"started a server at {host}:{port} (pid {proc.pid})")
    try:
        with Client(host, port, token=args.token) as client:
            env_id = args.env or client.metadata()["env_id"]
            returns, latencies = run_episodes(client, env_id, args.episodes, args.seed, not args.stochastic,
                                              args.max_steps)
    finally:
        if proc is not None:
            stop_server(proc)
    us = np.percentile(latencies, [50, 90, 99]) * 1e6
    print(f"{env_id}: mean return {np.mean(returns):.2f} +/- {np.std(returns):.2f} over {len(returns)} episodes")
    print(f"round trip over {len(latencies)} requests: p50 {us[0]:.0f} us, p90 {us[1]:.0f} us, p99 {us[2]:.0f} us, "
          f"max {latencies.max() * 1e6:.0f} us")


if __name__ == "__main__":
    main()
