"""The GPU numbers of issue 18: the policy chain and one SAC / DiffSAC update on CUDA, eager and as a CUDA graph.

One prepared script for a lent GPU machine (CUDA torch, CPU-only onnxruntime), under ~8 minutes there:

1. The exported function `policy.forward(obs, noise)` of an untrained `Agent("diffsac", ENV)` policy
   (K = 8) and of `Agent("sac", ENV)`'s Gaussian, at batch 1 and 1024: latency of one call, eager and
   replayed as a CUDA graph (static input tensors, warmed up on a side stream before capture, as
   PyTorch's CUDA-graph docs require; each replay first copies the call's inputs into the static
   tensors, as a server would). p50 / p90 over `--calls`, each call ended by torch.cuda.synchronize.
   Goals, for the K = 8 chain: batch 1024 under 1 ms, batch 1 under 100 us.
2. One SAC and one DiffSAC update (`SAC.update`, batch 256), eager, p50 / p90 per update after a
   random warm-up fills the buffer. Not as a CUDA graph: capturing the update would need library
   changes, since `SAC.update` ends by reading its metrics with `.item()` (a host sync, illegal while
   capturing) and its Adam optimizers are built without `capturable=True`, so their step counts are
   not graph-safe. Graphing a rewritten copy of the update would time a different function.

Without CUDA it runs on the CPU, one torch thread, the CUDA-graph rows marked "no CUDA": a dry run, written
to gpu_check_cpu.json unless --out says otherwise. If MuJoCo is missing (the lent machine has only what is
carried to it), a stand-in env with Hopper's spaces (11 observations, 3 actions) is used: neither the
chain's nor the update's cost depends on the env's dynamics. The results say which env ran.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --quick   # a dry run in seconds
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time
import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)

CHAIN_GOALS_US = {1: 100.0, 1024: 1000.0}  # batch -> the goal for the K = 8 chain


class HopperShapedEnv(gym.Env):
    """Hopper-v4's spaces with random observations and zero reward: a stand-in where MuJoCo is missing."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (11,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.steps = 0
        return self.np_random.standard_normal(11), {}

    def step(self, action):
        self.steps += 1
        return self.np_random.standard_normal(11), 0.0, False, self.steps >= 1000, {}


def env_source(env_id: str) -> tuple[str | type[gym.Env], str]:
    """The env to build agents on and its name in the results: `env_id`, or the stand-in if it cannot be made."""
    try:
        gym.make(env_id).close()
        return env_id, env_id
    except (gym.error.DependencyNotInstalled, ImportError) as err:
        print(f"{env_id} cannot be made ({err}); using a stand-in env with Hopper's spaces", flush=True)
        return HopperShapedEnv, "stand-in with Hopper-v4's spaces (MuJoCo missing)"


def percentiles(run: Callable[[], object], calls: int, device: torch.device) -> tuple[float, float]:
    """p50 and p90 wall time of one call in microseconds, each call waited for on the device, after a warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(max(3, calls // 10)):
        run()
    sync()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    quantiles = statistics.quantiles(times, n=10)
    return statistics.median(times) * 1e6, quantiles[8] * 1e6


def cuda_graph(policy: torch.nn.Module, obs: torch.Tensor, noise: torch.Tensor) -> tuple[Callable[[], torch.Tensor], float]:
    """A call that copies (obs, noise) into the captured graph's static inputs and replays it, and the largest
    difference between its output and the eager function's."""
    static_obs, static_noise = obs.clone(), noise.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream: lazy initialisations happen outside the graph
        for _ in range(3):
            policy(static_obs, static_noise)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_action = policy(static_obs, static_noise)

    def replay() -> torch.Tensor:
        static_obs.copy_(obs)
        static_noise.copy_(noise)
        graph.replay()
        return static_action

    error = (replay() - policy(obs, noise)).abs().max().item()
    return replay, error


