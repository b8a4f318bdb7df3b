"""Training throughput against Stable-Baselines3, in one run: SAC and DiffSAC (K = 4, 8, 16) against SB3's
SAC, PPO and DiffPPO against SB3's PPO.

Whole training loop, same hyperparameters on both sides, one torch thread:
- SAC family: batch 256, 256x256 critics, Adam 3e-4, buffer 1e6, one gradient step per env step, timed
  from the end of a random warm-up of `--warmup` steps (learning_starts) for `--sac-steps` steps;
- PPO family: 2048 steps x 1 env per rollout, 10 epochs of minibatches of 64, Adam 3e-4 annealed, 64x64
  tanh networks, observation and reward normalisation, clip 0.2, GAE 0.95, `--ppo-steps` steps.

Every run is a fresh process (so no variant inherits another's allocator or caches), and rounds
interleave the variants, each round in a rotated order, so a shared machine's load hits them alike.
The table gives medians over rounds of env steps per wall-clock second and per second of the run's
own CPU time (steadier while other jobs share the cores), and ratios to SB3 of the same family.
`--tree NAME=PATH` adds diffagent's variants once more, imported from another source tree (a `git
archive` of an earlier commit, say), for before/after ratios in the same run.

    python benchmarks/throughput.py --env Hopper-v4 --rounds 3
    python benchmarks/throughput.py --only "SB3 SAC,SAC,DiffSAC K=8" --tree before=/tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)
SAC_FAMILY, PPO_FAMILY = "SB3 SAC", "SB3 PPO"


# --- one timed training run, in a child process -------------------------------------------------------
class Timer:
    """Wall-clock and process CPU seconds since `start`."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, steps: int) -> dict[str, float]:
        return {"steps_per_s": steps / (time.perf_counter() - self.wall),
                "steps_per_cpu_s": steps / (time.process_time() - self.cpu)}


def diffagent_sac(algo: str, env_id: str, warmup: int, settle: int, steps: int, **overrides) -> dict[str, float]:
    from diffagent import Agent

    agent = Agent(algo, env_id, learning_starts=warmup, **overrides)
    agent.learn(warmup, eval_every=0, progress=False)
    if settle:
        agent.learn(settle, eval_every=0, progress=False)
    timer = Timer()
    timer.start()
    agent.learn(steps, eval_every=0, progress=False)
    return timer.rates(steps)


