"""DiffPPO's per-step baseline V(s, x_k, k): gradient variance on a bandit, and returns with and without it.

The bandit part always runs. On a one-state task (tests/test_ppo.py builds it) it measures the
variance of the per-chain policy gradient of a K = 8 diffusion policy, the same chains under each
weighting of the denoising steps:

    default               A_t for every step (shared baseline V(s))
    cancel_past           A_t + alpha (log p_0(x_0) + sum_{j<k} l_j), shared V(s)
    per-step lambda 1     per_step_baseline with gae_lambda = 1: cancel_past with V(s, x_k, k) for V(s)
    per-step lambda 0.95  per_step_baseline at the default gae_lambda

V(s, x_k, k) is a least-squares fit of each step's future on a pilot batch, the learned critic's
stand-in. With --env it also trains DiffPPO (library defaults) with per_step_baseline off and on,
seeds alternating, and prints the final deterministic returns:

    python benchmarks/per_step_baseline.py
    python benchmarks/per_step_baseline.py --env InvertedPendulum-v4 --steps 24576 --seeds 0,1
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common import markdown_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_ppo import bandit_gradients, paired_z  # the bandit the tests measure, not a copy of it

warnings.filterwarnings("ignore", category=DeprecationWarning)

# (alpha, first and last step size): the test's setting; the library's step sizes; and those with
# DiffPPO's alpha, where the entropy terms vanish and only the reward's dependence on x_k is left to predict
BANDIT_SETTINGS = [(1.0, 0.3, 0.1), (1.0, 0.1, 0.01), (2e-4, 0.1, 0.01)]
BANDIT_SEEDS = (0, 1, 2)


def bandit_rows(num_steps: int, chains: int) -> tuple[list[dict], list[dict]]:
    """Per (setting, variant) over seeds: the variance and its ratio to the default's; and every measurement."""
    measurements = []
    for alpha, step_size_max, step_size_min in BANDIT_SETTINGS:
        for seed in BANDIT_SEEDS:
            gradients = bandit_gradients(num_steps, alpha, seed, chains, gae_lambdas=(1.0, 0.95),
                                         step_size_max=step_size_max, step_size_min=step_size_min)
            default_variance = gradients["default"].var(0).sum().item()
            for variant, g in gradients.items():
                variance, z = g.var(0).sum().item(), paired_z(g, gradients["default"])
                measurements.append({"alpha": alpha, "step_sizes": f"{step_size_max}..{step_size_min}", "seed": seed,
                                     "variant": variant, "variance": variance, "x_default": variance / default_variance,
                                     "mean_z2": z.square().mean().item(), "max_abs_z": z.abs().max().item()})
    groups: dict[tuple, list[dict]] = {}
    for m in measurements:
        groups.setdefault((m["alpha"], m["step_sizes"], m["variant"]), []).append(m)
    rows = []
    for (alpha, step_sizes, variant), seeds in groups.items():
        ratios = [m["x_default"] for m in seeds]
        rows.append({"alpha": f"{alpha:g}", "step_sizes": step_sizes, "variant": variant,
                     "variance": float(np.mean([m["variance"] for m in seeds])), "x_default": f"{np.mean(ratios):.3f}",
                     "min": f"{min(ratios):.3f}", "max": f"{max(ratios):.3f}",
                     "max_mean_z2": f"{max(m['mean_z2'] for m in seeds):.2f}"})
    return rows, measurements


def train(per_step_baseline: bool, env_id: str, steps: int, seed: int, eval_every: int, eval_episodes: int) -> dict:
    from diffagent import Agent

    agent = Agent("diffppo", env_id, seed=seed, per_step_baseline=per_step_baseline)
    start = time.perf_counter()
    agent.learn(steps, eval_every=eval_every, eval_episodes=eval_episodes, progress=False)
    elapsed = time.perf_counter() - start
    curve = [(e["step"], e["mean"]) for e in agent.results()["evaluations"]]
    print(f"per_step_baseline={per_step_baseline} seed {seed}: final return {curve[-1][1]:.1f}, "
          f"{agent.num_timesteps / elapsed:.0f} steps/s", flush=True)
    return {"per_step_baseline": per_step_baseline, "seed": seed, "final_return": curve[-1][1], "curve": curve,
            "steps_per_s": agent.num_timesteps / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8, help="denoising steps of the bandit's policy")
    parser.add_argument("--chains", type=int, default=4000, help="bandit chains per (setting, seed)")
    parser.add_argument("--env", help="also train DiffPPO on this env, with per_step_baseline off and on")
    parser.add_argument("--steps", type=int, default=24_576, help="env steps per training run (whole rollouts)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (default: steps / 10)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/per_step_baseline.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, measurements = bandit_rows(args.k, args.chains)
    print(f"\nPer-chain policy-gradient variance on the bandit, K = {args.k}, {args.chains} chains, seeds {BANDIT_SEEDS}:"
          "\nthe mean variance, its ratio to the default's (mean, min, max over seeds), and the largest mean z^2 of"
          "\nthe paired difference from the default (about 1 when the expected gradients agree)\n")
    print(markdown_table(rows, list(rows[0])))
    results = {"bandit": {"diffusion_steps": args.k, "chains": args.chains, "rows": rows,
                          "measurements": measurements}}

    if args.env:
        seeds = [int(s) for s in args.seeds.split(",")]
        eval_every = args.eval_every or args.steps // 10
        runs = [train(on, args.env, args.steps, seed, eval_every, args.eval_episodes)
                for seed in seeds for on in (False, True)]
        training_rows = []
        for on in (False, True):
            finals = [r["final_return"] for r in runs if r["per_step_baseline"] == on]
            training_rows.append({"per_step_baseline": on, "mean_final_return": float(np.mean(finals)),
                                  "min_final_return": float(np.min(finals)),
                                  "median_steps_per_s": float(np.median([r["steps_per_s"] for r in runs
                                                                         if r["per_step_baseline"] == on])),
                                  "seeds": len(finals)})
        print(f"\nDiffPPO on {args.env}, {args.steps} steps, seeds {seeds}, library defaults\n")
        print(markdown_table(training_rows, list(training_rows[0])))
        results["training"] = {"env": args.env, "steps": args.steps, "seeds": seeds, "eval_every": eval_every,
                               "eval_episodes": args.eval_episodes, "rows": training_rows, "runs": runs}
    write_results(args.out, results)


if __name__ == "__main__":
    main()
