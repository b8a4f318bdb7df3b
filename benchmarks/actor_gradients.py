"""DiffSAC's two actor-gradient estimators side by side: 'pathwise' against 'lv'.

Same env, budget, seeds and hyperparameters; prints final deterministic returns and throughput:

    python benchmarks/actor_gradients.py --env Pendulum-v1 --steps 6000 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def run(estimator: str, env_id: str, steps: int, seed: int, overrides: dict) -> dict:
    from diffagent import Agent

    agent = Agent("diffsac", env_id, seed=seed, actor_gradient=estimator, **overrides)
    start = time.perf_counter()
    agent.learn(steps, eval_every=steps // 6, eval_episodes=5, progress=False)
    elapsed = time.perf_counter() - start
    curve = [(e["step"], e["mean"]) for e in agent.progress.evaluations]
    return {"estimator": estimator, "seed": seed, "final_return": curve[-1][1], "curve": curve,
            "steps_per_s": steps / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/actor_gradients.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Pendulum needs no wide networks; these match tests/test_learning.py
    overrides = {"policy_hidden_sizes": (64, 64), "critic_hidden_sizes": (64, 64), "learning_starts": 1000,
                 "diffusion_steps": 4}
    runs = [run(estimator, args.env, args.steps, seed, overrides)
            for seed in map(int, args.seeds.split(",")) for estimator in ("pathwise", "lv")]
    rows = []
    for estimator in ("pathwise", "lv"):
        finals = [r["final_return"] for r in runs if r["estimator"] == estimator]
        speed = [r["steps_per_s"] for r in runs if r["estimator"] == estimator]
        rows.append({"estimator": estimator, "mean_final_return": float(np.mean(finals)),
                     "min_final_return": float(np.min(finals)), "median_steps_per_s": float(np.median(speed)),
                     "seeds": len(finals)})
    print(f"\nDiffSAC on {args.env}, {args.steps} steps, overrides {overrides}\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"env": args.env, "steps": args.steps, "overrides": overrides, "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
