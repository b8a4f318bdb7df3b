"""WPO's actor gradient under each preconditioning, against SAC's pathwise gradient of the same objective.

Trains SAC (or DiffSAC) for a while, then, at that state and with its critic and temperature, draws
minibatches and computes the policy-parameter gradient of:

    pathwise   SAC's actor loss E[alpha L - min Q] through the reparameterised chain (the reference)
    wpo-off    the WPO loss with no preconditioning
    wpo-log    the WPO loss with each kernel's gradients scaled by the inverse Fisher in (mean, log std)
               coordinates: sigma^2 on the mean, 1/2 on the log std (diffagent before this measurement)
    wpo-sigma  the same in (mean, sigma) coordinates, as acme's WPO: sigma^2 on the mean, sigma^2 / 2
               on sigma, i.e. sigma^2 / 2 on the log std (diffagent's `natural_gradient` now)

and prints, per estimator, the mean pairwise cosine between minibatch gradients (how consistent a
step is) and the cosine of its mean gradient with the mean pathwise gradient (whether it points the
same way). docs/algorithms.md, "WPO's preconditioning", quotes the output.

    python benchmarks/wpo_gradients.py --env Hopper-v4 --train-steps 20000 --policy gaussian
    python benchmarks/wpo_gradients.py --env Hopper-v4 --train-steps 20000 --policy diffusion
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import warnings

import numpy as np
import torch

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)

PRECONDITIONINGS = ("off", "log", "sigma")


def log_std_coordinates(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse Fisher in (mean, log std) coordinates: gradients times sigma^2 (mean) and 1/2 (log std)."""
    var = torch.exp(2.0 * log_std).detach()
    return var * mean + ((1.0 - var) * mean).detach(), 0.5 * log_std + (0.5 * log_std).detach()


def flat_gradient(loss: torch.Tensor, policy: torch.nn.Module) -> torch.Tensor:
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--policy", choices=("gaussian", "diffusion"), default="gaussian")
    parser.add_argument("--train-steps", type=int, default=20_000)
    parser.add_argument("--minibatches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from diffagent import Agent
    from diffagent.algos import wpo as wpo_module
    from diffagent.algos.wpo import WPO
    from diffagent.config import make_config

    sac_name, wpo_name = ("sac", "wpo") if args.policy == "gaussian" else ("diffsac", "diffwpo")
    agent = Agent(sac_name, args.env, seed=args.seed)
    agent.learn(args.train_steps, eval_every=0, progress=False)
    sac = agent.algorithm
    alpha = sac.alpha
    log_std_of = {}  # the policy's per-kernel std, reported beside the cosines

    def wpo_for(preconditioning: str) -> WPO:
        config = make_config(wpo_name, {"seed": args.seed, "buffer_size": 1,
                                        "fisher_preconditioning": preconditioning != "off"})
        algo = WPO(config.algorithm, agent.policy, agent._make_env, agent.device, args.seed)
        algo.critic.load_state_dict(sac.critic.state_dict())
        algo.policy_old = copy.deepcopy(agent.policy).requires_grad_(False)  # KL and its gradient are 0 here
        return algo

    wpos = {p: wpo_for(p) for p in PRECONDITIONINGS}
    gradients: dict[str, list[torch.Tensor]] = {name: [] for name in ("pathwise", *(f"wpo-{p}" for p in PRECONDITIONINGS))}
    for i in range(args.minibatches):
        batch = sac.buffer.sample(256, torch.Generator().manual_seed(10_000 + i))
        obs = agent.policy.obs_normalizer(batch.obs)
        sac.critic.requires_grad_(False)
        torch.manual_seed(i)
        loss, _ = sac.actor_loss(batch.obs, obs, alpha)
        gradients["pathwise"].append(flat_gradient(loss, agent.policy))
        for p, algo in wpos.items():
            algo.critic.requires_grad_(False)
            torch.manual_seed(i)
            with monkeypatch_natural_gradient(wpo_module, log_std_coordinates if p == "log" else None):
                loss, _ = algo.actor_loss(batch.obs, obs, alpha)
            gradients[f"wpo-{p}"].append(flat_gradient(loss, agent.policy))
        with torch.no_grad():
            _, log_std = agent.policy.kernels(batch.obs, agent.policy.sample(batch.obs).chain)
            log_std_of.setdefault("mean_std", []).append(float(log_std.exp().mean()))

    reference = torch.stack(gradients["pathwise"]).mean(0)
    rows = []
    for name, grads in gradients.items():
        pairwise = [cosine(a, b) for a, b in itertools.combinations(grads, 2)]
        rows.append({"estimator": name, "minibatch_cosine": float(np.mean(pairwise)),
                     "cosine_with_pathwise": cosine(torch.stack(grads).mean(0), reference)})
    print(f"\n{wpo_name} vs {sac_name} pathwise on {args.env} after {args.train_steps:,} steps of {sac_name} "
          f"(seed {args.seed}; alpha {float(alpha):.3g}; mean kernel std {np.mean(log_std_of['mean_std']):.3g}; "
          f"{args.minibatches} minibatches of 256)\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out or f"benchmarks/results/wpo_gradients_{args.policy}.json",
                  {"env": args.env, "policy": args.policy, "train_steps": args.train_steps, "seed": args.seed,
                   "alpha": float(alpha), "mean_kernel_std": float(np.mean(log_std_of["mean_std"])), "rows": rows})


@contextlib.contextmanager
def monkeypatch_natural_gradient(module, replacement):
    """Run WPO's loss with another preconditioning (None: its own)."""
    original = module.natural_gradient
    module.natural_gradient = replacement or original
    try:
        yield
    finally:
        module.natural_gradient = original


if __name__ == "__main__":
    main()
