"""How well does a run's critic know the soft return of its own policy?

benchmarks/chain_capacity.py --teacher run:RUN_DIR found that the critics of the campaign's DiffSAC and DiffWPO
on Hopper hold no better policy than the chains that trained them (docs/algorithms.md, section 8). Is such a
critic wrong about its own policy, or right about a policy that falls? Here the run's policy acts (stochastically,
as in training) for whole episodes, and its critic's min Q(s_t, a_t) at every visited pair is set against the
discounted soft return that followed, r_t + sum_{k>=1} gamma^k (r_{t+k} - alpha L_{t+k}): the quantity the soft
TD target estimates. In an episode cut by the time limit the last 300 steps are left out, whose missing future
would bias the return (gamma^300 ~ 0.05).

    python benchmarks/critic_accuracy.py --runs runs/campaign/Hopper-v4/sac/s0,runs/campaign/Hopper-v4/diffsac/s0
"""

from __future__ import annotations

import argparse
import warnings

import gymnasium as gym
import numpy as np
import torch
from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)

TIME_LIMIT_TAIL = 300


def soft_returns(rewards: np.ndarray, log_ratios: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    """r_t + gamma W_{t+1} for every step of one episode, W_t = sum_k gamma^k (r - alpha L)_{t+k}, nothing after it."""
    future = np.zeros(len(rewards) + 1)
    for t in reversed(range(len(rewards))):
        future[t] = rewards[t] - alpha * log_ratios[t] + gamma * future[t + 1]
    return rewards + gamma * future[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated run directories (their last checkpoints)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=123, help="episode i starts from reset(seed + i)")
    parser.add_argument("--out", default="benchmarks/results/critic_accuracy.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from diffagent import Agent

    rows = []
    for run_dir in args.runs.split(","):
        agent = Agent.resume(run_dir)
        if not hasattr(agent.algorithm, "critic"):
            parser.error(f"{run_dir} is a {agent.algo} run, which has no Q critic: give off-policy runs "
                         "(sac, diffsac, wpo, diffwpo)")
        algorithm, env = agent.algorithm, gym.make(agent.env_id)
        alpha, gamma = float(algorithm.alpha), algorithm.config.gamma
        low, high = agent.policy.action_low.numpy(), agent.policy.action_high.numpy()
        predicted, realised, lengths = [], [], []
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + episode)
            observations, actions, rewards, log_ratios = [], [], [], []
            done = truncated = False
            while not done:
                with torch.no_grad():
                    sample = agent.policy.sample(torch.as_tensor(obs, dtype=torch.float32)[None])
                action = sample.action[0].numpy()
                observations.append(obs), actions.append(action), log_ratios.append(float(sample.log_ratio[0]))
                obs, reward, terminated, truncated, _ = env.step(low + (high - low) * (action + 1.0) * 0.5)
                rewards.append(reward)
                done = terminated or truncated
            lengths.append(len(rewards))
            kept = len(rewards) - TIME_LIMIT_TAIL if truncated else len(rewards)
            returns = soft_returns(np.array(rewards), np.array(log_ratios), alpha, gamma)
            with torch.no_grad():
                states = algorithm.policy.obs_normalizer(torch.as_tensor(np.array(observations), dtype=torch.float32))
                q = algorithm.critic(states, torch.as_tensor(np.array(actions))).min(0).values.numpy()
            predicted.append(q[:kept]), realised.append(returns[:kept])
        q, g = np.concatenate(predicted), np.concatenate(realised)
        rows.append({"run": run_dir, "algo": agent.algo, "alpha": alpha, "mean_episode_length": float(np.mean(lengths)),
                     "pairs": len(q), "q_mean": float(q.mean()), "soft_return_mean": float(g.mean()),
                     "bias": float(np.mean(q - g)), "rmse": float(np.sqrt(np.mean((q - g) ** 2))),
                     "correlation": float(np.corrcoef(q, g)[0, 1])})
        print(rows[-1], flush=True)
    print(f"\nEach run's critic, min Q(s, a), against the discounted soft return that followed, over {args.episodes} "
          "stochastic episodes of its own policy\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"episodes": args.episodes, "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
