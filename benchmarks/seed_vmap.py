"""Several seeds' updates as one: does torch.func.vmap over stacked parameters deliver what --batch-scale promised?

`update_profile.py --batch-scale 5` found that an update on five times the rows costs about twice one update
(docs/throughput.md, "What stands in the way"), the case for training several seeds in one process. The cheapest
way to give every network a seed axis without rewriting the algorithm is torch.func: stack each seed's
parameters (`stack_module_state`), run SAC's losses through `functional_call` under `vmap`, and step one fused
Adam over the stacked tensors (Adam is elementwise, so the seeds stay independent). Here that update, for S
seeds of the same configuration, is timed against the library's `SAC.update` run S times in turn, in alternating
blocks of CPU time, on random batches of Hopper-v4's shapes. The vmapped update computes what `SAC.update` does
(`SoftTarget`, the critics' loss, the pathwise actor loss, Polyak averaging) with alpha fixed; before timing,
its losses are checked against each seed's own computation on the same batch and noise.

    python benchmarks/seed_vmap.py --algos sac,diffsac --seeds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from common import markdown_table, write_results
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

warnings.filterwarnings("ignore", category=DeprecationWarning)

ENV_ID, BATCH = "Hopper-v4", 256


class SeedLosses(nn.Module):
    """One seed's SAC losses as a module, so that functional_call can run them on one slice of stacked parameters."""

    def __init__(self, algorithm):
        super().__init__()
        # the policy is reached through the target alone: functional_call does not restore a module held twice
        self.critic, self.soft_target = algorithm.critic, algorithm.soft_target

    def forward(self, part: int, obs, actions, rewards, next_obs, terminated, noise, alpha):
        policy = self.soft_target.policy
        if part == 0:  # the critics' loss, as SAC.update
            with torch.no_grad():
                target = self.soft_target(next_obs, noise, rewards, terminated, alpha)
            q = self.critic(policy.obs_normalizer(obs), actions)
            return 0.5 * (q - target).square().mean(1).sum()
        sample = policy.sample(obs, noise)  # the pathwise actor loss, as SAC.actor_loss
        q = self.critic(policy.obs_normalizer(obs), sample.action).min(0).values
        return (alpha * sample.log_ratio - q).mean()


