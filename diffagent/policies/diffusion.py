"""The diffusion-chain policy of DiffSAC, DiffPPO and DiffWPO (docs/algorithms.md, section 2).

    x_0 ~ N(0, sigma_0^2 I)
    x_{k+1} ~ q_theta(. | x_k, s, k) = N(x_k + eta_k [grad log p_0(x_k) + f_theta(x_k, s, k)], 2 eta_k I)
    p(x_k | x_{k+1}, s, k)         = N(x_{k+1} + eta_k [grad log p_0(x_{k+1}) + g_phi(x_{k+1}, s, k)],
                                       2 eta_k exp(2 h_phi(x_{k+1}, s, k)) I)
    a = tanh(x_K)

g_phi = h_phi = 0 (no network) unless `learn_backward_kernel`: then a second network, trained on the same
objective E[L], fits the backward kernel's mean and scale to the chain's true reverse, which closes the gap
between -E[L] and the entropy (docs/algorithms.md, section 10).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from diffagent.nn import ACTIVATIONS
from diffagent.policies.base import Kernel, Policy


# A learned backward kernel's std is the fixed kernel's times exp(h_phi), h_phi held within the Gaussian policy's
# log-std bounds. Drawn backward from an action the chain never visits (the forward-KL term's uniform proposals
# reach the box's edge), an unbounded h_phi grew with the latent and compounded over the steps: on the unequal
# bandit one such path reached 1e9 in two steps and inf in the third, and the run's weights became NaN.
BACKWARD_LOG_SCALE_MIN, BACKWARD_LOG_SCALE_MAX = -5.0, 2.0


class DiffusionPolicy(Policy):
    """K learned Langevin-like denoising steps from a Gaussian prior to the action.

    f_theta sees (s, x_k, k). Its first layer is split so the state's share, W_s s + b, is computed
    once per chain rather than once per step; the step enters as a learned embedding (K is fixed).
    The last layer starts near zero, so the untrained chain is a Langevin walk on the prior.
    Step sizes eta_k start on a linear schedule from `step_size_max` (first step) down to
    `step_size_min` (last step, which sets the finest noise the policy can reach) and are learned
    per step and action dimension when `learn_step_size` is set. With `learn_backward_kernel` the
    backward kernel gets its own drift network g_phi(x_{k+1}, s, k) (`BackwardDrift`).
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: torch.Tensor, action_high: torch.Tensor, *,
                 num_steps: int = 8, hidden_sizes: Sequence[int] = (256, 256), activation: str = "gelu",
                 normalize_obs: bool = False, prior_std: float = 1.0, step_size_max: float = 0.1,
                 step_size_min: float = 0.01, learn_step_size: bool = True, learn_backward_kernel: bool = False):
        super().__init__(obs_dim, act_dim, num_steps, action_low, action_high, normalize_obs)
        self.obs_in, self.latent_in, self.step_embedding, self.drift = drift_layers(obs_dim, act_dim, num_steps,
                                                                                   hidden_sizes, activation, act_dim)
        nn.init.uniform_(self.drift[-1].weight, -1e-3, 1e-3)
        self.register_buffer("log_prior_std", torch.tensor(math.log(prior_std)))
        schedule = torch.linspace(step_size_max, step_size_min, num_steps).log()
        self.log_step_size = nn.Parameter(schedule[:, None].repeat(1, act_dim), requires_grad=learn_step_size)
        # made last, so that the forward chain's initial weights are the same with and without it
        self.backward_drift = (BackwardDrift(obs_dim, act_dim, num_steps, hidden_sizes, activation)
                               if learn_backward_kernel else None)

    def context(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The state's share of f_theta's first layer, computed once per chain, and the (normalised) state, which a
        learned backward kernel reads only when a chain is scored: acting never pays for it."""
        return self.obs_in(obs), obs

    def prior_log_std(self) -> torch.Tensor:
        return self.log_prior_std

    def _prior_score(self, x: torch.Tensor) -> torch.Tensor:
        return -x * torch.exp(-2.0 * self.log_prior_std)

    def _step(self, step: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_eta = self.log_step_size[step]
        return torch.exp(log_eta), 0.5 * (math.log(2.0) + log_eta)  # eta_k and log sqrt(2 eta_k)

    def forward_kernel(self, context: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor,
                       step: int | torch.Tensor) -> Kernel:
        eta, log_std = self._step(step)
        f = self.drift(context[0] + self.latent_in(x) + self.step_embedding[step])
        return x + eta * (self._prior_score(x) + f), log_std.expand_as(x)

    def backward_kernel(self, context: tuple[torch.Tensor, torch.Tensor], x_next: torch.Tensor,
                        step: int | torch.Tensor) -> Kernel:
        eta, log_std = self._step(step)
        mean, log_std = x_next + eta * self._prior_score(x_next), log_std.expand_as(x_next)
        if self.backward_drift is None:
            return mean, log_std
        drift, log_scale = self.backward_drift(context[1], x_next, step)
        return mean + eta * drift, log_std + log_scale.clamp(BACKWARD_LOG_SCALE_MIN, BACKWARD_LOG_SCALE_MAX)


def drift_layers(obs_dim: int, act_dim: int, num_steps: int, hidden_sizes: Sequence[int], activation: str,
                 outputs: int) -> tuple[nn.Linear, nn.Linear, nn.Parameter, nn.Sequential]:
    """A network f(x, s, k) = MLP(W_s s + b + W_x x + e_k) of a latent x, its first layer split into the state's
    share, the latent's and a learned embedding of the step; the head's bias starts at zero."""
    width = hidden_sizes[0]
    obs_in = nn.Linear(obs_dim, width)
    latent_in = nn.Linear(act_dim, width, bias=False)
    step_embedding = nn.Parameter(torch.randn(num_steps, width) * 0.1)
    layers: list[nn.Module] = [ACTIVATIONS[activation]()]
    for w_in, w_out in zip(hidden_sizes[:-1], hidden_sizes[1:]):
        layers += [nn.Linear(w_in, w_out), ACTIVATIONS[activation]()]
    head = nn.Linear(hidden_sizes[-1], outputs)
    nn.init.zeros_(head.bias)
    return obs_in, latent_in, step_embedding, nn.Sequential(*layers, head)


class BackwardDrift(nn.Module):
    """(g_phi, h_phi)(x_{k+1}, s, k) of a learned backward kernel: a drift and a log-scale of its std, from one
    network of the forward drift's shape. Its head starts at zero, so that an untrained policy scores chains
    exactly as with the fixed kernel."""

    def __init__(self, obs_dim: int, act_dim: int, num_steps: int, hidden_sizes: Sequence[int], activation: str):
        super().__init__()
        self.obs_in, self.latent_in, self.step_embedding, self.drift = drift_layers(obs_dim, act_dim, num_steps,
                                                                                   hidden_sizes, activation, 2 * act_dim)
        nn.init.zeros_(self.drift[-1].weight)

    def forward(self, obs: torch.Tensor, x_next: torch.Tensor,
                step: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.drift(self.obs_in(obs) + self.latent_in(x_next) + self.step_embedding[step]).chunk(2, dim=-1)
