"""PPO, and DiffPPO when handed a diffusion-chain policy (algorithms.md, sections 3 and 4).

The update never asks which policy it holds. Every action is a chain x_0 -> ... -> x_K; the rollout
keeps the whole chain and the behaviour policy's per-step log q_old, and

    soft reward:      r~_t = r_t - alpha L_t                   (L_t = log pi(a_t|s_t) for the Gaussian)
    GAE on r~:        A_t, and value targets R_t = A_t + V(s_t)
    ratio per step:   rho_{t,k} = q_theta(x_{k+1} | x_k, s_t, k) / q_old(x_{k+1} | x_k, s_t, k)
    policy loss:      -mean_{t,k} min(rho A_{t,k}, clip(rho, 1 - eps, 1 + eps) A_{t,k})
                      - alpha mean_t sum_k log p_theta(x_k | x_{k+1})      (gradient only)
    value loss:       0.5 (V(s_t) - R_t)^2, optionally clipped around the rollout's values

The per-step advantage A_{t,k} is A_t, or with `cancel_past` A_t + alpha (log p_0(x_0) + sum_{j<k} l_{t,j}).
A_t holds -alpha L_t, the whole chain's log-ratio. Its future terms -alpha (sum_{j>=k} l_j + squash)
belong to step k, and they are in A_t already through r~_t (adding them again would count them
twice). The past terms (the prior, l_j for j < k) have zero expected product with grad log q_theta
at step k, so removing them, as algorithms.md prescribes, leaves the expected gradient unchanged.
It does not lower the variance, though: the past and the future of one chain are anti-correlated
(they telescope: for a near-reversible chain L ~ log p_0(x_K) + squash while the past ~ log p_0(x_k)),
and on a bandit the cancelled estimator's variance came out 3-50% higher in every setting tried
(tests/test_ppo.py measures it). So the default weights every step by A_t. With the small alpha of
DiffPPO (2e-4) the two differ little either way.

K = 1 and the Gaussian is PPO: one step, rho = pi_theta(a|s) / pi_old(a|s) (the tanh Jacobian
cancels), and the loss is PPO-clip on GAE advantages of the soft reward r - alpha log pi.

The last policy-loss term is the direct dependence of L on theta through a learned backward kernel
(the diffusion's learned step sizes): grad E[-alpha L] contains alpha E[sum_k grad log p(x_k|x_{k+1})].
It enters with its value subtracted, so it changes the gradient only; for a fixed backward kernel
(the Gaussian's prior) it is zero.

Environments: a SyncVectorEnv in SAME_STEP autoreset mode. A step that ends an episode returns the
next episode's first observation and puts the last one in info["final_obs"], so no stored
transition crosses an episode boundary. A truncated step bootstraps with gamma V(final obs) in its
reward; a terminated one does not.
Observation statistics are updated between rollouts only, so the behaviour policy's log q_old and
the policy being trained see the same normalised observations (every ratio starts at 1).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from torch import nn

from diffagent.algos.base import Algorithm
from diffagent.config import PPOConfig
from diffagent.nn import mlp
from diffagent.policies import Policy
from diffagent.rollout import RewardScaler, RolloutBatch, RolloutBuffer, gae, minibatches

if TYPE_CHECKING:
    from diffagent.export import LiveOnnxPolicy


def per_step_advantages(advantages: torch.Tensor, prior: torch.Tensor, step_ratios: torch.Tensor,
                        alpha: float) -> torch.Tensor:
    """A_{t,k} = A_t + alpha (log p_0(x_0) + sum_{j<k} l_j): each denoising step weighted by its future only.

    advantages (B,), prior (B,), step_ratios (B, K) -> (B, K).
    """
    past = prior.unsqueeze(-1) + step_ratios.cumsum(-1) - step_ratios
    return advantages.unsqueeze(-1) + alpha * past


def trace(module: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """`module` traced with `example`, sharing its parameters and buffers.

    Acting runs the chain's K small steps once per env step, the hot loop of on-policy training.
    On a CPU LiveOnnxPolicy acts; on other devices a trace runs the chain without Python's per-op
    overhead (on a CPU it measured 3x faster than eager at K = 8, onnxruntime 4x faster again).
    torch.jit is deprecated in favour of torch.compile, which costs ~45 s of compilation per run on CPU, more
    than short runs last; the ONNX export traces the same function (diffagent/export.py). Only the
    forward pass is traced: a traced loss computed wrong policy gradients once TorchScript's
    optimiser took over (from its second call), and unoptimised it gained only 1.26x.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(module, example, check_trace=False)


