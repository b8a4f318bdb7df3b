"""The replay buffer of the off-policy algorithms (SAC, WPO and their diffusion versions)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffagent.errors import ConfigError


class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor       # squashed to [-1, 1], as the policy produced them
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor    # 1.0 only for a true terminal state: truncation still bootstraps


class ReplayBuffer:
    """A ring buffer of transitions in preallocated tensors; `state_dict` makes it resumable."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu"):
        self.capacity, self.device = capacity, torch.device(device)
        try:
            self.obs = torch.zeros(capacity, obs_dim)
            self.next_obs = torch.zeros(capacity, obs_dim)
            self.actions = torch.zeros(capacity, act_dim)
            self.rewards = torch.zeros(capacity)
            self.terminated = torch.zeros(capacity)
        except RuntimeError:  # torch's allocator says only "can't allocate memory"
            gigabytes = capacity * (2 * obs_dim + act_dim + 2) * 4 / 2**30
            raise ConfigError(f"a replay buffer of buffer_size={capacity:,} transitions needs {gigabytes:.1f} GiB, "
                              "more than this machine can allocate; lower buffer_size") from None
        self.pos, self.size = 0, 0

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.pos
        self.obs[i] = torch.from_numpy(np.asarray(obs, dtype=np.float32))
        self.next_obs[i] = torch.from_numpy(np.asarray(next_obs, dtype=np.float32))
        self.actions[i] = torch.from_numpy(np.asarray(action, dtype=np.float32))
        self.rewards[i] = float(reward)
        self.terminated[i] = float(terminated)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        return Batch(*(t[idx].to(self.device) for t in (self.obs, self.actions, self.rewards, self.next_obs,
                                                        self.terminated)))

    def state_dict(self) -> dict:
        n = self.size
        return {"obs": self.obs[:n], "next_obs": self.next_obs[:n], "actions": self.actions[:n],
                "rewards": self.rewards[:n], "terminated": self.terminated[:n], "pos": self.pos, "size": n}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"checkpointed buffer holds {n} transitions, more than buffer_size={self.capacity}")
        for name in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, name)[:n] = state[name]
        self.pos, self.size = int(state["pos"]), n
