"""Per-action cost of the acting paths of on-policy training: eager torch, a torch.jit trace, onnxruntime.

PPO and DiffPPO act once per env step on a batch of num_envs observations; this times one call of
each path on the untrained policy of `Agent(algo, env)` (the cost does not depend on the weights),
p50 over many calls, one thread. `LiveOnnxPolicy` is what a CPU rollout uses (diffagent/algos/ppo.py).

    python benchmarks/acting_latency.py --env Hopper-v4 --batch 1
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Callable

import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def p50_us(act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], obs: torch.Tensor, noise: torch.Tensor,
           calls: int) -> float:
    """Median wall time of one call, in microseconds, after a warm-up."""
    times = []
    with torch.inference_mode():
        for _ in range(calls // 10):
            act(obs, noise)
        for _ in range(calls):
            start = time.perf_counter()
            act(obs, noise)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    from diffagent import Agent
    from diffagent.algos.ppo import trace
    from diffagent.policies.onnx import LiveOnnxPolicy

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--batch", type=int, default=1, help="observations per call (num_envs)")
    parser.add_argument("--k", type=int, default=8, help="denoising steps of DiffPPO")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--out", default="benchmarks/results/acting_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for algo, overrides in (("ppo", {}), ("diffppo", {"diffusion_steps": args.k})):
        policy = Agent(algo, args.env, **overrides).policy
        obs, noise = torch.randn(args.batch, policy.obs_dim), torch.randn(policy.noise_shape(args.batch))
        paths = {"eager torch": policy, "torch.jit trace": trace(policy, (obs, noise)),
                 "onnxruntime (LiveOnnxPolicy)": LiveOnnxPolicy(policy, args.batch)}
        eager = None
        for name, act in paths.items():
            us = p50_us(act, obs, noise, args.calls)
            eager = eager or us
            rows.append({"policy": f"{algo} (K = {policy.num_steps})", "path": name, "p50_us": us,
                         "x_eager": eager / us})
            print(f"{algo} {name}: {us:.0f} us", flush=True)
    print(f"\n{args.env}, batch {args.batch}, one thread, p50 of {args.calls} calls\n")
    print(markdown_table(rows, ["policy", "path", "p50_us", "x_eager"]))
    write_results(args.out, {"env": args.env, "batch": args.batch, "calls": args.calls, "rows": rows})


if __name__ == "__main__":
    main()
