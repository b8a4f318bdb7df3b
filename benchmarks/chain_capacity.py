"""Can DiffSAC's chain take the shape of a strong Hopper policy, and how fast, at the campaign's settings?

At the campaign's settings DiffSAC reached 512 on Hopper at 100k steps where SAC reached 3,157, and ran about a nat
hotter (docs/algorithms.md, section 8). Is the chain slow to take a sharp shape, or is the difference in what
reinforcement learning feeds it? Here DiffSAC's actor loss E[alpha L - Q] gets a critic whose Boltzmann policy is
known: Q(s, a) = alpha log pi_SAC(a|s) + V(s), with pi_SAC the zoo's SAC (`zoo/models/sac-Hopper-v4`, 3,157). Then
the loss is alpha E[L(s, chain) - log pi_SAC(a|s)] (V drops out of every gradient), the reverse KL from the
chain to pi_SAC plus the chain's bound gap, minimised on states that pi_SAC visits, with the actor's optimiser and
batch (zoo/hyperparams/Hopper-v4.toml: Adam, lr 1e-3, batch 256). A fresh Gaussian policy (SAC's own class) is
fitted the same way beside it. After each budget of updates: the loss, -E[L], and the Hopper return of the fitted
policy (deterministic episodes, as the campaign evaluates), and its entropy by nearest neighbours
(`diffagent.policies.entropy.knn_entropy`), the true entropy where -E[L] is only a lower bound for a chain.

    python benchmarks/chain_capacity.py --updates 1000,3000,10000,30000 --episodes 5

`--teacher run:RUN_DIR` asks the converse question of a training run: is it its critic or its actor that holds it
where it is? The loss is then the run's own actor loss against its frozen critic, E[L - min Q(s, a) / alpha] at the
run's alpha, on states from its replay buffer, and `own` among the students continues the run's own policy. If a
fresh Gaussian fitted to DiffSAC's critic acts far better than DiffSAC's chain, the critic knew a better policy
than the chain took; if not, the critic (and the data it learned from) is where DiffSAC stands. With `sac,diffsac`
on one run's critic it also says whether, at one temperature and one critic, the chain settles hotter than the
Gaussian (compare their `entropy_knn`).

    python benchmarks/chain_capacity.py --teacher run:runs/campaign/Hopper-v4/diffsac/s0 --students sac,own,diffsac
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


class ZooSACTeacher:
    """The zoo's SAC: log density log pi_SAC, on states it visits acting stochastically."""

    def __init__(self, episodes: int, states: int, seed: int):
        from diffagent import Agent

        self.agent = Agent.from_pretrained(TEACHER)
        self.agent.policy.requires_grad_(False)
        self.name = str(TEACHER.relative_to(ZOO.parent))
        self.states = teacher_states(self.agent, states, seed)
        with torch.no_grad():
            self.entropy = float(-self.agent.policy.sample(self.states[:4096]).log_ratio.mean())
        self.return_ = self.agent.evaluate(episodes).mean

    def log_density(self, obs: torch.Tensor, sample) -> torch.Tensor:
        return teacher_log_prob(self.agent.policy, obs, sample.chain[:, -1])


class RunCriticTeacher:
    """A training run's frozen critic at its last checkpoint: log density min Q(s, a) / alpha (up to a constant in
    a), on states from the run's replay buffer."""

    def __init__(self, run_dir: str, episodes: int, states: int, seed: int):
        from diffagent import Agent

        self.agent = Agent.resume(run_dir)
        algorithm = self.agent.algorithm
        algorithm.critic.requires_grad_(False)
        self.name, self.alpha = f"run:{run_dir}", float(algorithm.alpha)
        self.states = algorithm.buffer.sample(states, torch.Generator().manual_seed(seed)).obs
        with torch.no_grad():
            self.entropy = float(-self.agent.policy.sample(self.states[:4096]).log_ratio.mean())
        self.return_ = self.agent.evaluate(episodes).mean

    def log_density(self, obs: torch.Tensor, sample) -> torch.Tensor:
        algorithm = self.agent.algorithm
        return algorithm.critic(algorithm.policy.obs_normalizer(obs), sample.action).min(0).values / self.alpha


