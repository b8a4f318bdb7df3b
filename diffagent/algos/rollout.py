"""On-policy data of PPO and DiffPPO: the rollout buffer, GAE and reward scaling."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from diffagent.policies.normalizer import RunningNorm


class RolloutBatch(NamedTuple):
    """Flattened transitions of a rollout (or a minibatch of them); every tensor has a leading axis B."""

    obs: torch.Tensor              # (B, obs_dim) raw observations
    chains: torch.Tensor           # (B, K+1, A) the whole chain x_0 .. x_K of every action
    log_q: torch.Tensor            # (B, K) per-step log q_old(x_{k+1} | x_k, s, k) of the behaviour policy
    log_ratio: torch.Tensor        # (B,) the path log-ratio L of the behaviour policy
    values: torch.Tensor           # (B,) V(s) at collection time
    advantages: torch.Tensor       # (B,) GAE advantages A_t
    returns: torch.Tensor          # (B,) value targets A_t + V(s_t)
    step_advantages: torch.Tensor  # (B, K) advantage A_{t,k} of each denoising step; (B, 1) when all share A_t
    step_values: torch.Tensor      # (B, K) V(s, x_k, k) at collection time; (B, 0) without a per-step critic
    step_returns: torch.Tensor     # (B, K) its targets A_{t,k} + V(s, x_k, k); (B, 0) without it


class RolloutBuffer:
    """Preallocated (T, N, ...) storage of what happened at each step of `num_envs` environments.

    The acting loop stores only what it cannot recompute: the observation, the raw reward, whether
    the episode ended (`dones`: GAE carries no value across it) and, for a truncated step, V of the
    observation the autoreset replaced (`bootstrap_values`, 0 elsewhere). The chains' noise is drawn
    for the whole rollout when it starts, and rewards and dones stay in numpy, where the envs deliver
    them, until it ends: per-step tensor calls cost more than the env step's own Python overhead.
    Chains, log-probabilities and values are functions of (obs, noise) under the unchanged policy,
    computed afterwards for the whole rollout in one batched pass.
    """

    def __init__(self, rollout_steps: int, num_envs: int, obs_dim: int, noise_shape: tuple[int, ...],
                 device: torch.device | str = "cpu"):
        shape = (rollout_steps, num_envs)
        self.rollout_steps, self.num_envs = rollout_steps, num_envs
        self.obs = torch.zeros(*shape, obs_dim, device=device)
        self.noise = torch.zeros(*shape, *noise_shape, device=device)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.dones = np.zeros(shape, dtype=np.float32)
        self.bootstrap_values = torch.zeros(shape, device=device)
        self.pos = 0

    @property
    def noise_now(self) -> torch.Tensor:
        """The noise of the current step's chains, (N, K+1, A)."""
        return self.noise[self.pos]

    def add(self, obs: torch.Tensor, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Store one vector-env step (acted with `noise_now`) and move on; a bootstrap value may be set after."""
        t = self.pos
        self.obs[t] = obs
        self.rewards[t], self.dones[t] = rewards, dones
        self.pos = t + 1

    @property
    def full(self) -> bool:
        return self.pos == self.rollout_steps

    def clear(self) -> None:
        """Start a new rollout and draw the standard normal noise of all its chains."""
        self.pos = 0
        self.bootstrap_values.zero_()
        self.noise.normal_()


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor,
        gamma: float, gae_lambda: float) -> torch.Tensor:
    """Generalised advantage estimates of (T, N) rewards.

    `last_values` (N,) is V of the observation after the last step. A done step has no successor
    in its episode: a truncated step's bootstrap must already be in its reward. The backward
    recursion runs in numpy, whose per-call cost on (N,) rows is a fraction of torch's.
    """
    r, v, alive = rewards.cpu().numpy(), values.cpu().numpy(), 1.0 - dones.cpu().numpy()
    next_values = np.concatenate([v[1:], last_values.cpu().numpy()[None]])
    deltas = r + gamma * alive * next_values - v
    advantages = np.zeros_like(deltas)
    running = np.zeros_like(deltas[0])
    for t in reversed(range(len(deltas))):
        running = deltas[t] + gamma * gae_lambda * alive[t] * running
        advantages[t] = running
    return torch.from_numpy(advantages).to(rewards.device)


def minibatches(batch: RolloutBatch, num_minibatches: int, generator: torch.Generator) -> Iterator[RolloutBatch]:
    """One epoch: the batch shuffled once and split into `num_minibatches` nearly equal, contiguous parts."""
    order = torch.randperm(batch.obs.shape[0], generator=generator).to(batch.obs.device)
    parts = [x[order].tensor_split(num_minibatches) for x in batch]
    for minibatch in zip(*parts):
        yield RolloutBatch(*minibatch)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of each env's discounted return (SB3's VecNormalize).

    PPO's value targets and advantages then have a similar scale on every task. It works on a whole
    rollout at once (one statistics update per rollout keeps the acting loop lean). The statistics
    are buffers, checkpointed with the algorithm; the per-env returns restart with the episodes
    after a resume, so they are not saved.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.return_stats = RunningNorm(1)
        self.register_buffer("running_returns", torch.zeros(num_envs), persistent=False)

    @torch.no_grad()
    def forward(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Scaled (T, N) rewards of a rollout; updates the statistics with its discounted returns."""
        r, alive = rewards.cpu().numpy(), 1.0 - dones.cpu().numpy()
        returns = np.empty_like(r)
        running = self.running_returns.cpu().numpy()
        for t in range(len(r)):  # numpy: the recursion's per-step cost matters over 2048 steps
            running = running * self.gamma + r[t]
            returns[t] = running
            running = running * alive[t]
        self.running_returns.copy_(torch.from_numpy(running))
        self.return_stats.update(torch.from_numpy(returns).reshape(-1, 1))
        scale = torch.rsqrt(self.return_stats.var + self.eps)
        return (rewards * scale).clamp(-self.clip, self.clip)
