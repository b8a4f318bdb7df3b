"""WPO, and DiffWPO when handed a diffusion-chain policy (docs/algorithms.md, section 4).

SAC's replay buffer, critics, temperature and loop, inherited; only the actor loss differs.
Wasserstein policy optimisation (Pfau et al., 2025) moves every sampled action along the gradient
of the value; its parameter update, with the action held fixed, is

    E[ grad_theta (grad_a log pi_theta(a|s))^T sg(grad_a Q_soft(s, a)) ],   Q_soft = Q - alpha log pi.

In the chain every denoising step is such an action: x_{k+1}, drawn from q_theta(. | x_k, s, k), gets
the signal of the soft value along the rest of the chain (noise held fixed, theta not updated
through it)

    g_{k+1} = grad_{x_{k+1}} [ Q(s, tanh x_K) - alpha (sum_{j>=k} l_j + squash) ]
    loss    = -E sum_k sum_d [grad_{x_{k+1}} log q_theta(x_{k+1} | x_k, s, k)]_d  sg(g_{k+1})_d

All K signals come from one backward pass of the whole soft value Q - alpha L of a reparameterised
chain to its noise: x_{k+1} = mean_k + sigma_k eps_k and eps_k reaches the soft value only through
x_{k+1}, so d(soft value)/d eps_k = sigma_k g_{k+1}. The terms before step k (the prior, l_j for
j < k) do not depend on x_{k+1} and drop out by themselves. For the Gaussian (K = 1) the signal is
grad_u [Q(s, tanh u) - alpha log pi(tanh u | s)] on the pre-tanh action u, and the loss is WPO's.

Trust region (acme's WPO adds MPO's KL constraints): the KL(old || theta) of the denoising path,
which by the chain rule of KL is the sum over steps of the Gaussian kernels' KLs, in closed form,
averaged over the old chain's states x_k. It is estimated at the states of the chains just drawn
from theta instead (no second chain is drawn; the old policy is a Polyak average of the policy and
stays near it). The bound is per denoising step: a dual variable holds the path's KL near K * kl_bound
(for the Gaussian, K = 1, its action's KL near kl_bound), so that each of the chain's K kernels may move
as far as the Gaussian's one; a bound on the path's sum held the chain K times tighter than its base, and
held DiffWPO back on Hopper (docs/algorithms.md, section 9). The penalty is beta * KL, and log beta
minimises log beta * (K * kl_bound - KL), so it grows while the KL exceeds the bound. The default bound
(0.1) guards against large jumps rather than pacing learning: on Pendulum the KL stays at 0.006-0.035
and the penalty rests at its floor, while a bound of 0.01 held WPO at -1,100 after 6,000 steps
(-130 unbounded).

A learned backward kernel (the diffusion's step sizes) also makes L depend on theta directly, which
no moving sample accounts for: its gradient alpha E[sum_k grad log p(x_k | x_{k+1})] is added, as in
DiffPPO and SAC's 'lv' loss. The Gaussian's backward kernel is its fixed prior, so nothing changes there.

Fisher preconditioning (on by default, for the Gaussian and the chain alike): the gradients reaching each
kernel's mean are scaled by sigma^2 and those reaching its std by its inverse Fisher in (mean, sigma)
coordinates, sigma^2/2, as acme's WPO, values unchanged. Then a Gaussian's WPO gradient is SAC's
pathwise gradient of Q sample by sample; on Hopper the mean gradients of the Gaussian and the chain
pointed along the pathwise ones at cosine 0.995 and 0.998, against 0.66 and 0.95 without
preconditioning (docs/algorithms.md, "WPO's preconditioning").
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from diffagent.algos.replay import Batch
from diffagent.algos.sac import SAC
from diffagent.config import WPOConfig
from diffagent.nn import polyak_update
from diffagent.policies import Policy
from diffagent.policies.base import Kernel

# Bounds of log beta: while the KL stays inside the bound log beta keeps falling; bounded, it climbs
# back within about a thousand steps (at kl_penalty_lr = 1e-2) once the KL exceeds the bound.
LOG_KL_PENALTY_BOUNDS = (-10.0, 10.0)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor,
                log_std_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std_p^2 I) || N(mean_q, std_q^2 I)), summed over the last (action) axis."""
    log_var_ratio = 2.0 * (log_std_p - log_std_q)
    mahalanobis = (mean_p - mean_q).square() * torch.exp(-2.0 * log_std_q)
    return 0.5 * (log_var_ratio.exp() + mahalanobis - 1.0 - log_var_ratio).sum(-1)