def sb3_sac(env_id: str, warmup: int, settle: int, steps: int) -> dict[str, float]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    timer = Timer()

    class StartClock(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == warmup + settle:
                timer.start()
            return True

    model = SAC("MlpPolicy", env_id, learning_starts=warmup, batch_size=256, buffer_size=1_000_000,
                policy_kwargs={"net_arch": [256, 256]}, device="cpu", verbose=0)
    model.learn(warmup + settle + steps, callback=StartClock())
    return timer.rates(steps)


def diffagent_ppo(algo: str, env_id: str, steps: int, **overrides) -> dict[str, float]:
    from diffagent import Agent

    agent = Agent(algo, env_id, num_envs=1, rollout_steps=2048, **overrides)
    timer = Timer()
    timer.start()
    agent.learn(steps, eval_every=0, progress=False)
    return timer.rates(steps)


def sb3_ppo(env_id: str, steps: int) -> dict[str, float]:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch import nn

    env = VecNormalize(DummyVecEnv([lambda: gym.make(env_id)]), norm_obs=True, norm_reward=True, gamma=0.99)
    model = PPO("MlpPolicy", env, n_steps=2048, batch_size=64, n_epochs=10,
                learning_rate=lambda progress_left: 3e-4 * progress_left, gamma=0.99, gae_lambda=0.95,
                clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": nn.Tanh},
                device="cpu", verbose=0, seed=0)
    timer = Timer()
    timer.start()
    return timer.rates(model.learn(steps).num_timesteps)


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Train `variant` ("SB3 SAC", "SAC", "DiffSAC K=8", "SB3 PPO", "PPO", "DiffPPO K=8") and time it."""
    import torch

    torch.set_num_threads(1)
    name, _, k = variant.partition(" K=")
    overrides = {"diffusion_steps": int(k)} if k else {}
    if variant == "SB3 SAC":
        return sb3_sac(args.env, args.warmup, args.settle, args.sac_steps)
    if variant == "SB3 PPO":
        return sb3_ppo(args.env, args.ppo_steps)
    if name in ("SAC", "DiffSAC"):
        return diffagent_sac(name.lower(), args.env, args.warmup, args.settle, args.sac_steps, **overrides)
    return diffagent_ppo(name.lower(), args.env, args.ppo_steps, **overrides)


# --- the driver ---------------------------------------------------------------------------------------
def child_run(variant: str, tree: str | None, args: argparse.Namespace) -> dict[str, float] | None:
    """One run of `variant` in a fresh process, diffagent imported from `tree` (None: the installed one); None,
    with the error shown, if it failed."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", variant, "--env", args.env, "--warmup", str(args.warmup),
               "--settle", str(args.settle),
               "--sac-steps", str(args.sac_steps), "--ppo-steps", str(args.ppo_steps)]
    load = os.getloadavg()[0]
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(f"{variant} failed (exit {run.returncode}):\n" + "\n".join(run.stderr.splitlines()[-15:]), flush=True)
        return None
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1000, help="SAC family: random steps before learning starts")
    parser.add_argument("--settle", type=int, default=0, help="SAC family: steps trained after the warm-up before "
                        "the clock starts, which leaves one-time setup out (diffagent's onnxruntime sessions, traced "
                        "at the first action and update, a few seconds)")
    parser.add_argument("--sac-steps", type=int, default=1500, help="SAC family: timed steps after the warm-up")
    parser.add_argument("--ppo-steps", type=int, default=20480, help="PPO family: steps, a multiple of the 2048 of a "
                                                                     "rollout (learn trains whole rollouts)")
    parser.add_argument("--ks", default="4,8,16", help="denoising steps of DiffSAC; DiffPPO runs K = 8")
    parser.add_argument("--only", default=None, help="comma-separated variants to run (default: all)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="also run diffagent's variants from this source tree, labelled NAME")
    parser.add_argument("--tree-variants", default=None, help="comma-separated variants to run from each --tree "
                                                              "(default: every diffagent variant that runs)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    args = parser.parse_args()
    if args.ppo_steps % 2048:
        parser.error("--ppo-steps must be a multiple of 2048, a rollout")
    if args.child:
        print(json.dumps(run_variant(args.child, args)))
        return

    variants = [SAC_FAMILY, "SAC", *(f"DiffSAC K={k}" for k in args.ks.split(",")), PPO_FAMILY, "PPO", "DiffPPO K=8"]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    trees = dict(tree.split("=", 1) for tree in args.tree)
    tree_variants = args.tree_variants.split(",") if args.tree_variants else [v for v in variants
                                                                              if not v.startswith("SB3")]
    runs = [(v, None) for v in variants] + [(v, name) for name in trees for v in tree_variants]
    label = {run: run[0] if run[1] is None else f"{run[0]} ({run[1]})" for run in runs}
    results: dict[str, list[dict[str, float]]] = {label[run]: [] for run in runs}
    failures: list[str] = []
    for round_index in range(args.rounds):
        shift = round_index % len(runs)
        for run in runs[shift:] + runs[:shift]:
            variant, tree_name = run
            result = child_run(variant, trees.get(tree_name), args)
            if result is None:
                failures.append(f"round {round_index + 1} {label[run]}")
                continue
            results[label[run]].append(result)
            print(f"round {round_index + 1} {label[run]}: {result['steps_per_s']:.1f} steps/s, "
                  f"{result['steps_per_cpu_s']:.1f} per CPU-second, load {result['load_before']:.2f}", flush=True)
        report(args, trees, label, results, failures, final=round_index + 1 == args.rounds)


def report(args: argparse.Namespace, trees: dict[str, str], label: dict, results: dict[str, list[dict[str, float]]],
           failures: list[str], final: bool) -> None:
    """The table of medians so far (printed at the end) and the results file (written after every round)."""

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    rows = []
    for (variant, _), name in label.items():
        if not results[name]:
            continue
        family = SAC_FAMILY if "SAC" in variant else PPO_FAMILY
        row = {"variant": name, "steps_per_s": median(name, "steps_per_s"),
               "steps_per_cpu_s": median(name, "steps_per_cpu_s")}
        if results.get(family):
            row["x_sb3"] = row["steps_per_s"] / median(family, "steps_per_s")
            row["x_sb3_cpu"] = row["steps_per_cpu_s"] / median(family, "steps_per_cpu_s")
        rows.append({**row, "runs": results[name]})
    machine = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown CPU")
    loads = [r["load_before"] for runs_of in results.values() for r in runs_of]
    if final:
        print(f"\n{args.env} on {machine} ({os.cpu_count()} cores), one torch thread, {args.rounds} round(s), "
              f"medians; load average {min(loads):.2f}-{max(loads):.2f} at the runs' starts; failed runs: "
              f"{', '.join(failures) or 'none'}\n")
        columns = ["variant", "steps_per_s", "x_sb3", "steps_per_cpu_s", "x_sb3_cpu"]
        print(markdown_table([{c: row.get(c, "") for c in columns} for row in rows], columns))
    write_results(args.out, {"env": args.env, "rounds": args.rounds, "warmup": args.warmup, "settle": args.settle,
                             "sac_steps": args.sac_steps, "ppo_steps": args.ppo_steps, "threads": 1,
                             "trees": trees, "failed_runs": failures, "complete": final, "rows": rows})

if __name__ == "__main__":
    main()
