"""The gap between -E[L] and the true entropy of a diffusion chain's action, per action dimension.

For each chain (an untrained one and the zoo's trained ones), on states its own policy visits,
prints the lower bound -E[L], a nearest-neighbour estimate of the entropy from many sampled actions,
and the importance-weighted upper bound with N backward paths (tighter as N grows), per action
dimension, with the gap between the estimate and the lower bound. docs/algorithms.md, "The entropy target", quotes it.

    python benchmarks/entropy_gap.py --states 32 --samples 16 --paths 16,64,256,1024
    python benchmarks/entropy_gap.py --models run:RUN_DIR --paths 64,1024 --out OUT.json   # a run's checkpoint
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def visited_states(agent, count: int, seed: int = 0) -> torch.Tensor:
    """`count` observations from one stochastic episode (or more) of the agent's own policy."""
    env = agent._make_env()
    obs, _ = env.reset(seed=seed)
    states = []
    while len(states) < count * 5:
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(agent.act(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    picked = np.random.default_rng(seed).choice(len(states), count, replace=False)
    return torch.as_tensor(np.stack(states)[picked], dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="untrained:Hopper-v4,zoo/models/diffsac-Hopper-v4,"
                                             "zoo/models/diffppo-Hopper-v4,zoo/models/diffsac-Pendulum-v1")
    parser.add_argument("--states", type=int, default=32)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--paths", default="16,64,256,1024")
    parser.add_argument("--knn-samples", type=int, default=2048)
    parser.add_argument("--out", default="benchmarks/results/entropy_gap.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from diffagent import Agent
    from diffagent.policies.entropy import entropy_bounds, knn_entropy

    rows = []
    for model in args.models.split(","):
        if model.startswith("untrained:"):
            agent = Agent("diffsac", model.split(":", 1)[1])
        elif model.startswith("run:"):  # a run directory's latest checkpoint, e.g. a grid's run stopped midway
            agent = Agent.resume(model.split(":", 1)[1])
        else:
            agent = Agent.from_pretrained(model)
        obs = visited_states(agent, args.states)
        act_dim = agent.policy.act_dim
        knn = knn_entropy(agent.policy, obs, samples=args.knn_samples).mean().item() / act_dim
        for paths in map(int, args.paths.split(",")):
            bounds = entropy_bounds(agent.policy, obs, samples=args.samples, paths=paths)
            lower, upper = bounds.lower.mean().item() / act_dim, bounds.upper.mean().item() / act_dim
            rows.append({"model": model, "K": agent.policy.num_steps, "act_dim": act_dim, "paths": paths,
                         "lower_per_dim": lower, "knn_per_dim": knn, "upper_per_dim": upper,
                         "knn_gap_per_dim": knn - lower})
            print(rows[-1], flush=True)
    print(f"\nEntropy of the squashed action, nats per action dimension ({args.states} states, "
          f"{args.samples} actions each)\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"states": args.states, "samples": args.samples, "rows": rows})


if __name__ == "__main__":
    main()