def natural_gradient(mean: torch.Tensor, log_std: torch.Tensor) -> Kernel:
    """The same Gaussian kernel whose gradients are scaled by its inverse Fisher in (mean, sigma) coordinates,
    as acme's WPO: sigma^2 on the mean, sigma^2 / 2 on sigma, which is sigma^2 / 2 on the log std."""
    var = torch.exp(2.0 * log_std).detach()
    return var * mean + ((1.0 - var) * mean).detach(), 0.5 * var * log_std + ((1.0 - 0.5 * var) * log_std).detach()


class WPO(SAC):
    """SAC's machinery with the (soft) Wasserstein policy update and a KL trust region."""

    config: WPOConfig

    def __init__(self, config: WPOConfig, policy: Policy, make_env: Callable[[], gym.Env], device: torch.device,
                 seed: int):
        super().__init__(config, policy, make_env, device, seed)
        self.policy_old = copy.deepcopy(policy).requires_grad_(False)
        self.log_kl_penalty = torch.tensor(np.log(config.kl_penalty_init), dtype=torch.float32, device=device,
                                           requires_grad=True)
        self.kl_penalty_optimizer = torch.optim.Adam([self.log_kl_penalty], lr=config.kl_penalty_lr, fused=True)
        self.kl = torch.zeros((), device=device)  # the KL of the last actor loss, for the dual step

    def update(self, batch: Batch) -> dict[str, float]:
        """SAC's update with the WPO actor loss, then the trust region's dual step and the old policy's average."""
        metrics = super().update(batch)
        dual_loss = self.log_kl_penalty * (self.config.kl_bound * self.policy.num_steps - self.kl)
        self.kl_penalty_optimizer.zero_grad(set_to_none=True)
        dual_loss.backward()
        self.kl_penalty_optimizer.step()
        with torch.no_grad():
            self.log_kl_penalty.clamp_(*LOG_KL_PENALTY_BOUNDS)
            polyak_update(self.policy_old, self.policy, self.config.target_policy_tau)
            for old, new in zip(self.policy_old.buffers(), self.policy.buffers()):
                old.copy_(new)  # observation statistics are copied, not averaged
        return {**metrics, "kl": self.kl.item(), "kl_penalty": self.log_kl_penalty.exp().item()}

    def actor_loss(self, raw_obs: torch.Tensor, obs: torch.Tensor,
                   alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The WPO loss plus the KL penalty, and the (detached) L of the chains drawn."""
        cfg, policy = self.config, self.policy
        noise = torch.randn(policy.noise_shape(raw_obs.shape[0]), device=raw_obs.device, requires_grad=True)
        sample = policy.sample(raw_obs, noise)
        soft_value = self.critic(obs, sample.action).min(0).values - alpha * sample.log_ratio
        (noise_grad,) = torch.autograd.grad(soft_value.sum(), noise)

        chain = sample.chain.detach()
        mean, log_std = policy.kernels(raw_obs, chain)
        signal = noise_grad[:, 1:] * torch.exp(-log_std.detach())  # g_{k+1} = d(soft value)/d eps_k / sigma_k
        score_mean, score_log_std = natural_gradient(mean, log_std) if cfg.fisher_preconditioning else (mean, log_std)
        score = (score_mean - chain[:, 1:]) * torch.exp(-2.0 * score_log_std)  # grad_{x_{k+1}} log q_theta
        wpo_loss = -(score * signal).sum((1, 2)).mean()
        # The direct dependence of L on a learned backward kernel (see the module docstring).
        log_backward = policy.backward_log_probs(raw_obs, chain).sum(-1)
        backward_term = -alpha * (log_backward - log_backward.detach()).mean()  # its gradient, with value 0

        with torch.no_grad():
            old_mean, old_log_std = self.policy_old.kernels(raw_obs, chain)
        kl = gaussian_kl(old_mean, old_log_std, mean, log_std).sum(-1).mean()
        self.kl = kl.detach()
        return wpo_loss + backward_term + self.log_kl_penalty.detach().exp() * kl, sample.log_ratio.detach()

    # --- checkpoints ----------------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        return {**super().components(), "policy_old": self.policy_old,
                "kl_penalty_optimizer": self.kl_penalty_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "log_kl_penalty": self.log_kl_penalty.detach()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        with torch.no_grad():
            self.log_kl_penalty.copy_(state["log_kl_penalty"])
