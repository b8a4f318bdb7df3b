"""What every algorithm shares: its policy, its training env, step counting and checkpoint state."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from diffagent.config import AlgorithmConfig


class Algorithm:
    """Trains a `Policy` it is handed; owns critics, optimizers and everything else not published.

    Subclasses implement `train_iteration` (advance training by at least one env step) and list
    their networks and optimizers in `components`, which makes them checkpointable.
    """

    def __init__(self, config: AlgorithmConfig, policy: nn.Module, make_env: Callable[[], gym.Env],
                 device: torch.device, seed: int):
        self.config, self.policy, self.device, self.seed = config, policy, device, seed
        self.make_env = make_env
        self.rng = np.random.default_rng(seed)
        self.num_timesteps = 0  # environment steps trained (a policy's num_steps is K, its chain's length)
        self.num_episodes = 0
        self.total_steps: int | None = None  # the step budget of the current `Agent.learn`, for schedules
        self.recent_returns: deque[float] = deque(maxlen=20)

    def train_iteration(self) -> dict[str, float]:
        """Collect experience and update; returns metrics of this iteration."""
        raise NotImplementedError

    def anneal(self, optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
        """Set optimizer's rate to learning_rate scaled by the budget left: 1 falling linearly to 0 over the
        steps of the current `Agent.learn` (counted from the run's first step, so a resumed run continues it)."""
        left = max(1.0 - self.num_timesteps / self.total_steps, 0.0) if self.total_steps else 1.0
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * left

    @property
    def temperature(self) -> float:
        """The temperature alpha that weighs the entropy now."""
        raise NotImplementedError

    def components(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        """Networks and optimizers whose state a checkpoint must hold (the policy included)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Anything else a checkpoint needs (buffers, counters); subclasses extend it."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _record_episode(self, episode_return: float) -> None:
        self.num_episodes += 1
        self.recent_returns.append(float(episode_return))

    def state_dict(self) -> dict[str, Any]:
        return {
            "components": {name: c.state_dict() for name, c in self.components().items()},
            "num_timesteps": self.num_timesteps,
            "num_episodes": self.num_episodes,
            "recent_returns": list(self.recent_returns),
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, component in self.components().items():
            saved = state["components"][name]
            if isinstance(component, torch.optim.Optimizer):  # JSON turned its integer keys into strings
                saved = {**saved, "state": {int(k): v for k, v in saved["state"].items()}}
            component.load_state_dict(saved)
        # "num_steps" in checkpoints written before the counter was renamed (a policy's num_steps is K)
        self.num_timesteps = int(state["num_timesteps"] if "num_timesteps" in state else state["num_steps"])
        self.num_episodes = int(state["num_episodes"])
        self.recent_returns.extend(state["recent_returns"])
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        self.load_extra_state(state["extra"])
