"""The tanh-squashed Gaussian policy of SAC and PPO, written as a chain with K = 1.

Its forward kernel ignores x_0 and its backward kernel is the prior itself, so the path
log-ratio L = log p_0(x_0) + log q(x_1|s) - log p_0(x_0) is exactly log pi(a|s).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from diffagent.nn import ACTIVATIONS, mlp
from diffagent.policies.base import Kernel, Policy


class GaussianPolicy(Policy):
    """a = tanh(mu(s) + sigma(s) * eps), with a state-dependent (or state-independent) std."""

    exact_log_ratio = True  # the backward kernel is the prior, so L = log pi(a|s)

    def __init__(self, obs_dim: int, act_dim: int, action_low: torch.Tensor, action_high: torch.Tensor, *,
                 hidden_sizes: Sequence[int] = (256, 256), activation: str = "relu", normalize_obs: bool = False,
                 state_dependent_std: bool = True, log_std_init: float = 0.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__(obs_dim, act_dim, 1, action_low, action_high, normalize_obs)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.state_dependent_std = state_dependent_std
        self.trunk = mlp(obs_dim, hidden_sizes[:-1], hidden_sizes[-1], activation)
        self.trunk.append(ACTIVATIONS[activation]())
        self.mean_head = nn.Linear(hidden_sizes[-1], act_dim)
        if state_dependent_std:
            self.log_std_head = nn.Linear(hidden_sizes[-1], act_dim)
            nn.init.zeros_(self.log_std_head.weight)
            nn.init.constant_(self.log_std_head.bias, log_std_init)
        else:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def context(self, obs: torch.Tensor) -> Kernel:
        features = self.trunk(obs)
        log_std = self.log_std_head(features) if self.state_dependent_std else self.log_std.expand(obs.shape[0], -1)
        return self.mean_head(features), log_std.clamp(self.log_std_min, self.log_std_max)

    def prior_log_std(self) -> torch.Tensor:
        return torch.zeros((), device=self.action_low.device)

    def forward_kernel(self, context: Kernel, x: torch.Tensor, step: int | torch.Tensor) -> Kernel:
        return context

    def backward_kernel(self, context: Kernel, x_next: torch.Tensor, step: int | torch.Tensor) -> Kernel:
        return torch.zeros_like(x_next), self.prior_log_std().expand_as(x_next)
