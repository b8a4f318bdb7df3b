"""Step-by-step log-probabilities of a sampled chain x_0 -> x_1 -> ... -> x_K.

Every algorithm scores chains through this one module (docs/algorithms.md, section 2):

    L(s, x_{0:K}) = log p_0(x_0) + sum_k [log q_theta(x_{k+1} | x_k, s, k) - log p(x_k | x_{k+1})]
                    - sum_d log(1 - tanh(x_K,d)^2)

L is the path log-ratio: -E[L] lower-bounds the entropy of the squashed action, and for the
Gaussian policy (K = 1, backward kernel = prior) it is exactly log pi(a|s).
Densities are over the action squashed to [-1, 1]; the affine map to the env's box adds only a
constant, which no gradient sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2 I), summed over the last (action) dimension."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - LOG_SQRT_2PI).sum(-1)


def tanh_log_det(x: torch.Tensor) -> torch.Tensor:
    """sum_d log(1 - tanh(x_d)^2), written so that it stays finite for large |x|."""
    return (2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))).sum(-1)


@dataclass
class ChainLogProbs:
    """The log-densities of one chain per state, kept per step so algorithms can weight steps."""

    prior: torch.Tensor     # (B,)   log p_0(x_0)
    forward: torch.Tensor   # (B, K) log q_theta(x_{k+1} | x_k, s, k)
    backward: torch.Tensor  # (B, K) log p(x_k | x_{k+1})
    squash: torch.Tensor    # (B,)   -sum_d log(1 - tanh(x_K)^2)

    @property
    def step_ratios(self) -> torch.Tensor:
        """l_k = log q_theta(x_{k+1}|x_k) - log p(x_k|x_{k+1}), shape (B, K)."""
        return self.forward - self.backward

    @property
    def log_ratio(self) -> torch.Tensor:
        """The path log-ratio L of every chain, shape (B,)."""
        return self.prior + self.step_ratios.sum(-1) + self.squash
