"""How far -E[L] sits below the true entropy of a policy's action (docs/algorithms.md, "The entropy target").

The path log-ratio L of a forward chain bounds log pi from above in expectation,
E[L] = E[log pi(a|s)] + E[KL(forward path | a  ||  backward path | a)], so -E[L] is a *lower* bound on
the entropy H(pi(.|s)) of the squashed action. Importance sampling with the backward kernel
(fixed, or learned) as proposal gives the other side: for an action's latent x_K, draw N backward paths
x_{K-1..0} ~ p(. | x_K) and weigh each by w = log p_0(x_0) + sum_k [log q_theta(x_{k+1}|x_k) - log p(x_k|x_{k+1})];
then log mean_n exp(w_n) is a lower bound of log pi(x_K) in expectation (Jensen), which tightens as
N grows (the importance-weighted bound), so -E[log mean exp w + squash] is an *upper* bound on H.
For the Gaussian (K = 1, backward kernel = prior) every weight is exactly log pi and both bounds are
the entropy itself.

The importance-weighted bound tightens slowly when the backward kernel is a poor proposal (a
trained chain), so `knn_entropy` gives a third, model-free estimate between them: the
Kozachenko-Leonenko nearest-neighbour estimator on many sampled latents x_K, plus the tanh term.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffagent.policies.base import Policy


def knn_entropy(policy: Policy, obs: torch.Tensor, samples: int = 2048, k: int = 5) -> torch.Tensor:
    """Per-state entropy of the squashed action from `samples` actions each (Kozachenko-Leonenko, k-th neighbour).

    H(x) ~ psi(n) - psi(k) + log V_d + d * mean_i log r_i, with r_i the distance from x_i to its k-th
    nearest neighbour and V_d the volume of the unit d-ball; H(a) = H(x_K) - E[squash] for a = tanh(x_K).
    Consistent as `samples` grows; estimated on the latent, where the density has no hard edges.
    """
    with torch.no_grad():
        batch, dim = obs.shape[0], policy.act_dim
        sample = policy.sample(obs.repeat_interleave(samples, 0))
        latents = sample.chain[:, -1].view(batch, samples, dim)
        distances = torch.cdist(latents, latents)  # (B, n, n); the zero self-distance is the 0-th neighbour
        radius = distances.topk(k + 1, dim=-1, largest=False).values[..., k].clamp_min(1e-12)
        log_unit_ball = 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1)
        digamma = torch.special.digamma
        latent_entropy = (digamma(torch.tensor(float(samples))) - digamma(torch.tensor(float(k))) + log_unit_ball
                          + dim * radius.log().mean(-1))
        return latent_entropy - sample.log_probs.squash.view(batch, samples).mean(1)


class EntropyBounds(NamedTuple):
    """Per-state bounds on the entropy of the squashed action, in nats, each of shape (B,)."""

    lower: torch.Tensor  # -E[L] over forward chains
    upper: torch.Tensor  # importance-weighted estimate over backward paths


@torch.no_grad()
def importance_weighted_log_density(policy: Policy, obs: torch.Tensor, latents: torch.Tensor,
                                    paths: int = 256) -> torch.Tensor:
    """log pi(x_K | s) of each latent x_K (B, A) at its observation (B, obs), importance-weighted over `paths`
    backward paths each (B * paths chains are scored at once); a lower bound in expectation, tight as paths
    grows. The squashed action's log-density adds the tanh term, `log_probs.squash` of the chain."""
    obs_per_path = obs.repeat_interleave(paths, 0)
    chains = policy.backward_paths(obs_per_path, latents.repeat_interleave(paths, 0))
    log_probs = policy.score(obs_per_path, chains)
    weights = (log_probs.prior + log_probs.step_ratios.sum(-1)).view(latents.shape[0], paths)
    return torch.logsumexp(weights, dim=1) - math.log(paths)


@torch.no_grad()
def entropy_bounds(policy: Policy, obs: torch.Tensor, samples: int = 16, paths: int = 256) -> EntropyBounds:
    """Bracket H(pi(.|s)) for each of the B observations with `samples` actions each and `paths`
    backward paths per action (B * samples * paths chains are scored at once: size them to memory)."""
    batch = obs.shape[0]
    obs_per_sample = obs.repeat_interleave(samples, 0)
    forward = policy.sample(obs_per_sample)
    lower = -forward.log_ratio.view(batch, samples).mean(1)
    log_density = importance_weighted_log_density(policy, obs_per_sample, forward.chain[:, -1], paths)
    upper = -(log_density + forward.log_probs.squash).view(batch, samples).mean(1)
    return EntropyBounds(lower, upper)