def entropy_and_gap(policy, states: torch.Tensor, chunk: int = 16) -> tuple[float, float]:
    """A policy's mean entropy over `states` by nearest neighbours (2,048 actions each, `chunk` states at a time to
    bound the distance matrices' memory), and how far -E[L] on the same states (512 chains each) sits below it."""
    from diffagent.policies.entropy import knn_entropy

    entropy = torch.cat([knn_entropy(policy, part) for part in states.split(chunk)])
    with torch.no_grad():
        lower = -policy.sample(states.repeat_interleave(512, 0)).log_ratio.view(len(states), 512).mean(1)
    return float(entropy.mean()), float((entropy - lower).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", default="1000,3000,10000,30000", help="budgets at which the fit is scored")
    parser.add_argument("--teacher", default="zoo", help="zoo (the zoo's SAC) or run:RUN_DIR (a run's critic)")
    parser.add_argument("--students", default="diffsac,sac",
                        help="the policies fitted: fresh ones of the algorithms' own classes, or `own` (with a run "
                             "teacher: the run's own policy, continued)")
    parser.add_argument("--states", type=int, default=20_000, help="teacher states to fit on")
    parser.add_argument("--episodes", type=int, default=5, help="deterministic Hopper episodes per score")
    parser.add_argument("--actor-lr", type=float, default=None, help="Adam's learning rate (default: the zoo's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter of the fresh students, over the zoo's (repeatable), e.g. "
                             "learn_backward_kernel=true")
    parser.add_argument("--knn-states", type=int, default=64,
                        help="states on which each fit's entropy is estimated by nearest neighbours")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=Path(__file__).resolve().parent / "results" / "chain_capacity.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffagent import Agent
    from diffagent.bench.grid import load_hyperparameters
    from diffagent.config import applicable, parse_overrides

    if "own" in args.students.split(",") and not args.teacher.startswith("run:"):
        parser.error("the student `own` needs --teacher run:RUN_DIR")
    if args.teacher == "zoo":
        teacher = ZooSACTeacher(args.episodes, args.states, args.seed)
    elif args.teacher.startswith("run:"):
        teacher = RunCriticTeacher(args.teacher.split(":", 1)[1], args.episodes, args.states, args.seed)
    else:
        parser.error(f"--teacher {args.teacher!r}: give zoo or run:RUN_DIR")
    states = teacher.states
    picked = torch.randperm(len(states), generator=torch.Generator().manual_seed(args.seed))[:args.knn_states]
    teacher_entropy, teacher_gap = entropy_and_gap(teacher.agent.policy, states[picked])
    print(f"teacher {teacher.name}: {len(states)} states, its policy's -E[L] {teacher.entropy:.3f} nats, "
          f"entropy {teacher_entropy:.3f} on {len(picked)} states (gap {teacher_gap:.3f}), "
          f"return {teacher.return_:.0f}", flush=True)

    budgets = sorted(map(int, args.updates.split(",")))
    rows = []
    for algo in args.students.split(","):
        if algo == "own":
            student, overrides = teacher.agent, {}
        else:
            overrides = applicable(algo, parse_overrides(args.overrides))
            student = Agent(algo, ENV_ID, seed=args.seed, **(load_hyperparameters(HYPERPARAMETERS, algo) | overrides))
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
                loss = (sample.log_ratio - teacher.log_density(obs, sample)).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            done = budget
            fit_seconds += time.process_time() - started
            with torch.no_grad():
                minus_mean_l = float(-student.policy.sample(states[:4096]).log_ratio.mean())
            entropy, gap = entropy_and_gap(student.policy, states[picked])
            evaluation = student.evaluate(args.episodes)
            rows.append({"student": algo, "settings": " ".join(f"{k}={v}" for k, v in overrides.items()),
                         "actor_lr": learning_rate, "updates": budget,
                         "loss_nats": float(np.mean(losses[-200:])), "minus_mean_L": minus_mean_l,
                         "entropy_knn": entropy, "gap_knn": gap, "teacher_entropy": teacher.entropy,
                         "teacher_entropy_knn": teacher_entropy, "teacher_gap_knn": teacher_gap,
                         "return": evaluation.mean, "return_std": evaluation.std, "teacher_return": teacher.return_,
                         "fit_cpu_s": fit_seconds})
            print(rows[-1], flush=True)
    print(f"\nEach policy fitted to {teacher.name} on {len(states)} of its Hopper states by E[L - log density] "
          f"(the mean of the last 200 updates' losses; with the zoo's SAC >= the reverse KL)\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"teacher": teacher.name, "states": args.states,
                             "episodes": args.episodes, "rows": rows})


if __name__ == "__main__":
    main()
