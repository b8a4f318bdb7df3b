"""Envs and a wrapper as a user's own module defines them, for tests/test_user_envs.py: importing this
module registers UserTarget-v0 (Box observations, keyword arguments) and UserGoalReach-v0 (a Dict
observation, as goal-conditioned tasks have), the way `diffagent train --env user_envs:UserTarget-v0`
expects of a module it is named."""

import gymnasium as gym
import numpy as np


class TargetReach(gym.Env):
    """Move a point towards `target` for `horizon` steps; the reward is minus the distance."""

    def __init__(self, target=(0.5, -0.5), horizon: int = 20):
        self.target, self.horizon = np.asarray(target, dtype=np.float32), horizon
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position, self.steps = self.np_random.uniform(-1, 1, 2).astype(np.float32), 0
        return self.position.copy(), {}

    def step(self, action):
        self.position = np.clip(self.position + 0.2 * np.asarray(action, dtype=np.float32), -2, 2)
        self.steps += 1
        reward = -float(np.linalg.norm(self.position - self.target))
        return self.position.copy(), reward, False, self.steps >= self.horizon, {}


class GoalReach(TargetReach):
    """TargetReach with a new goal every episode, observed as {"observation", "desired_goal"}."""

    def __init__(self, horizon: int = 20):
        super().__init__(horizon=horizon)
        box = gym.spaces.Box(-2.0, 2.0, (2,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict({"observation": box, "desired_goal": box})

    def reset(self, *, seed=None, options=None):
        position, info = super().reset(seed=seed)
        self.target = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self._obs(position), info

    def step(self, action):
        position, *rest = super().step(action)
        return (self._obs(position), *rest)

    def _obs(self, position):
        return {"observation": position, "desired_goal": self.target.copy()}


class ScaleReward(gym.RewardWrapper):
    """Multiplies every reward by `scale`."""

    def __init__(self, env, scale: float = 1.0):
        super().__init__(env)
        self.scale = scale

    def reward(self, reward):
        return self.scale * reward


gym.register("UserTarget-v0", entry_point=TargetReach)
gym.register("UserGoalReach-v0", entry_point=GoalReach)
