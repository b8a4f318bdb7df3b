"""Training throughput of SAC and DiffSAC (K = 4, 8, 16) against Stable-Baselines3 SAC.

Whole training loop (acting + one gradient step per env step), same hyperparameters
(batch 256, 256x256 networks, Adam 3e-4, buffer 1e6), same env, one process at a time:

    python benchmarks/sac_throughput.py --env Hopper-v4 --steps 2000 --threads 2
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def ours(algo: str, env_id: str, warmup: int, steps: int, **overrides) -> float:
    from diffagent import Agent

    agent = Agent(algo, env_id, learning_starts=warmup, **overrides)
    agent.learn(warmup, eval_every=0, progress=False)
    start = time.perf_counter()
    agent.learn(steps, eval_every=0, progress=False)
    return steps / (time.perf_counter() - start)


def stable_baselines3(env_id: str, warmup: int, steps: int) -> float:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    class Clock(BaseCallback):
        start = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps == warmup:
                Clock.start = time.perf_counter()
            return True

    model = SAC("MlpPolicy", env_id, learning_starts=warmup, batch_size=256, buffer_size=1_000_000,
                policy_kwargs={"net_arch": [256, 256]}, device="cpu", verbose=0)
    model.learn(warmup + steps, callback=Clock())
    return steps / (time.perf_counter() - Clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps after the random warm-up")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--out", default="benchmarks/results/sac_throughput.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = [{"algorithm": "SB3 SAC", "steps_per_s": stable_baselines3(args.env, args.warmup, args.steps)}]
    rows.append({"algorithm": "diffagent SAC", "steps_per_s": ours("sac", args.env, args.warmup, args.steps)})
    for k in map(int, args.ks.split(",")):
        rows.append({"algorithm": f"diffagent DiffSAC K={k}",
                     "steps_per_s": ours("diffsac", args.env, args.warmup, args.steps, diffusion_steps=k)})
    baseline = rows[0]["steps_per_s"]
    for row in rows:
        row["x_sb3"] = row["steps_per_s"] / baseline
    print(f"\n{args.env}, {args.steps} timed steps, torch threads {torch.get_num_threads()}\n")
    print(markdown_table(rows, ["algorithm", "steps_per_s", "x_sb3"]))
    write_results(args.out, {"env": args.env, "steps": args.steps, "warmup": args.warmup,
                             "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
