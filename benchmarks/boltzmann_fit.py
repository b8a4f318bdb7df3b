"""How close a chain can come to the Boltzmann masses of the unequal bandit when nothing but the fit is in the way.

DiffSAC on diffagent/UnequalPeaks-v0 under-weights the tallest mode (docs/algorithms.md, "The multimodal claim").
Is the fit unfinished (the critic, too few steps) or biased (the objective)? Here the actor loss of DiffSAC,
E[alpha L - r(a)], is minimised with the bandit's exact reward in place of the critic, at DiffSAC's settings on
that task (alpha 0.1, drift network 64x64, lr 1e-3, batch 256), and the mode shares are scored as the grid's
report scores them (diffagent.multimodal.mode_coverage) after each budget of updates.

    python benchmarks/boltzmann_fit.py --updates 4000,16000,48000 --diffusion-steps 8,16 --seeds 0,1
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)

ALPHA, BATCH = 0.1, 256


def torch_reward(bandit, actions: torch.Tensor) -> torch.Tensor:
    """The bandit's r(a) (FourPeaksBandit.reward) in torch, so that the chain is trained through it."""
    centres = torch.as_tensor(bandit.centres, dtype=actions.dtype)
    heights = torch.as_tensor(bandit.heights, dtype=actions.dtype)
    squared = (actions[:, None, :] - centres).square().sum(-1)
    return (heights * torch.exp(-squared / (2.0 * bandit.width ** 2))).sum(-1)


def objective_floor(bandit, grid_size: int = 1601) -> float:
    """min over policies of E[alpha log pi(a) - r(a)] = -alpha log Z, Z = the integral of exp(r / alpha) over the box
    (midpoint rule). E[alpha L - r] exceeds it by alpha times the chain's path KL to the target, so the distance of
    `objective` from it says how far the fit is from done."""
    axis = -1.0 + 2.0 * (np.arange(grid_size) + 0.5) / grid_size
    reward = bandit.reward(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2))
    log_z = np.log(np.exp((reward - reward.max()) / ALPHA).mean() * 4.0) + reward.max() / ALPHA  # box area 4
    return float(-ALPHA * log_z)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", default="4000,16000,48000", help="budgets at which the shares are scored")
    parser.add_argument("--diffusion-steps", default="8")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default="benchmarks/results/boltzmann_fit.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffagent import Agent
    from diffagent.multimodal import UNEQUAL_ENV_ID, make_bandit, mode_coverage

    bandit = make_bandit(UNEQUAL_ENV_ID)
    budgets = sorted(map(int, args.updates.split(",")))
    rows = []
    for num_steps in map(int, args.diffusion_steps.split(",")):
        for seed in map(int, args.seeds.split(",")):
            agent = Agent("diffsac", UNEQUAL_ENV_ID, seed=seed, diffusion_steps=num_steps,
                          policy_hidden_sizes=[64, 64], autotune_alpha=False, alpha_init=ALPHA)
            optimizer = torch.optim.Adam(agent.policy.parameters(), lr=1e-3)
            obs = torch.zeros(BATCH, 1)
            done = 0
            for budget in budgets:
                for _ in range(budget - done):
                    sample = agent.policy.sample(obs)
                    loss = (ALPHA * sample.log_ratio - torch_reward(bandit, sample.action)).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                done = budget
                coverage = mode_coverage(agent, alpha=ALPHA, bandit=bandit)
                rows.append({"K": num_steps, "seed": seed, "updates": budget,
                             "shares_pct": " / ".join(f"{100 * s:.1f}" for s in coverage.shares),
                             "targets_pct": " / ".join(f"{100 * t:.1f}" for t in coverage.targets),
                             "max_abs_error_points": coverage.max_abs_error_points,
                             "total_variation_pct": 100 * coverage.total_variation,
                             "off_mode_pct": 100 * coverage.off_mode_share,
                             "objective": float(loss.detach())})
                print(rows[-1], flush=True)
    floor = objective_floor(bandit)
    print(f"\nA chain fitted to exp(r / {ALPHA}) with the exact reward ({BATCH} chains per update); the objective's "
          f"floor, -alpha log Z, is {floor:.4f}\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"alpha": ALPHA, "batch": BATCH, "objective_floor": floor, "rows": rows})


if __name__ == "__main__":
    main()
