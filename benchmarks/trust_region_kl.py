"""Where a DiffWPO chain's trust-region KL lies: KL(old || new) per denoising step, from a run's checkpoint.

The trust region (diffagent/algos/wpo.py) holds the path's KL, the sum over the chain's K steps of its
Gaussian kernels' KLs, near K * kl_bound. For each run's last checkpoint this splits that sum by step, at states
from its replay buffer's newest transitions and on chains drawn from the policy, as the actor loss measures it,
and prints each step's share of the path's KL beside the step's noise std. The path's KL is the checkpoint's
instant, which swings by a factor of two within a few hundred updates, where the KL a run logs averages 1,000
of them: compare the shares. docs/algorithms.md, section 9, quotes it.

    python benchmarks/trust_region_kl.py --runs RUN_DIR,RUN_DIR --out OUT.json
"""

from __future__ import annotations

import argparse
import warnings

import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated DiffWPO run directories with a checkpoint")
    parser.add_argument("--states", type=int, default=100_000,
                        help="the buffer's newest transitions to use (the default: a 100k-step run's whole buffer, "
                             "from which the actor's batches are drawn)")
    parser.add_argument("--out", default="benchmarks/results/trust_region_kl.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from diffagent import Agent
    from diffagent.algos.wpo import gaussian_kl

    rows = []
    for run in args.runs.split(","):
        agent = Agent.resume(run)
        wpo = agent.algorithm
        size = wpo.buffer.size
        raw_obs = wpo.buffer.obs[max(0, size - args.states):size].to(torch.float32)
        with torch.no_grad():
            chain = wpo.policy.sample(raw_obs).chain
            mean, log_std = wpo.policy.kernels(raw_obs, chain)
            old_mean, old_log_std = wpo.policy_old.kernels(raw_obs, chain)
            per_step = gaussian_kl(old_mean, old_log_std, mean, log_std).mean(0)  # (K,): summed over action dims
        path = per_step.sum().item()
        for step, kl in enumerate(per_step.tolist()):
            rows.append({"run": run, "step": agent.num_timesteps, "denoising_step": step, "kl": kl,
                         "share_of_path": kl / path, "path_kl": path,
                         "noise_std": log_std[:, step].exp().mean().item()})
        print(f"{run}: path KL {path:.4f}", flush=True)
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"states": args.states, "rows": rows})


if __name__ == "__main__":
    main()
