"""PPO, and DiffPPO when handed a diffusion-chain policy (docs/algorithms.md, sections 3 and 4).

The update never asks which policy it holds. Every action is a chain x_0 -> ... -> x_K; the rollout
keeps the whole chain and the behaviour policy's per-step log q_old, and

    soft reward:      r~_t = r_t - alpha L_t                   (L_t = log pi(a_t|s_t) for the Gaussian)
    GAE on r~:        A_t, and value targets R_t = A_t + V(s_t)
    step advantage:   A_{t,k}, the weight of denoising step k (below)
    ratio per step:   rho_{t,k} = q_theta(x_{k+1} | x_k, s_t, k) / q_old(x_{k+1} | x_k, s_t, k)
    policy loss:      -mean_{t,k} min(rho A_{t,k}, clip(rho, 1 - eps, 1 + eps) A_{t,k})
                      - alpha mean_t sum_k log p_theta(x_k | x_{k+1})      (gradient only)
    value loss:       0.5 (V(s_t) - R_t)^2 [+ 0.5 mean_k (V(s_t, x_k, k) - R_{t,k})^2 with per_step_baseline],
                      each optionally clipped around the rollout's values

The step advantage is one of three:

    default:              A_{t,k} = A_t
    cancel_past:          A_{t,k} = A_t + alpha (log p_0(x_0) + sum_{j<k} l_{t,j})
    per_step_baseline:    GAE over the chain's K sub-steps with a critic V_{t,k} = V(s_t, x_{t,k}, k):
        sub-step reward   u_{t,k} = -alpha l_{t,k}, and -alpha squash_t besides at the last one, k = K - 1
        after the chain   V_{t,K} = G_t = R_t + alpha L_t   (the return that follows the action)
        TD error          delta_{t,k} = u_{t,k} + V_{t,k+1} - V_{t,k}
        advantage         A_{t,k} = delta_{t,k} + lambda A_{t,k+1},   critic targets R_{t,k} = A_{t,k} + V_{t,k}

A_t holds -alpha L_t, the whole chain's log-ratio. Its future terms -alpha (sum_{j>=k} l_j + squash)
belong to step k, and they are in A_t already through r~_t (adding them again would count them
twice). The past terms (the prior, l_j for j < k) have zero expected product with grad log q_theta
at step k, so removing them, as docs/algorithms.md, section 3, shows, leaves the expected gradient unchanged.
Against the shared baseline V(s_t) it does not lower the variance, though: the past and the future
of one chain are anti-correlated (they telescope: for a near-reversible chain L ~ log p_0(x_K) + squash
while the past ~ log p_0(x_k)), and on a bandit the cancelled estimator's variance came out 3-92%
higher in every setting with alpha large enough to matter (tests/test_ppo.py measures it). So the
default weights every step by A_t. With the small alpha of DiffPPO (2e-4) the two differ little.

Cancelling pays with a baseline that sees the denoising state, which the past has decided:
V(s, x_k, k) predicts step k's future from x_k. That is the authors' augmented MDP, each denoising
step a sub-step whose critic sees (s, x_k, k). With lambda = 1 the sub-step GAE telescopes to
A_{t,k} = R_t + alpha (log p_0(x_0) + sum_{j<k} l_{t,j}) - V_{t,k}: cancel_past with V(s_t) replaced
by V(s_t, x_k, k). Two choices of ours:
- No discount inside the chain: its K sub-steps make one action, so gamma applies between env steps
  only, as in r~_t and V(s). (The authors' default discounts every sub-step, gamma^K per env step;
  their env-time option discounts between env steps only, with lambda = 1 inside the chain.)
- lambda (gae_lambda) per sub-step: bootstrapping on V(s, x_{k+1}, k+1) lowered the bandit's
  variance further than lambda = 1. The last sub-step bootstraps on G_t, the env-level
  lambda-return of V(s), which keeps its role between env steps and for truncations.
On a K = 8 bandit (benchmarks/per_step_baseline.py, three seeds per setting, V(x_k, k) fit on a
pilot batch) the option cut the gradient variance to 0.52-0.72 of the default's at alpha = 1
(0.57-0.90 with lambda = 1; cancel_past with V(s): 1.07-1.92), and to 0.48-0.50 at DiffPPO's alpha,
where cancel_past changes nothing: what V(s, x_k, k) mostly removes is the reward's dependence on
x_k. A learned critic predicts less than that fit, so the option stays off until Hopper returns
decide. Its cost: the critic reads (normalised s, x_k, one-hot k) for K states per transition, once
over the rollout and forward and backward in every minibatch, beside the policy's K kernels
(Hopper, K = 8: an update took 10-15% more CPU time, the rollout the same).

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
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode
from torch import nn

from diffagent.algos.base import Algorithm
from diffagent.algos.rollout import RewardScaler, RolloutBatch, RolloutBuffer, gae, minibatches
from diffagent.config import PPOConfig
from diffagent.nn import mlp
from diffagent.policies import Policy
from diffagent.policies.chain import ChainLogProbs
from diffagent.policies.onnx import LiveOnnxPolicy


def per_step_advantages(advantages: torch.Tensor, prior: torch.Tensor, step_ratios: torch.Tensor,
                        alpha: float) -> torch.Tensor:
    """A_{t,k} = A_t + alpha (log p_0(x_0) + sum_{j<k} l_j): each denoising step weighted by its future only.

    advantages (B,), prior (B,), step_ratios (B, K) -> (B, K).
    """
    past = prior.unsqueeze(-1) + step_ratios.cumsum(-1) - step_ratios
    return advantages.unsqueeze(-1) + alpha * past


def per_step_gae(log_probs: ChainLogProbs, action_returns: torch.Tensor, step_values: torch.Tensor, alpha: float,
                 gae_lambda: float) -> torch.Tensor:
    """A_{t,k} by GAE over the K denoising sub-steps of each chain, undiscounted (see the module docstring).

    Rewards -alpha l_k, and -alpha squash besides at the last sub-step; values V(s, x_k, k); after the
    last sub-step the return that follows the action, G_t. log_probs of B chains, action_returns (B,),
    step_values (B, K) -> (B, K).
    """
    num_steps = step_values.shape[-1]
    squash_at_last_step = F.pad(log_probs.squash.unsqueeze(-1), (num_steps - 1, 0))
    sub_step_rewards = -alpha * (log_probs.step_ratios + squash_at_last_step)
    chain_never_ends = torch.zeros_like(step_values)
    # `gae` runs along the first axis: here the K sub-steps, with the B chains side by side
    return gae(sub_step_rewards.T, step_values.T, chain_never_ends.T, action_returns, 1.0, gae_lambda).T


def explained_variance(targets: torch.Tensor, predictions: torch.Tensor) -> float:
    """1 - Var[target - prediction] / Var[target]: 1 for a perfect critic, 0 for a constant one."""
    return (1.0 - (targets - predictions).var() / targets.var().clamp_min(1e-8)).item()


def trace(module: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """`module` traced with `example`, sharing its parameters and buffers.

    Acting runs the chain's K small steps once per env step, the hot loop of on-policy training.
    On a CPU LiveOnnxPolicy acts; on other devices a trace runs the chain without Python's per-op
    overhead (benchmarks/acting_latency.py times eager, trace and onnxruntime side by side).
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

    def __init__(self, config: PPOConfig, policy: Policy, make_env: Callable[[], gym.Env], device: torch.device,
                 seed: int):
        super().__init__(config, policy, make_env, device, seed)
        cfg = config
        self.envs = gym.vector.SyncVectorEnv([make_env] * cfg.num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self.value = mlp(policy.obs_dim, cfg.value_hidden_sizes, 1, cfg.value_activation).to(device)
        self.trained_parameters = [*policy.parameters(), *self.value.parameters()]
        self.step_value: nn.Sequential | None = None  # V(s, x_k, k); its input: s, x_k and k one-hot (K is fixed)
        if cfg.per_step_baseline:
            self.step_value = mlp(policy.obs_dim + policy.act_dim + policy.num_steps, cfg.value_hidden_sizes, 1,
                                  cfg.value_activation).to(device)
            self.trained_parameters += self.step_value.parameters()
        # eps=1e-5 as CleanRL and SB3's PPO; one optimizer so the gradient clip sees every network;
        # fused: one kernel for all parameters, which matters with many small updates.
        self.optimizer = torch.optim.Adam(self.trained_parameters, lr=cfg.learning_rate, eps=1e-5, fused=True)
        self.reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma).to(device)
        self.buffer = RolloutBuffer(cfg.rollout_steps, cfg.num_envs, policy.obs_dim, policy.noise_shape(1)[1:],
                                    device)
        self.shuffler = torch.Generator().manual_seed(seed)
        # The chain is a pure function of (obs, noise) with K unrolled, so acting can run it compiled,
        # on the policy's own parameters and statistics, always with the current policy: onnxruntime on
        # a CPU (the fastest there, diffagent/policies/onnx.py), a TorchScript trace elsewhere.
        self.live_policy: LiveOnnxPolicy | None = None
        if device.type == "cpu":
            self.live_policy = LiveOnnxPolicy(policy, cfg.num_envs)
            self.act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.live_policy
        else:
            self.act = trace(policy, (torch.zeros(cfg.num_envs, policy.obs_dim, device=device),
                                      torch.zeros(policy.noise_shape(cfg.num_envs), device=device)))
        self.obs: np.ndarray | None = None  # reset on first use, from self.rng, so a resumed run starts new episodes
        self.episode_returns = np.zeros(cfg.num_envs)

    @property
    def temperature(self) -> float:
        return self.config.alpha

    # --- one iteration: a rollout, then the epochs over it --------------------------------------------
    def train_iteration(self) -> dict[str, float]:
        """Collect rollout_steps x num_envs transitions and run num_epochs of minibatch updates on them."""
        cfg = self.config
        if cfg.anneal_lr:
            self.anneal(self.optimizer, cfg.learning_rate)
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
                self.num_timesteps += cfg.num_envs
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
            returns = advantages + values
            if self.step_value is not None:
                step_values = self.step_values(flat_obs, sample.chain)
                action_returns = returns + cfg.alpha * sample.log_ratio  # G_t: R_t less the chain's own -alpha L_t
                step_advantages = per_step_gae(log_probs, action_returns, step_values, cfg.alpha, cfg.gae_lambda)
                step_returns = step_advantages + step_values
            else:
                step_values = step_returns = values.new_empty(len(values), 0)  # no per-step critic to train
                step_advantages = (per_step_advantages(advantages, log_probs.prior, log_probs.step_ratios, cfg.alpha)
                                   if cfg.cancel_past else advantages.unsqueeze(-1))  # A_t for every step
        return RolloutBatch(flat_obs, sample.chain, log_probs.forward, sample.log_ratio, values, advantages, returns,
                            step_advantages, step_values, step_returns)

    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(s) of raw observations (B, obs_dim), normalised by the policy's statistics."""
        return self.value(self.policy.obs_normalizer(obs)).squeeze(-1)

    def step_values(self, obs: torch.Tensor, chains: torch.Tensor) -> torch.Tensor:
        """V(s, x_k, k) for k = 0 .. K-1 of raw observations (B, obs_dim) and their chains (B, K+1, A): (B, K)."""
        latents = chains[:, :-1]
        batch, num_steps = latents.shape[:2]
        states = self.policy.obs_normalizer(obs).unsqueeze(1).expand(-1, num_steps, -1)
        steps = torch.eye(num_steps, device=latents.device).expand(batch, -1, -1)
        return self.step_value(torch.cat([states, latents, steps], -1)).squeeze(-1)

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
        metrics.update(explained_variance=explained_variance(batch.returns, batch.values),
                       entropy_estimate=-batch.log_ratio.mean().item(),
                       learning_rate=self.optimizer.param_groups[0]["lr"])
        if self.step_value is not None:
            metrics["step_explained_variance"] = explained_variance(batch.step_returns, batch.step_values)
        return metrics

    def loss(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The PPO loss of one minibatch and its (detached) statistics."""
        cfg = self.config
        log_probs = self.policy.score(batch.obs, batch.chains)
        advantages = batch.step_advantages
        if cfg.normalize_advantages:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_rho = log_probs.forward - batch.log_q
        rho = log_rho.exp()
        surrogate = torch.min(rho * advantages, rho.clamp(1.0 - cfg.clip_range, 1.0 + cfg.clip_range) * advantages)
        log_backward = log_probs.backward.sum(-1)
        policy_loss = -surrogate.mean() - cfg.alpha * (log_backward - log_backward.detach()).mean()

        value_loss = self.critic_loss(self.state_value(batch.obs), batch.values, batch.returns)
        loss = policy_loss + cfg.value_coef * value_loss

        rho, log_rho = rho.detach(), log_rho.detach()
        stats = {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                 "approx_kl": ((rho - 1.0) - log_rho).mean(),
                 "clip_fraction": ((rho - 1.0).abs() > cfg.clip_range).float().mean()}
        if self.step_value is not None:
            step_value_loss = self.critic_loss(self.step_values(batch.obs, batch.chains), batch.step_values,
                                               batch.step_returns)
            loss = loss + cfg.value_coef * step_value_loss
            stats["step_value_loss"] = step_value_loss.detach()
        return loss, stats

    def critic_loss(self, values: torch.Tensor, rollout_values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """0.5 mean (V - target)^2 of either critic, clipped around the rollout's values if value_clip_range > 0."""
        clip = self.config.value_clip_range
        error = (values - targets).square()
        if clip > 0:
            clipped = rollout_values + (values - rollout_values).clamp(-clip, clip)
            error = torch.max(error, (clipped - targets).square())
        return 0.5 * error.mean()

    # --- checkpoints ----------------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        components = {"policy": self.policy, "value": self.value, "optimizer": self.optimizer,
                      "reward_scaler": self.reward_scaler}
        if self.step_value is not None:
            components["step_value"] = self.step_value
        return components

    def extra_state(self) -> dict[str, Any]:
        return {"shuffler": self.shuffler.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.shuffler.set_state(state["shuffler"])