class PPO(Algorithm):
    """On-policy clipped policy optimisation over any `Policy`, with a state-value baseline."""

    config: PPOConfig

    def __init__(self, config: PPOConfig, policy: Policy, make_env: Callable[[], gym.Env], device: torch.device):
        super().__init__(config, policy, make_env, device)
        cfg = config
        self.envs = gym.vector.SyncVectorEnv([make_env] * cfg.num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self.value = mlp(policy.obs_dim, cfg.value_hidden_sizes, 1, cfg.policy_activation).to(device)
        self.trained_parameters = [*policy.parameters(), *self.value.parameters()]
        # eps=1e-5 as CleanRL and SB3's PPO; one optimizer so the gradient clip sees both networks;
        # fused: one kernel for all parameters, which matters with many small updates.
        self.optimizer = torch.optim.Adam(self.trained_parameters, lr=cfg.learning_rate, eps=1e-5, fused=True)
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma).to(device)
        self.buffer = RolloutBuffer(cfg.rollout_steps, cfg.num_envs, policy.obs_dim, policy.noise_shape(1)[1:],
                                    device)
        self.shuffler = torch.Generator().manual_seed(config.seed)
        # The chain is a pure function of (obs, noise) with K unrolled, so acting can run it compiled,
        # on the policy's own parameters and statistics, always with the current policy: onnxruntime on
        # a CPU (4x faster than the trace at K = 8, see LiveOnnxPolicy), a TorchScript trace elsewhere.
        self.live_policy: LiveOnnxPolicy | None = None
        if device.type == "cpu":
            from diffagent.export import LiveOnnxPolicy  # onnxruntime loads when a CPU run first acts

            self.live_policy = LiveOnnxPolicy(policy, cfg.num_envs)
            self.act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.live_policy
        else:
            self.act = trace(policy, (torch.zeros(cfg.num_envs, policy.obs_dim, device=device),
                                      torch.zeros(policy.noise_shape(cfg.num_envs), device=device)))
        self.obs: np.ndarray | None = None  # reset on first use, from self.rng, so a resumed run starts new episodes
        self.episode_returns = np.zeros(cfg.num_envs)

    # --- one iteration: a rollout, then the epochs over it --------------------------------------------
    def train_iteration(self) -> dict[str, float]:
        """Collect rollout_steps x num_envs transitions and run num_epochs of minibatch updates on them."""
        cfg = self.config
        if cfg.anneal_lr and self.total_steps:
            lr = cfg.learning_rate * max(1.0 - self.num_steps / self.total_steps, 0.0)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        batch = self.collect_rollout()
        metrics = self.update(batch)
        self.policy.obs_normalizer.update(batch.obs)
        return metrics

    # --- acting ---------------------------------------------------------------------------------------
    def collect_rollout(self) -> RolloutBatch:
        """Run the policy in the vector env for rollout_steps; returns the rollout with GAE advantages."""
        cfg, policy, buffer = self.config, self.policy, self.buffer
        if self.obs is None:
            self.obs, _ = self.envs.reset(seed=int(self.rng.integers(2**31)))
        buffer.clear()
        if self.live_policy is not None:
            self.live_policy.bind()
        with torch.inference_mode():  # acting computes the chain only; its log-probs come batched below
            obs = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device)
            while not buffer.full:
                actions = self.act(obs, buffer.noise_now).cpu().numpy()
                next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
                dones = terminated | truncated
                buffer.add(obs, rewards, dones)
                bootstrap = np.flatnonzero(truncated & ~terminated)
                if bootstrap.size:  # the autoreset replaced these observations; the last ones are in info
                    final_obs = torch.as_tensor(np.stack(info["final_obs"][bootstrap]), dtype=torch.float32,
                                                device=self.device)
                    buffer.bootstrap_values[buffer.pos - 1, bootstrap] = self.state_value(final_obs)
                self._track_episodes(rewards, dones)
                self.num_steps += cfg.num_envs
                obs = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
            last_values = self.state_value(obs)
        self.obs = next_obs

        with torch.no_grad():
            # The chains, their per-step log q_old and the values, for all T x N steps in one pass:
            # the same functions of (obs, noise) the acting loop evaluated one step at a time.
            flat_obs = buffer.obs.flatten(0, 1)
            sample = policy.sample(flat_obs, buffer.noise.flatten(0, 1))
            log_probs = sample.log_probs
            values = self.state_value(flat_obs)
            rewards, dones = (torch.as_tensor(x, device=self.device) for x in (buffer.rewards, buffer.dones))
            if cfg.scale_rewards:
                rewards = self.reward_scaler(rewards, dones)
            soft_rewards = (rewards - cfg.alpha * sample.log_ratio.view_as(rewards)
                            + cfg.gamma * buffer.bootstrap_values)
            advantages = gae(soft_rewards, values.view_as(rewards), dones, last_values, cfg.gamma,
                             cfg.gae_lambda).flatten()
        return RolloutBatch(flat_obs, sample.chain, log_probs.forward, log_probs.prior, log_probs.step_ratios,
                            sample.log_ratio, values, advantages, advantages + values)

    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) of raw observations (B, obs_dim), normalised by the policy's statistics."""
        return self.value(self.policy.obs_normalizer(obs)).squeeze(-1)

    def _track_episodes(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.episode_returns += rewards
        for i in np.flatnonzero(dones):
            self._record_episode(self.episode_returns[i])
            self.episode_returns[i] = 0.0

    # --- learning -------------------------------------------------------------------------------------
    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """num_epochs passes of num_minibatches clipped-gradient Adam steps over one rollout."""
        cfg = self.config
        totals: dict[str, torch.Tensor] = {}
        for _ in range(cfg.num_epochs):
            for minibatch in minibatches(batch, cfg.num_minibatches, self.shuffler):
                loss, stats = self.loss(minibatch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.trained_parameters, cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
        updates = cfg.num_epochs * cfg.num_minibatches
        metrics = {key: (value / updates).item() for key, value in totals.items()}
        residual_var = (batch.returns - batch.values).var()
        metrics.update(explained_variance=(1.0 - residual_var / batch.returns.var().clamp_min(1e-8)).item(),
                       entropy_estimate=-batch.log_ratio.mean().item(),
                       learning_rate=self.optimizer.param_groups[0]["lr"])
        return metrics

    def loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The PPO loss of one minibatch and its (detached) statistics."""
        cfg = self.config
        log_probs = self.policy.score(batch.obs, batch.chains)
        if cfg.cancel_past:
            advantages = per_step_advantages(batch.advantages, batch.prior, batch.step_ratios, cfg.alpha)
        else:
            advantages = batch.advantages.unsqueeze(-1)  # the same A_t for every denoising step
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_rho = log_probs.forward - batch.log_q
        rho = log_rho.exp()
        surrogate = torch.min(rho * advantages, rho.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range) * advantages)
        log_backward = log_probs.backward.sum(-1)
        policy_loss = -surrogate.mean() - cfg.alpha * (log_backward - log_backward.detach()).mean()

        values = self.state_value(batch.obs)
        value_error = (values - batch.returns).square()
        if cfg.value_clip_range > 0:
            clipped = batch.values + (values - batch.values).clamp(-cfg.value_clip_range, cfg.value_clip_range)
            value_error = torch.max(value_error, (clipped - batch.returns).square())
        value_loss = 0.5 * value_error.mean()

        rho, log_rho = rho.detach(), log_rho.detach()
        stats = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                 "approx_kl": ((rho - 1.0) - log_rho).mean(),
                 "clip_fraction": ((rho - 1.0).abs() > cfg.clip_range).float().mean()}
        return policy_loss + cfg.value_coef * value_loss, stats

    # --- checkpoints ----------------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        return {"policy": self.policy, "value": self.value, "optimizer": self.optimizer,
                "reward_scaler": self.reward_scaler}

    def extra_state(self) -> dict[str, Any]:
        return {"shuffler": self.shuffler.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.shuffler.set_state(state["shuffler"])
