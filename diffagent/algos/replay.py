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
    """A ring buffer of transitions in one preallocated tensor; `state_dict` makes it resumable.

    A transition is one row, obs | action | reward | next_obs | terminated side by side, so storing it is
    one copy and sampling a batch is one gather of whole rows: per-field tensors cost five of each, and
    a sampled row then misses the cache once per field. `obs`, `actions`, ... are views of the columns.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu"):
        self.capacity, self.device = capacity, torch.device(device)
        self.widths = [obs_dim, act_dim, 1, obs_dim, 1]  # the columns of Batch's fields, in its order
        try:
            self.storage = torch.zeros(capacity, sum(self.widths))
        except RuntimeError:  # torch's allocator says only "can't allocate memory"
            gigabytes = capacity * sum(self.widths) * 4 / 2**30
            raise ConfigError(f"a replay buffer of buffer_size={capacity:,} transitions needs {gigabytes:.1f} GiB, "
                              "more than this machine can allocate; lower buffer_size") from None
        self.obs, self.actions, self.rewards, self.next_obs, self.terminated = self._fields(self.storage)
        self.pos, self.size = 0, 0

    def _fields(self, rows: torch.Tensor) -> Batch:
        obs, actions, rewards, next_obs, terminated = rows.split(self.widths, dim=1)
        return Batch(obs, actions, rewards.squeeze(1), next_obs, terminated.squeeze(1))

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        row = np.concatenate([np.ravel(obs), np.ravel(action), [reward], np.ravel(next_obs), [terminated]])
        self.storage[self.pos] = torch.from_numpy(row.astype(np.float32))
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        return self._fields(self.storage[idx].to(self.device))

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