def chain_rows(agents: dict, batches: list[int], calls: int, device: torch.device) -> list[dict]:
    """Latency of the exported function of each agent's policy, eager and as a CUDA graph, per batch size."""
    rows = []
    for name, agent in agents.items():
        policy = agent.policy
        for batch in batches:
            obs = torch.randn(batch, policy.obs_dim, device=device)
            noise = torch.randn(policy.noise_shape(batch), device=device)
            goal = CHAIN_GOALS_US.get(batch) if name.startswith("diffsac") else None
            with torch.no_grad():
                eager = functools.partial(policy, obs, noise)
                paths: dict[str, tuple[Callable[[], object], float] | str] = {"eager": (eager, 0.0)}
                paths["CUDA graph"] = cuda_graph(policy, obs, noise) if device.type == "cuda" else "no CUDA"
                for path, timed in paths.items():
                    row = {"policy": name, "batch": batch, "path": path, "p50_us": "", "p90_us": "",
                           "max_abs_diff_to_eager": "", "goal_us": goal or "", "goal": ""}
                    if isinstance(timed, str):
                        row["goal"] = timed
                    else:
                        run, error = timed
                        row["p50_us"], row["p90_us"] = percentiles(run, calls, device)
                        row["max_abs_diff_to_eager"] = error
                        if goal:
                            row["goal"] = "met" if row["p50_us"] < goal else "not met"
                    rows.append(row)
                    p50 = f"{row['p50_us']:.0f} us" if row["p50_us"] else "-"
                    print(f"{name} batch {batch} {path}: p50 {p50} {row['goal']}", flush=True)
    return rows


def updating(sac, batches: list) -> Callable[[], None]:
    """One update per call, on the batches in turn."""
    batch = itertools.cycle(batches)
    return lambda: sac.update(next(batch))


def update_rows(agents: dict, updates: int, device: torch.device) -> list[dict]:
    """Milliseconds per eager update (batch 256) of each agent's algorithm, on batches sampled beforehand."""
    rows = []
    for name, agent in agents.items():
        sac = agent.algorithm
        batches = [sac.buffer.sample(sac.config.batch_size, sac.sampler) for _ in range(10)]
        p50, p90 = percentiles(updating(sac, batches), updates, device)
        rows.append({"algorithm": name, "batch": sac.config.batch_size, "path": "eager", "p50_ms": p50 / 1e3,
                     "p90_ms": p90 / 1e3, "updates_per_s": 1e6 / p50,
                     "CUDA graph": "not captured (see docstring)"})
        print(f"{name} update: p50 {p50 / 1e3:.3g} ms", flush=True)
    return rows


def main() -> None:
    from diffagent import Agent

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--k", type=int, default=8, help="denoising steps of DiffSAC")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls of the chain, per row")
    parser.add_argument("--updates", type=int, default=200, help="timed updates, per algorithm")
    parser.add_argument("--quick", action="store_true", help="a dry run in seconds: few calls and updates")
    parser.add_argument("--out", help="default: benchmarks/results/gpu_check.json on CUDA, gpu_check_cpu.json "
                                      "without")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.updates = 30, 5
    torch.set_num_threads(1)  # on the CPU, as the other benchmarks; on CUDA the host thread only launches kernels
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or f"benchmarks/results/gpu_check{'' if device.type == 'cuda' else '_cpu'}.json"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU dry run)"
    print(f"device: {device}, {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)

    env, env_name = env_source(args.env)
    agents = {}
    for algo in ("sac", "diffsac"):
        overrides = {"diffusion_steps": args.k} if algo == "diffsac" else {}
        # A smaller buffer than the default 1e6 rows: the update gathers 256 of them, at the same cost
        agent = Agent(algo, env, device=device, learning_starts=1000, buffer_size=100_000, **overrides)
        agents[f"diffsac K={args.k}" if algo == "diffsac" else "sac (Gaussian)"] = agent

    start = time.perf_counter()
    chains = chain_rows(agents, [1, 1024], args.calls, device)
    for agent in agents.values():  # random actions fill the buffer, then one update
        agent.learn(1001, eval_every=0, progress=False)
    updates = update_rows(agents, args.updates, device)
    print(f"\n{env_name} on {device} ({gpu}), {time.perf_counter() - start:.0f} s\n")
    print(markdown_table(chains, ["policy", "batch", "path", "p50_us", "p90_us", "goal_us", "goal"]))
    print()
    print(markdown_table(updates, ["algorithm", "batch", "path", "p50_ms", "p90_ms", "updates_per_s", "CUDA graph"]))
    write_results(out, {"device": str(device), "gpu": gpu, "cuda": torch.version.cuda, "env": env_name,
                        "diffusion_steps": args.k, "calls": args.calls, "updates": args.updates,
                        "chain": chains, "update": updates})


if __name__ == "__main__":
    main()
