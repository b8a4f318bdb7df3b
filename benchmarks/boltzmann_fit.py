"""How close a chain can come to the Boltzmann masses of the unequal bandit when nothing but the fit is in the way.

DiffSAC on diffagent/UnequalPeaks-v0 under-weights the tallest mode (docs/algorithms.md, "The multimodal claim").
Is the fit unfinished (the critic, too few steps) or biased (the objective)? Here the actor loss of DiffSAC,
E[alpha L - r(a)], is minimised with the bandit's exact reward in place of the critic, at DiffSAC's settings on
that task (alpha 0.1, drift network 64x64, lr 1e-3, batch 256), and the mode shares are scored as the grid's
report scores them (diffagent.multimodal.mode_coverage) after each budget of updates.

    python benchmarks/boltzmann_fit.py --updates 4000,16000,48000 --diffusion-steps 8,16 --seeds 0,1

`--lr-schedule cosine` anneals the learning rate to 1e-5 over the largest budget, so that what is left at the
end is the objective's optimum rather than Adam's noise around it; `--step-sizes` sets the chain's eta schedule
(first:last step, DiffSAC's default 0.1:0.01); `--learn-backward-kernel` gives the chain its own backward network,
which closes the bound's gap; `--alpha-start` anneals the temperature down to 0.1 over the first half of the fit.
The objective printed is the mean of the last 500 updates' losses (at alpha = 0.1; E[alpha L - r] alone, without
the --forward-kl term).

`--loss log-variance --explore c` fits by the log-variance loss instead: Var[L - r / alpha] over chains drawn with
every noise scaled by c and held fixed, each re-scored under the current chain. It is zero only where the chain's
path measure matches exp(r / alpha) times the backward kernel, whatever chains it is evaluated on, so a proposal
wider than the chain (c > 1) keeps charging for mass missing from a peak that the chain itself no longer visits:
meant as a mass-covering loss, where E[alpha L - r] (reverse KL) is mode-seeking. Measured, it does not fit the
bandit (docs/algorithms.md, section 10). Its objective column is E[alpha L - r] over 500 batches of fresh chains.

`--forward-kl w` adds a mass-covering term to the reverse-KL loss, w alpha times forward_kl_loss: the chain's
forward kernels fitted by maximum likelihood to paths drawn backward, through the fixed backward kernel, from the
target's own actions (uniform proposals weighted by softmax(r / alpha)). Reverse KL charges a missing or
under-weighted mode only through the samples the chain draws; this term charges it through the target's.

The objective splits in two: E[alpha L - r] = alpha (KL(pi || exp(r / alpha) / Z) + gap) - alpha log Z, where gap
is how far -E[L] lies below the action's entropy (diffagent.policies.entropy). Each budget's row gives the gap
(importance-weighted over backward paths, and by nearest neighbours) and the KL of the action's marginal that
the rest implies, so a fit that matches the masses but pays a wide gap can be told from one that drops modes.
Per mode (`mode_terms`) it gives the chains' mean loss L - r / alpha, the gap and the shape's KL to the target
inside the mode, the allocation the objective prefers for the fit's shapes, and the one the gaps alone would give.
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np
import torch
from common import markdown_table, write_results

from diffagent.algos.sac import PROPOSAL_LIMIT

warnings.filterwarnings("ignore", category=DeprecationWarning)

ALPHA, BATCH, LEARNING_RATE, FINAL_LEARNING_RATE = 0.1, 256, 1e-3, 1e-5
GAP_SAMPLES, GAP_PATHS, KNN_SAMPLES = 256, 1024, 8192  # the entropy estimates at each budget, at the bandit's one state


def torch_reward(bandit, actions: torch.Tensor) -> torch.Tensor:
    """The bandit's r(a) (FourPeaksBandit.reward) in torch, so that the chain is trained through it."""
    centres = torch.as_tensor(bandit.centres, dtype=actions.dtype)
    heights = torch.as_tensor(bandit.heights, dtype=actions.dtype)
    squared = (actions[:, None, :] - centres).square().sum(-1)
    return (heights * torch.exp(-squared / (2.0 * bandit.width ** 2))).sum(-1)


