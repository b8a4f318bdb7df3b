"""SAC, and DiffSAC when handed a diffusion-chain policy (docs/algorithms.md, section 4).

The update never asks which policy it holds: it uses the path log-ratio L where SAC uses log pi,
and for the Gaussian policy L *is* log pi.

    critic:  y = r + gamma (1 - terminated) [min_i Qbar_i(s', a') - alpha L(s', chain')]
    actor:   minimise E[alpha L(s, chain) - min_i Q_i(s, a)]   (actor_steps times per critic step)
             'pathwise': backpropagate through the reparameterised chain
             'lv':       score function of each denoising step, weighted by its future only
    alpha:   minimise -log alpha * E[L - gap + H_target],  H_target = -scale * dim(A)
    optional, for low-dimensional actions: + w alpha * forward KL, the policy fitted by maximum likelihood to
             exp(Q/alpha)'s own actions, w held or faded to 0 (`forward_kl_loss`)

-E[L] is only a lower bound on a chain's entropy; `gap`, the measured distance from it to the
entropy (diffagent/policies/entropy.py: an importance-weighted estimate over backward paths), is refreshed
every ENTROPY_GAP_EVERY steps, so the temperature holds the *entropy* at SAC's target whatever the
policy (docs/algorithms.md, "The entropy target"). For the Gaussian L is log pi and the gap is 0.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffagent.algos.base import Algorithm
from diffagent.algos.replay import Batch, ReplayBuffer
from diffagent.config import SACConfig
from diffagent.nn import CriticEnsemble, polyak_update
from diffagent.policies import Policy
from diffagent.policies.entropy import entropy_bounds
from diffagent.policies.onnx import LiveOnnxModule, LiveOnnxPolicy

# The entropy gap's refresh: every 1,000 steps, on 32 states x 4 actions x 64 backward paths (8,192
# chains scored, about four updates' work). With 64 paths the estimate sits within 0.03 nats per
# action dimension of the 256-path one on the zoo's Hopper chain (benchmarks/entropy_gap.py).
ENTROPY_GAP_EVERY = 1000
ENTROPY_GAP_STATES, ENTROPY_GAP_SAMPLES, ENTROPY_GAP_PATHS = 32, 4, 64
# The forward-KL term's proposals stay inside tanh's range by this much, so that atanh(a) is finite.
PROPOSAL_LIMIT = 0.999


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """y_k = sum_{j >= k} x_j along the last axis: the future of every denoising step."""
    return x.flip(-1).cumsum(-1).flip(-1)


class SoftTarget(nn.Module):
    """The critics' TD target y = r + gamma (1 - terminated) [min_i Qbar_i(s', a') - alpha L(s', chain')], the chain
    at s' driven by `noise`.

    No gradient flows through it, and it is a pure function of its inputs and of the policy's and target
    critics' tensors, so on a CPU onnxruntime computes it (`SAC.td_target`).
    """

    INPUTS = ("next_obs", "noise", "rewards", "terminated", "alpha")

    def __init__(self, policy: Policy, critic_target: CriticEnsemble, gamma: float):
        super().__init__()
        self.policy, self.critic_target, self.gamma = policy, critic_target, gamma

    def forward(self, next_obs: torch.Tensor, noise: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
                alpha: torch.Tensor) -> torch.Tensor:
        next_sample = self.policy.sample(next_obs, noise)
        next_q = self.critic_target(self.policy.obs_normalizer(next_obs), next_sample.action).min(0).values
        soft_next_v = next_q - alpha * next_sample.log_ratio
        return rewards + self.gamma * (1.0 - terminated) * soft_next_v


class SAC(Algorithm):
    """Off-policy soft actor-critic over any `Policy`."""

    config: SACConfig

    def __init__(self, config: SACConfig, policy: Policy, make_env: Callable[[], gym.Env], device: torch.device,
                 seed: int):
        super().__init__(config, policy, make_env, device, seed)
        obs_dim, act_dim = policy.obs_dim, policy.act_dim
        self.critic = CriticEnsemble(obs_dim, act_dim, config.critic_hidden_sizes, config.num_critics,
                                     layer_norm=config.critic_layer_norm).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(np.log(config.alpha_init), dtype=torch.float32, device=device,
                                      requires_grad=True)
        self.target_entropy = -config.target_entropy_scale * act_dim
        self.entropy_gap = torch.zeros((), device=device)  # entropy - (-E[L]), per state, last measured
        # fused: one kernel steps all of an optimizer's parameters (torch's default on a CPU is a Python
        # loop of ~10 ops per parameter, ~2 ms of every update); the same Adam, to float rounding
        self.actor_optimizer = torch.optim.Adam(policy.parameters(), lr=config.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr, fused=True)
        self.buffer = ReplayBuffer(config.buffer_size, obs_dim, act_dim, device)
        self.sampler = torch.Generator().manual_seed(seed)
        self.env = make_env()
        self.env.action_space.seed(seed)
        self.obs, _ = self.env.reset(seed=seed)
        self.episode_return = 0.0
        # Policy.to_env_action in numpy: the warm-up's random actions never become tensors
        self._low, self._high = policy.action_low.cpu().numpy(), policy.action_high.cpu().numpy()
        self.live_policy: LiveOnnxPolicy | None = None  # made when acting with the policy starts (policy_action)
        self.soft_target = SoftTarget(policy, self.critic_target, config.gamma)
        self.live_target: LiveOnnxModule | None = None  # made at the first update (td_target)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    @property
    def temperature(self) -> float:
        return float(self.alpha)

    # --- acting ----------------------------------------------------------------------------------
    def train_iteration(self) -> dict[str, float]:
        """One environment step, then `gradient_steps` updates once learning has started."""
        cfg = self.config
        if self.num_timesteps < cfg.learning_starts:
            action = self.rng.uniform(-1.0, 1.0, self.policy.act_dim).astype(np.float32)
        else:
            action = self.policy_action(self.obs)
        env_action = self._low + (self._high - self._low) * (action + 1.0) * 0.5
        next_obs, reward, terminated, truncated, _ = self.env.step(env_action)
        self.buffer.add(self.obs, action, reward, next_obs, terminated)
        self.policy.obs_normalizer.update(torch.as_tensor(self.obs, dtype=torch.float32, device=self.device))
        self.episode_return += float(reward)
        self.obs = next_obs
        if terminated or truncated:
            self._record_episode(self.episode_return)
            self.episode_return = 0.0
            self.obs, _ = self.env.reset()
        self.num_timesteps += 1

        metrics: dict[str, float] = {}
        if self.num_timesteps >= cfg.learning_starts:
            if (cfg.calibrate_entropy and not self.policy.exact_log_ratio
                    and (self.num_timesteps - cfg.learning_starts) % ENTROPY_GAP_EVERY == 0):
                self.entropy_gap = self.measure_entropy_gap()
            if cfg.anneal_lr:
                for optimizer, learning_rate in ((self.actor_optimizer, cfg.actor_lr),
                                                 (self.critic_optimizer, cfg.critic_lr),
                                                 (self.alpha_optimizer, cfg.alpha_lr)):
                    self.anneal(optimizer, learning_rate)
            for _ in range(cfg.gradient_steps):
                metrics = self.update(self.buffer.sample(cfg.batch_size, self.sampler))
        return metrics

    def policy_action(self, obs: np.ndarray) -> np.ndarray:
        """The policy's squashed action at one observation, with fresh noise.

        On a CPU the chain runs in onnxruntime on the policy's own tensors (LiveOnnxPolicy: the optimizer
        steps them in place, so it acts with the current policy): at batch 1 torch's per-op dispatch is
        most of the cost, ~0.5 ms for SAC's policy and ~2-4 ms for a K = 8 chain. The same function of
        (obs, noise), to float rounding; elsewhere the torch policy.
        """
        with torch.inference_mode():
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
            noise = torch.randn(self.policy.noise_shape(1), device=self.device)
            if self.device.type != "cpu":
                return self.policy.squashed_action(obs_tensor, noise)[0].cpu().numpy()
            if self.live_policy is None:  # made on first use: an agent that never acts never traces its chain
                self.live_policy = LiveOnnxPolicy(self.policy, batch=1, squashed=True)
            return self.live_policy(obs_tensor, noise)[0].numpy()

    # --- learning --------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        cfg, alpha = self.config, self.alpha
        obs = self.policy.obs_normalizer(batch.obs)

        # Critic: soft TD target with the path log-ratio of a fresh chain at s'.
        with torch.no_grad():
            noise = torch.randn(self.policy.noise_shape(len(batch.rewards)), device=self.device)
            target = self.td_target(batch, noise, alpha)
        q = self.critic(obs, batch.actions)
        critic_loss = 0.5 * F.mse_loss(q, target.expand_as(q), reduction="none").mean(1).sum()
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        # Actor: the critic is a fixed function here, so it gets no parameter gradients.
        self.critic.requires_grad_(False)
        forward_kl_weight = self.forward_kl_weight()
        for _ in range(cfg.actor_steps):
            actor_loss, log_ratio = self.actor_loss(batch.obs, obs, alpha)
            if forward_kl_weight:
                actor_loss = actor_loss + forward_kl_weight * alpha * self.forward_kl_loss(batch.obs, alpha)
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
        self.critic.requires_grad_(True)

        # Temperature: keep the entropy, -E[L] + gap, at the target.
        alpha_loss = -(self.log_alpha * (log_ratio - self.entropy_gap + self.target_entropy)).mean()
        if cfg.autotune_alpha:
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()

        polyak_update(self.critic_target, self.critic, cfg.tau)
        metrics = {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha.item(),
                   "entropy_estimate": (self.entropy_gap - log_ratio.mean()).item(),
                   "entropy_gap": self.entropy_gap.item(), "q_mean": q.mean().item()}
        if cfg.forward_kl_weight:
            metrics["forward_kl_weight"] = forward_kl_weight
        return metrics

    def td_target(self, batch: Batch, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """`SoftTarget` of a batch. On a CPU onnxruntime computes it on the policy's and target critics' own
        tensors (updated in place, so it is always current), in about half torch's time at batch 256: it is
        ~200 small ops for a K = 8 chain, ~50 for the Gaussian. The same function, to float rounding."""
        inputs = (batch.next_obs, noise, batch.rewards, batch.terminated, alpha)
        if self.device.type != "cpu":
            return self.soft_target(*inputs)
        inputs = tuple(x.contiguous() for x in inputs)  # onnxruntime reads the tensors' memory as it is laid out
        if self.live_target is None or self.live_target.output.shape[0] != len(batch.rewards):  # one batch size
            self.live_target = LiveOnnxModule(self.soft_target, inputs, list(SoftTarget.INPUTS), "target")
        return self.live_target(*inputs)

    def measure_entropy_gap(self) -> torch.Tensor:
        """How far the policy's entropy lies above -E[L], on states from the buffer (never below 0)."""
        obs = self.buffer.sample(ENTROPY_GAP_STATES, self.sampler).obs
        bounds = entropy_bounds(self.policy, obs, samples=ENTROPY_GAP_SAMPLES, paths=ENTROPY_GAP_PATHS)
        return (bounds.upper - bounds.lower).mean().clamp_min(0.0)

    def actor_loss(self, raw_obs: torch.Tensor, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor loss and the (detached) log-ratios of the chains it sampled."""
        if self.config.actor_gradient == "pathwise":
            sample = self.policy.sample(raw_obs)
            q = self.critic(obs, sample.action).min(0).values
            return (alpha * sample.log_ratio - q).mean(), sample.log_ratio.detach()
        return self.log_variance_actor_loss(raw_obs, obs, alpha)

    def forward_kl_weight(self) -> float:
        """The forward-KL term's weight at this step: forward_kl_weight, falling linearly to 0 between
        forward_kl_fade_start and forward_kl_fade_end (held throughout when the end is 0)."""
        cfg = self.config
        if not cfg.forward_kl_fade_end:
            return cfg.forward_kl_weight
        left = (cfg.forward_kl_fade_end - self.num_timesteps) / (cfg.forward_kl_fade_end - cfg.forward_kl_fade_start)
        return cfg.forward_kl_weight * min(1.0, max(0.0, left))

    def forward_kl_loss(self, raw_obs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The mass-covering term (docs/algorithms.md, section 10): at the batch's first `forward_kl_states` states,
        the policy's forward kernels fitted by maximum likelihood to exp(Q/alpha)'s own actions, -sum_i w_i sum_k
        log q_theta(x_{k+1} | x_k) per state. Its actions are uniform proposals over the action box with
        self-normalised weights w_i = softmax_i(min_j Q_j(s, a_i) / alpha), each drawn back to x_0 through the
        backward kernel. The actor loss (reverse KL) charges a missing or under-weighted mode only through the
        chains the policy draws; this term charges it through the target's actions. For the Gaussian it is the
        weighted log-likelihood of the actions themselves."""
        cfg = self.config
        states = raw_obs[:cfg.forward_kl_states]
        obs = states.repeat_interleave(cfg.forward_kl_proposals, 0)
        with torch.no_grad():
            actions = torch.rand(len(obs), self.policy.act_dim, device=self.device) * 2.0 - 1.0
            actions = actions.clamp(-PROPOSAL_LIMIT, PROPOSAL_LIMIT)
            q = self.critic(self.policy.obs_normalizer(obs), actions).min(0).values
            weights = torch.softmax((q / alpha).view(len(states), -1), dim=1).flatten()
        return -(weights * self.policy.path_log_likelihood(obs, actions)).sum() / len(states)

    def log_variance_actor_loss(self, raw_obs: torch.Tensor, obs: torch.Tensor,
                                alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LV gradient (docs/algorithms.md, section 3) with the past terms of every step cancelled.

        M chains per state, held fixed. Step k's score is weighted by its future
        sum_{j>=k} l_j + squash - Q/alpha minus a leave-one-out baseline over the state's other
        chains. A learnable backward kernel (learned step sizes) adds the pathwise-free term
        -E[log p(x_k | x_{k+1})], the rest of the reverse-KL gradient.
        """
        m = self.config.lv_chains
        raw_obs, obs = raw_obs.repeat_interleave(m, 0), obs.repeat_interleave(m, 0)
        with torch.no_grad():
            sample = self.policy.sample(raw_obs)
            q = self.critic(obs, sample.action).min(0).values
        log_probs = self.policy.score(raw_obs, sample.chain)
        with torch.no_grad():
            future = reverse_cumsum(log_probs.step_ratios) + (log_probs.squash - q / alpha).unsqueeze(-1)
            future = future.view(-1, m, future.shape[-1])
            baseline = (future.sum(1, keepdim=True) - future) / (m - 1)
            advantage = (future - baseline).flatten(0, 1)
        surrogate = (log_probs.forward * advantage).sum(-1) - log_probs.backward.sum(-1)
        return alpha * surrogate.mean(), sample.log_ratio

    # --- checkpoints -----------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        return {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target,
                "actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer,
                "alpha_optimizer": self.alpha_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"log_alpha": self.log_alpha.detach(), "entropy_gap": self.entropy_gap, "buffer": self.buffer.state_dict(),
                "sampler": self.sampler.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
            self.entropy_gap = state.get("entropy_gap", self.entropy_gap).to(self.device)  # absent before 0.2
        self.buffer.load_state_dict(state["buffer"])
        self.sampler.set_state(state["sampler"])
        for live in (self.live_policy, self.live_target):  # loading copies in place; binding again is certain
            if live is not None:
                live.bind()
