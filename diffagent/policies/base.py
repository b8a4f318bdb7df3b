"""The one `Policy` interface: a chain of K Gaussian steps squashed into the action box.

A policy is a pure function of (observation, noise): the noise of every step is an input of
shape (B, K+1, act_dim), where noise[:, 0] draws x_0 from the prior and noise[:, k+1] drives step
k. Zero noise gives the deterministic action. Subclasses say what the prior, the learned forward
kernel and the backward kernel (fixed, or learned too) are; sampling and scoring live here, once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from diffagent.policies.chain import LOG_SQRT_2PI, ChainLogProbs, gaussian_log_prob, tanh_log_det
from diffagent.policies.normalizer import RunningNorm

Kernel = tuple[torch.Tensor, torch.Tensor]  # (mean, log_std) of a diagonal Gaussian

# Acting is total (docs/security.md): with observations clipped by the normaliser, noise clipped to
# +-NOISE_LIMIT and every latent state to +-LATENT_LIMIT, any finite input gives a finite action.
# Neither clip moves a real chain: torch's float32 randn never leaves +-6, the prior and the
# denoising steps keep latents within a few units, and tanh saturates at |x| > 9 in float32.
NOISE_LIMIT = 10.0
LATENT_LIMIT = 1e3


class PolicySample(NamedTuple):
    """One sampled chain per state."""

    action: torch.Tensor         # (B, A) squashed to [-1, 1]
    chain: torch.Tensor          # (B, K+1, A) latent states x_0 .. x_K
    log_probs: ChainLogProbs     # per-step log-densities of the chain

    @property
    def log_ratio(self) -> torch.Tensor:
        """L(s, x_{0:K}) of each chain, shape (B,)."""
        return self.log_probs.log_ratio


class Policy(nn.Module):
    """Base class of the Gaussian and diffusion-chain policies.

    Subclasses implement `context`, `forward_kernel`, `backward_kernel` and `prior_log_std`.
    """

    exact_log_ratio: bool = False
    """Whether L is log pi itself (every chain's backward path is exact), not only an upper bound of it."""

    def __init__(self, obs_dim: int, act_dim: int, num_steps: int, action_low: torch.Tensor,
                 action_high: torch.Tensor, normalize_obs: bool):
        super().__init__()
        self.obs_dim, self.act_dim, self.num_steps = obs_dim, act_dim, num_steps
        self.obs_normalizer = RunningNorm(obs_dim, enabled=normalize_obs)
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))

    # --- what a subclass defines -------------------------------------------------------------
    def context(self, obs: torch.Tensor) -> Any:
        """Per-state features, computed once per chain from the normalised observation."""
        raise NotImplementedError

    def prior_log_std(self) -> torch.Tensor:
        """log of the prior's standard deviation sigma_0 (a scalar tensor)."""
        raise NotImplementedError

    def forward_kernel(self, context: Any, x: torch.Tensor, step: int | torch.Tensor) -> Kernel:
        """q_theta(x_{k+1} | x_k, s, k) for x = x_k of shape (B, A) or (B, K, A)."""
        raise NotImplementedError

    def backward_kernel(self, context: Any, x_next: torch.Tensor, step: int | torch.Tensor) -> Kernel:
        """p(x_k | x_{k+1}, s, k), the noising kernel along which L scores a chain, for x_next of shape (B, A) or
        (B, K, A) (with the context's step axis inserted, as `forward_kernel`'s)."""
        raise NotImplementedError

    # --- sampling and scoring, shared by every policy -----------------------------------------
    def noise_shape(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.num_steps + 1, self.act_dim)

    def _run_chain(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[Any, list[torch.Tensor], list[Kernel]]:
        """The context, the states x_0 .. x_K and the forward kernels that produced them (unstacked: acting needs
        only x_K)."""
        context = self.context(self.obs_normalizer(obs))
        noise = noise.clamp(-NOISE_LIMIT, NOISE_LIMIT)
        x = noise[:, 0] * torch.exp(self.prior_log_std())
        states, kernels = [x], []
        for k in range(self.num_steps):  # K is fixed: the loop unrolls in ONNX and CUDA graphs
            mean, log_std = self.forward_kernel(context, x, k)
            x = (mean + torch.exp(log_std) * noise[:, k + 1]).clamp(-LATENT_LIMIT, LATENT_LIMIT)
            states.append(x)
            kernels.append((mean, log_std))
        return context, states, kernels

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None,
               deterministic: bool = False) -> PolicySample:
        """Sample one chain per observation (raw, unnormalised obs of shape (B, obs_dim)).

        Gradients flow through the whole chain (reparameterised), which the pathwise estimators
        use; algorithms that need the score function re-score a detached chain with `score`.
        """
        if noise is None:
            shape = self.noise_shape(obs.shape[0])
            noise = torch.zeros(shape, device=obs.device) if deterministic else torch.randn(shape, device=obs.device)
        context, states, kernels = self._run_chain(obs, noise)
        chain = torch.stack(states, dim=1)
        # x_{k+1} = mean_k + std_k * noise_{k+1}: the standardised residual of every step *is* its noise, so
        # log q_theta(x_{k+1} | x_k) needs no residuals; value and reparameterised gradient are unchanged
        log_stds = torch.stack([log_std for _, log_std in kernels], dim=1)
        forward = (-0.5 * noise[:, 1:].square() - log_stds - LOG_SQRT_2PI).sum(-1)
        return PolicySample(torch.tanh(chain[:, -1]), chain, self._complete_log_probs(context, chain, forward))

    def score(self, obs: torch.Tensor, chain: torch.Tensor) -> ChainLogProbs:
        """Per-step log-probabilities of given chains (B, K+1, A), all K steps in one batched pass."""
        context = self.context(self.obs_normalizer(obs))
        mean, log_std = self.forward_kernel(_per_step(context), chain[:, :-1], self._steps(chain))
        return self._complete_log_probs(context, chain, gaussian_log_prob(chain[:, 1:], mean, log_std))

    def kernels(self, obs: torch.Tensor, chain: torch.Tensor) -> Kernel:
        """(mean, log_std) of every forward kernel q_theta(. | x_k, s, k) along given chains, each (B, K, A)."""
        context = self.context(self.obs_normalizer(obs))
        return self.forward_kernel(_per_step(context), chain[:, :-1], self._steps(chain))

    def backward_paths(self, obs: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Chains (B, K+1, A) drawn backward from given final states x_K (B, A) through the backward kernel, x_k ~
        p(x_k | x_{k+1}, s, k) down to x_0: the paths along which L scores an action. Latents are held to
        +-LATENT_LIMIT, as the forward chain's are."""
        context = self.context(self.obs_normalizer(obs))
        states = [latents]
        for k in reversed(range(self.num_steps)):
            mean, log_std = self.backward_kernel(context, states[0], k)
            states.insert(0, (mean + torch.exp(log_std) * torch.randn_like(mean)).clamp(-LATENT_LIMIT, LATENT_LIMIT))
        return torch.stack(states, dim=1)

    def path_log_likelihood(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """sum_k log q_theta(x_{k+1} | x_k, s, k) along one backward path from each squashed action (B, A), the
        path drawn without gradient: maximising it fits the forward kernels to paths that end in those actions."""
        with torch.no_grad():
            chains = self.backward_paths(obs, torch.atanh(actions))
        return gaussian_log_prob(chains[:, 1:], *self.kernels(obs, chains)).sum(-1)  # the forward kernels alone

    def backward_log_probs(self, obs: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
        """log p(x_k | x_{k+1}, s, k) of every step of given chains, (B, K), in one batched pass."""
        return self._backward_log_probs(self.context(self.obs_normalizer(obs)), chain)

    def _steps(self, chain: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.num_steps, device=chain.device)

    def _complete_log_probs(self, context: Any, chain: torch.Tensor, forward: torch.Tensor) -> ChainLogProbs:
        prior = gaussian_log_prob(chain[:, 0], torch.zeros_like(chain[:, 0]), self.prior_log_std())
        return ChainLogProbs(prior, forward, self._backward_log_probs(context, chain), -tanh_log_det(chain[:, -1]))

    def _backward_log_probs(self, context: Any, chain: torch.Tensor) -> torch.Tensor:
        back_mean, back_log_std = self.backward_kernel(_per_step(context), chain[:, 1:], self._steps(chain))
        return gaussian_log_prob(chain[:, :-1], back_mean, back_log_std)

    def to_env_action(self, squashed: torch.Tensor) -> torch.Tensor:
        """Map an action in [-1, 1] to the environment's box (clamped: rounding must not step outside it)."""
        action = self.action_low + (self.action_high - self.action_low) * (squashed + 1.0) * 0.5
        return torch.minimum(torch.maximum(action, self.action_low), self.action_high)

    def squashed_action(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The action in [-1, 1], with no log-probabilities computed (the acting path)."""
        _, states, _ = self._run_chain(obs, noise)
        return torch.tanh(states[-1])

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """f(obs, noise) -> action in the env's units: the function that is exported and served."""
        return self.to_env_action(self.squashed_action(obs, noise))


def _per_step(context: Any) -> Any:
    """Insert a step axis into every tensor of a context so it broadcasts over (B, K, ...)."""
    if isinstance(context, tuple):
        return tuple(_per_step(c) for c in context)
    return context.unsqueeze(1)