def forward_kl_loss(policy, bandit, alpha: float, proposals: int) -> torch.Tensor:
    """A mass-covering term: the chain's forward kernels fitted by maximum likelihood to paths drawn backward from
    exp(r / alpha)'s own actions (uniform proposals over the box, self-normalised weights softmax(r / alpha)),
    -sum_i w_i sum_k log q_theta(x_{k+1} | x_k) along each path. Its expectation is the forward (mass-covering)
    KL of the path measures up to terms the chain's parameters do not move."""
    with torch.no_grad():
        actions = (torch.rand(proposals, policy.act_dim) * 2.0 - 1.0).clamp(-PROPOSAL_LIMIT, PROPOSAL_LIMIT)
        weights = torch.softmax(torch_reward(bandit, actions) / alpha, dim=0)
    return -(weights * policy.path_log_likelihood(torch.zeros(proposals, 1), actions)).sum()


def mode_terms(policy, bandit, samples: int, density_samples: int, paths: int) -> dict[str, np.ndarray]:
    """Per mode, over `samples` fresh chains: its share, and its chains' mean loss L - r / alpha in nats; over the
    first `density_samples` of them, the mean gap L - log pi(a), log pi importance-weighted over `paths` backward
    paths.

    Moving mass from mode i to mode j changes E[L - r / alpha] by the difference of the modes' mean losses, so a
    fit whose allocation the objective no longer pushes has equal means. By the chain rule the mean loss of mode m
    is log(share_m / mass_m) + KL_m + gap_m - log Z, with KL_m the KL of the chain's shape inside the mode to the
    target's there: the allocation the objective prefers for given shapes is mass_m exp(-(KL_m + gap_m)),
    normalised (docs/algorithms.md, section 10)."""
    from diffagent.multimodal import mode_index
    from diffagent.policies.entropy import importance_weighted_log_density

    with torch.random.fork_rng(), torch.no_grad():
        sample = policy.sample(torch.zeros(samples, 1))
        loss = (sample.log_ratio - torch_reward(bandit, sample.action) / ALPHA).double().numpy()
        head = slice(0, density_samples)
        log_density = torch.cat([importance_weighted_log_density(policy, torch.zeros(len(latents), 1), latents, paths)
                                 for latents in sample.chain[head, -1].split(64)])
        gap = (sample.log_ratio[head] - log_density - sample.log_probs.squash[head]).double().numpy()
    modes = mode_index(sample.action.double().numpy(), bandit.centres)
    num_modes = len(bandit.centres)
    in_mode = [modes == m for m in range(num_modes)]
    def mean_over(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean()) if mask.any() else np.nan  # a mode the chain dropped has no chains to score

    return {"shares": np.array([np.mean(mask) for mask in in_mode]),
            "loss": np.array([mean_over(loss, mask) for mask in in_mode]),
            "gap": np.array([mean_over(gap, mask[head]) for mask in in_mode])}


