"""Which deterministic action a trained policy should act with: the zero-noise chain (the Gaussian's mean), or the
mean of N sampled actions per observation, beside the stochastic return.

Each run's final weights act for the same episodes under the three rules, so the comparison is paired: episode i
starts from reset(evaluation_seed(run seed) + i), the episodes `Agent.evaluate` and the benchmark's evaluations
use, and its noise comes from a generator seeded the same way. docs/algorithms.md, section 9, quotes it.

    python benchmarks/deterministic_action.py --runs RUN_DIR,RUN_DIR --samples 32 --episodes 10
"""

from __future__ import annotations

import argparse
import warnings

import gymnasium as gym
import numpy as np
import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def episode_return(env: gym.Env, agent, rule, seed: int) -> float:
    """The return of one episode started from reset(seed), acting with rule(agent, obs, rng). Agent.evaluate runs
    the same episodes but knows only the zero-noise and the stochastic rule, hence this loop."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(rule(agent, obs, rng))
        total += float(reward)
        done = terminated or truncated
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated run directories (each with model.safetensors)")
    parser.add_argument("--samples", type=int, default=32, help="sampled actions averaged per observation")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/deterministic_action.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffagent import Agent
    from diffagent.agent import evaluation_seed

    rules = {
        "zero_noise": lambda agent, obs, rng: agent.act(obs, deterministic=True),
        "stochastic": lambda agent, obs, rng: agent.act(
            obs, noise=rng.standard_normal(agent.policy.noise_shape(1), dtype=np.float32)[0]),
        f"mean_of_{args.samples}": lambda agent, obs, rng: agent.act(
            np.repeat(obs[None], args.samples, axis=0),
            noise=rng.standard_normal(agent.policy.noise_shape(args.samples), dtype=np.float32)).mean(axis=0),
    }
    rows = []
    for run_dir in args.runs.split(","):
        agent = Agent.from_pretrained(run_dir)
        env, first = gym.make(agent.env_id), evaluation_seed(agent.config.run.seed)
        row = {"run": run_dir, "algo": agent.algo}
        for name, rule in rules.items():
            row[name] = float(np.mean([episode_return(env, agent, rule, first + i) for i in range(args.episodes)]))
        rows.append(row)
        print(row, flush=True)
    print(f"\nMean return over {args.episodes} paired episodes of each run's final weights, per way of acting\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"episodes": args.episodes, "samples": args.samples, "rows": rows})


if __name__ == "__main__":
    main()
