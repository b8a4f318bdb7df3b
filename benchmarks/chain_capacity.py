"""Can DiffSAC's chain take the shape of a strong Hopper policy, and how fast, at the campaign's settings?

At the campaign's settings DiffSAC reached 512 on Hopper at 100k steps where SAC reached 3,157, and ran about a nat
hotter (docs/algorithms.md, section 8). Is the chain slow to take a sharp shape, or is the difference in what
reinforcement learning feeds it? Here DiffSAC's actor loss E[alpha L - Q] gets a critic whose Boltzmann policy is
known: Q(s, a) = alpha log pi_SAC(a|s) + V(s), with pi_SAC the zoo's SAC (`zoo/models/sac-Hopper-v4`, 3,157). Then
the loss is alpha E[L(s, chain) - log pi_SAC(a|s)] (V drops out of every gradient), the reverse KL from the
chain to pi_SAC plus the chain's bound gap, minimised on states that pi_SAC visits, with the actor's optimiser and
batch (zoo/hyperparams/Hopper-v4.toml: Adam, lr 1e-3, batch 256). A fresh Gaussian policy (SAC's own class) is
fitted the same way beside it. After each budget of updates: the loss, -E[L], and the Hopper return of the fitted
policy (deterministic episodes, as the campaign evaluates).

    python benchmarks/chain_capacity.py --updates 1000,3000,10000,30000 --episodes 5
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)

ENV_ID = "Hopper-v4"
ZOO = Path(__file__).resolve().parents[1] / "zoo"
TEACHER, HYPERPARAMETERS = ZOO / "models" / "sac-Hopper-v4", ZOO / "hyperparams" / "Hopper-v4.toml"


def teacher_states(teacher, count: int, seed: int) -> torch.Tensor:
    """`count` observations visited by the teacher acting stochastically (as its buffer saw them)."""
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    states = []
    for _ in range(count):
        states.append(obs)
        obs, _, terminated, truncated, _ = env.step(teacher.act(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    return torch.as_tensor(np.array(states), dtype=torch.float32)


def teacher_log_prob(teacher_policy, obs: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """log pi_SAC(tanh(latent) | s): the Gaussian is the K = 1 chain whose backward kernel is its prior, so the path
    log-ratio of the chain (anything, latent) is log pi exactly (diffagent/policies/chain.py)."""
    return teacher_policy.score(obs, torch.stack([torch.zeros_like(latent), latent], dim=1)).log_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", default="1000,3000,10000,30000", help="budgets at which the fit is scored")
    parser.add_argument("--students", default="diffsac,sac", help="the policies fitted: the algorithms' own classes")
    parser.add_argument("--states", type=int, default=20_000, help="teacher states to fit on")
    parser.add_argument("--episodes", type=int, default=5, help="deterministic Hopper episodes per score")
    parser.add_argument("--actor-lr", type=float, default=None, help="Adam's learning rate (default: the zoo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=Path(__file__).resolve().parent / "results" / "chain_capacity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffagent import Agent
    from diffagent.bench.grid import load_hyperparameters

    teacher = Agent.from_pretrained(TEACHER)
    teacher.policy.requires_grad_(False)
    states = teacher_states(teacher, args.states, args.seed)
    with torch.no_grad():
        teacher_sample = teacher.policy.sample(states[:4096])
        teacher_entropy = float(-teacher_sample.log_ratio.mean())
    teacher_return = teacher.evaluate(args.episodes).mean
    print(f"teacher: {args.states} states, entropy {teacher_entropy:.3f} nats, return {teacher_return:.0f}", flush=True)

    budgets = sorted(map(int, args.updates.split(",")))
    rows = []
    for algo in args.students.split(","):
        settings = load_hyperparameters(HYPERPARAMETERS, algo)
        student = Agent(algo, ENV_ID, seed=args.seed, **settings)
        student.policy.obs_normalizer.update(states)  # a no-op unless the policy normalises observations
        learning_rate = args.actor_lr or student.config.algorithm.actor_lr
        optimizer = torch.optim.Adam(student.policy.parameters(), lr=learning_rate, fused=True)
        batches = torch.Generator().manual_seed(args.seed)
        batch_size = student.config.algorithm.batch_size
        done, fit_seconds, losses = 0, 0.0, []
        for budget in budgets:
            started = time.process_time()
            for _ in range(done, budget):
                obs = states[torch.randint(len(states), (batch_size,), generator=batches)]
                sample = student.policy.sample(obs)
                loss = (sample.log_ratio - teacher_log_prob(teacher.policy, obs, sample.chain[:, -1])).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            done = budget
            fit_seconds += time.process_time() - started
            with torch.no_grad():
                minus_mean_l = float(-student.policy.sample(states[:4096]).log_ratio.mean())
            evaluation = student.evaluate(args.episodes)
            rows.append({"student": algo, "actor_lr": learning_rate, "updates": budget,
                         "loss_nats": float(np.mean(losses[-200:])), "minus_mean_L": minus_mean_l,
                         "teacher_entropy": teacher_entropy,
                         "return": evaluation.mean, "return_std": evaluation.std, "teacher_return": teacher_return,
                         "fit_cpu_s": fit_seconds})
            print(rows[-1], flush=True)
    print(f"\nEach policy fitted to the zoo's SAC on {args.states} of its Hopper states by E[L - log pi_SAC] "
          f"(the mean of the last 200 updates' losses; >= the reverse KL)\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"teacher": str(TEACHER.relative_to(ZOO.parent)), "states": args.states,
                             "episodes": args.episodes, "rows": rows})


if __name__ == "__main__":
    main()