class VmappedSeeds:
    """S algorithms' updates as one: stacked parameters, vmapped losses, one fused Adam per network."""

    def __init__(self, algorithms):
        modules = [SeedLosses(algorithm) for algorithm in algorithms]
        self.base = modules[0]
        params, self.buffers = stack_module_state(modules)
        self.params = {name: value.detach().requires_grad_(not name.startswith("soft_target.critic_target."))
                       for name, value in params.items()}
        self.critic_names = [name for name in self.params if name.startswith("critic.")]
        self.target_names = ["soft_target.critic_target." + name[len("critic."):] for name in self.critic_names]
        policy_names = [name for name in self.params if name.startswith("soft_target.policy.")]
        config = algorithms[0].config
        self.critic_optimizer = torch.optim.Adam([self.params[n] for n in self.critic_names], lr=config.critic_lr,
                                                 fused=True)
        self.actor_optimizer = torch.optim.Adam([self.params[n] for n in policy_names if self.params[n].requires_grad],
                                                lr=config.actor_lr, fused=True)
        self.tau = config.tau
        self.alpha = torch.stack([algorithm.alpha for algorithm in algorithms])
        self.losses = vmap(self._loss, in_dims=(None, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def _loss(self, part, params, buffers, *inputs):
        return functional_call(self.base, (params, buffers), (part, *inputs))

    def _minimise(self, part: int, optimizer, inputs: tuple, noise: torch.Tensor) -> torch.Tensor:
        """One Adam step on every seed's loss `part` at once (their sum: each seed's parameters see only theirs)."""
        loss = self.losses(part, self.params, self.buffers, *inputs, noise, self.alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        return loss.detach()

    def update(self, batch, critic_noise, actor_noise) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = (batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated)
        critic_loss = self._minimise(0, self.critic_optimizer, inputs, critic_noise)
        for name in self.critic_names:  # the actor's loss gives the critics no gradient, as in SAC.update
            self.params[name].requires_grad_(False)
        actor_loss = self._minimise(1, self.actor_optimizer, inputs, actor_noise)
        for name in self.critic_names:
            self.params[name].requires_grad_(True)
        with torch.no_grad():
            torch._foreach_lerp_([self.params[n] for n in self.target_names],
                                 [self.params[n] for n in self.critic_names], self.tau)
        return critic_loss, actor_loss


def random_batch(algorithm, seeds: int | None = None):
    """A batch of random transitions with Hopper's shapes (stacked over `seeds` if given), and the update's noise."""
    from diffagent.algos.replay import Batch

    lead = () if seeds is None else (seeds,)
    obs_dim, act_dim = algorithm.policy.obs_dim, algorithm.policy.act_dim
    batch = Batch(torch.randn(*lead, BATCH, obs_dim), torch.rand(*lead, BATCH, act_dim) * 2 - 1,
                  torch.randn(*lead, BATCH), torch.randn(*lead, BATCH, obs_dim), torch.zeros(*lead, BATCH))
    noise_shape = (*lead, *algorithm.policy.noise_shape(BATCH))
    return batch, torch.randn(noise_shape), torch.randn(noise_shape)


def check_losses(algorithms, vmapped: VmappedSeeds) -> float:
    """The largest relative difference between the vmapped losses and each seed's own, on one batch and noise."""
    batch, critic_noise, actor_noise = random_batch(algorithms[0], len(algorithms))
    inputs = (batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated)
    worst = 0.0
    for part, noise in ((0, critic_noise), (1, actor_noise)):
        together = vmapped.losses(part, vmapped.params, vmapped.buffers, *inputs, noise, vmapped.alpha)
        for seed, algorithm in enumerate(algorithms):
            alone = SeedLosses(algorithm)(part, *(x[seed] for x in inputs), noise[seed], algorithm.alpha)
            worst = max(worst, float((together[seed] - alone).abs() / alone.abs().clamp_min(1e-6)))
    return worst


def cpu_ms(run, updates: int) -> float:
    started = time.process_time()
    for _ in range(updates):
        run()
    return 1000 * (time.process_time() - started) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="sac,diffsac")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=10, help="updates per timed block")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks of each")
    parser.add_argument("--out", default="benchmarks/results/seed_vmap.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from diffagent import Agent
    from diffagent.bench.grid import load_hyperparameters

    hyperparameters = Path(__file__).resolve().parents[1] / "zoo" / "hyperparams" / f"{ENV_ID}.toml"
    rows = []
    for algo in args.algos.split(","):
        settings = load_hyperparameters(hyperparameters, algo)
        algorithms = [Agent(algo, ENV_ID, seed=seed, **settings).algorithm for seed in range(args.seeds)]
        vmapped = VmappedSeeds(algorithms)
        worst = check_losses(algorithms, vmapped)

        def in_turn():
            for algorithm in algorithms:
                algorithm.update(random_batch(algorithm)[0])

        def together():
            vmapped.update(*random_batch(algorithms[0], args.seeds))

        for run in (in_turn, together):  # warm-up: onnxruntime sessions, allocator
            cpu_ms(run, 3)
        times: dict[str, list[float]] = {"in_turn": [], "vmapped": []}
        for _ in range(args.blocks):
            times["in_turn"].append(cpu_ms(in_turn, args.updates))
            times["vmapped"].append(cpu_ms(together, args.updates))
        in_turn_ms, vmapped_ms = statistics.median(times["in_turn"]), statistics.median(times["vmapped"])
        rows.append({"algo": algo, "seeds": args.seeds, "in_turn_cpu_ms": in_turn_ms, "vmapped_cpu_ms": vmapped_ms,
                     "speedup": in_turn_ms / vmapped_ms, "max_relative_loss_difference": worst,
                     "load_average": os.getloadavg()[0]})
        print(rows[-1], flush=True)
    print(f"\nCPU ms for one update of each of {args.seeds} seeds: SAC.update in turn, or one vmapped update "
          f"(median of {args.blocks} alternating blocks of {args.updates})\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"env": ENV_ID, "batch": BATCH, "rows": rows})


if __name__ == "__main__":
    main()