def preferred_allocation(targets: np.ndarray, on_mode_mass: float, per_mode_cost: np.ndarray) -> np.ndarray:
    """The shares the objective prefers when a chain in mode m costs per_mode_cost[m] nats (KL_m + gap_m): the
    target's masses times exp(-cost), spread over the mass the fit puts on the modes (mode_terms)."""
    weights = targets * np.exp(-(per_mode_cost - per_mode_cost.min()))
    return weights * on_mode_mass / weights.sum()


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
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--step-sizes", default="0.1:0.01", help="comma-separated first:last step sizes eta")
    parser.add_argument("--learn-backward-kernel", action="store_true",
                        help="give the chain a learned backward kernel (its own network, fitted on the same objective)")
    parser.add_argument("--alpha-start", type=float, default=None,
                        help="anneal the temperature geometrically from this down to 0.1 over the first half of the "
                             "largest budget (the fit starts hot and spread), then hold it")
    parser.add_argument("--loss", choices=("reverse-kl", "log-variance"), default="reverse-kl",
                        help="DiffSAC's actor loss E[alpha L - r] (pathwise), or the log-variance loss "
                             "Var[L - r / alpha] on chains drawn with every noise scaled by --explore and held fixed")
    parser.add_argument("--explore", type=float, default=1.0,
                        help="with --loss log-variance: the scale of the proposal's noise (1 = the chain itself)")
    parser.add_argument("--explore-prior-only", action="store_true",
                        help="with --explore: scale the prior draw x_0 alone, so that every later step of the proposal is "
                             "one the chain itself would take")
    parser.add_argument("--forward-kl", type=float, default=0.0,
                        help="add this weight times alpha times the mass-covering term (forward_kl_loss) to the "
                             "reverse-KL loss")
    parser.add_argument("--forward-kl-fade", action="store_true",
                        help="with --forward-kl: lower its weight linearly to zero between half and three quarters of "
                             "the largest budget, so that reverse KL alone finishes the fit")
    parser.add_argument("--proposals", type=int, default=1024,
                        help="with --forward-kl: uniform actions per update whose weights softmax(r / alpha) stand "
                             "for exp(r / alpha)")
    parser.add_argument("--mode-samples", type=int, default=131072,
                        help="fresh chains per budget for each mode's share and mean loss L - r / alpha")
    parser.add_argument("--mode-gap-samples", type=int, default=2048,
                        help="of those, how many have their gap L - log pi(a) measured (over GAP_PATHS backward paths)")
    parser.add_argument("--out", default="benchmarks/results/boltzmann_fit.json")
    args = parser.parse_args()
    if args.forward_kl_fade and not args.forward_kl:
        parser.error("--forward-kl-fade fades the forward-KL term: add --forward-kl WEIGHT")
    if args.forward_kl and args.loss != "reverse-kl":
        parser.error("--forward-kl adds to the reverse-KL loss: drop --loss log-variance")
    if args.loss != "log-variance" and (args.explore != 1.0 or args.explore_prior_only):
        parser.error("--explore and --explore-prior-only shape the log-variance loss's proposal: add --loss log-variance")
    torch.set_num_threads(1)

    from diffagent import Agent
    from diffagent.multimodal import UNEQUAL_ENV_ID, make_bandit, mode_coverage
    from diffagent.policies.entropy import entropy_bounds, knn_entropy

    bandit = make_bandit(UNEQUAL_ENV_ID)
    budgets = sorted(map(int, args.updates.split(",")))
    floor = objective_floor(bandit)
    step_sizes = [tuple(map(float, pair.split(":"))) for pair in args.step_sizes.split(",")]
    rows = []
    for num_steps, (step_size_max, step_size_min), seed in itertools.product(
            map(int, args.diffusion_steps.split(",")), step_sizes, map(int, args.seeds.split(","))):
        agent = Agent("diffsac", UNEQUAL_ENV_ID, seed=seed, diffusion_steps=num_steps, policy_hidden_sizes=[64, 64],
                      autotune_alpha=False, alpha_init=ALPHA, step_size_max=step_size_max,
                      step_size_min=step_size_min, learn_backward_kernel=args.learn_backward_kernel)
        optimizer = torch.optim.Adam(agent.policy.parameters(), lr=LEARNING_RATE)
        obs = torch.zeros(BATCH, 1)
        losses: list[float] = []
        for budget in budgets:
            for update in range(len(losses), budget):
                if args.lr_schedule == "cosine":
                    optimizer.param_groups[0]["lr"] = FINAL_LEARNING_RATE + 0.5 * LEARNING_RATE * (
                        1.0 + np.cos(np.pi * update / budgets[-1]))
                alpha = ALPHA
                if args.alpha_start is not None:
                    alpha *= (args.alpha_start / ALPHA) ** max(0.0, 1.0 - 2.0 * update / budgets[-1])
                if args.loss == "reverse-kl":
                    sample = agent.policy.sample(obs)
                    loss = objective_term = (alpha * sample.log_ratio - torch_reward(bandit, sample.action)).mean()
                    weight = args.forward_kl
                    if args.forward_kl_fade:
                        weight *= min(1.0, max(0.0, 3.0 - 4.0 * update / budgets[-1]))
                    if weight:
                        loss = loss + weight * alpha * forward_kl_loss(agent.policy, bandit, alpha, args.proposals)
                else:
                    with torch.no_grad():
                        proposal_noise = torch.randn(agent.policy.noise_shape(BATCH))
                        proposal_noise[:, :1 if args.explore_prior_only else None] *= args.explore
                        chain = agent.policy.sample(obs, proposal_noise).chain
                    log_weight = (agent.policy.score(obs, chain).log_ratio
                                  - torch_reward(bandit, torch.tanh(chain[:, -1])) / alpha)
                    loss = objective_term = log_weight.var()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(objective_term.detach()))  # without the forward-KL term: the objective
            coverage = mode_coverage(agent, alpha=ALPHA, bandit=bandit)
            with torch.random.fork_rng():  # the fit's random stream is the same with or without this measurement
                bounds = entropy_bounds(agent.policy, obs[:1], samples=GAP_SAMPLES, paths=GAP_PATHS)
                knn = float(knn_entropy(agent.policy, obs[:1], samples=KNN_SAMPLES))
            lower, upper = float(bounds.lower), float(bounds.upper)
            modes = mode_terms(agent.policy, bandit, args.mode_samples, args.mode_gap_samples, GAP_PATHS)
            targets = np.asarray(coverage.targets)
            cost = modes["loss"] - np.log(modes["shares"] / targets) - floor / ALPHA  # KL_m + gap_m, nats
            preferred = preferred_allocation(targets, modes["shares"].sum(), cost)
            gap_only = preferred_allocation(targets, modes["shares"].sum(), modes["gap"])
            if args.loss == "reverse-kl":
                objective = float(np.mean(losses[-500:]))
            else:  # the loss is a variance: E[alpha L - r] of the chain itself, over as many chains as 500 updates see
                with torch.random.fork_rng(), torch.no_grad():
                    sample = agent.policy.sample(torch.zeros(500 * BATCH, 1))
                    objective = float((ALPHA * sample.log_ratio - torch_reward(bandit, sample.action)).mean())
            rows.append({"K": num_steps, "step_sizes": f"{step_size_max:g}:{step_size_min:g}",
                         "backward_kernel": "learned" if args.learn_backward_kernel else "fixed",
                         "alpha_start": args.alpha_start or ALPHA, "loss": args.loss, "explore": args.explore,
                         "explore_prior_only": args.explore_prior_only, "forward_kl": args.forward_kl,
                         "forward_kl_fade": args.forward_kl_fade,
                         "seed": seed,
                         "lr_schedule": args.lr_schedule, "updates": budget,
                         "shares_pct": " / ".join(f"{100 * s:.1f}" for s in coverage.shares),
                         "targets_pct": " / ".join(f"{100 * t:.1f}" for t in coverage.targets),
                         "max_abs_error_points": coverage.max_abs_error_points,
                         "total_variation_pct": 100 * coverage.total_variation,
                         "off_mode_pct": 100 * coverage.off_mode_share,
                         "objective": objective, "minus_mean_L": lower, "entropy_importance_weighted": upper,
                         "entropy_knn": knn, "gap_nats": upper - lower, "gap_knn_nats": knn - lower,
                         "marginal_kl_nats": (objective - floor) / ALPHA - (upper - lower),
                         "marginal_kl_knn_nats": (objective - floor) / ALPHA - (knn - lower),
                         "mode_loss_nats": " / ".join(f"{m:.3f}" for m in modes["loss"]),
                         "mode_loss_spread_nats": float(np.ptp(modes["loss"])),
                         "mode_gap_nats": " / ".join(f"{g:.3f}" for g in modes["gap"]),
                         "mode_shape_kl_nats": " / ".join(f"{c:.3f}" for c in cost - modes["gap"]),
                         "preferred_shares_pct": " / ".join(f"{100 * p:.1f}" for p in preferred),
                         "preferred_max_abs_error_points": float(100 * np.max(np.abs(preferred - targets))),
                         "gap_only_shares_pct": " / ".join(f"{100 * p:.1f}" for p in gap_only)})
            print(rows[-1], flush=True)
    print(f"\nA chain fitted to exp(r / {ALPHA}) with the exact reward ({BATCH} chains per update); the objective's "
          f"floor, -alpha log Z, is {floor:.4f}\n")
    print(markdown_table(rows, list(rows[0])))
    write_results(args.out, {"alpha": ALPHA, "batch": BATCH, "learning_rate": LEARNING_RATE,
                             "lr_schedule": args.lr_schedule, "objective_floor": floor, "rows": rows})


if __name__ == "__main__":
    main()
